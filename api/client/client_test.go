package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/errclass"
)

// TestNew: a bad host, tcp:// without TLS and unix:// with it are refused before any
// connection; TLSConfig wants all three files.
func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg  client.Config
		want string
	}{
		{client.Config{Host: "http://x:1"}, "scheme"},
		{client.Config{Host: "tcp://127.0.0.1:2376"}, "mutual TLS"},
		{client.Config{Host: "unix:///run/x.sock", TLS: &tls.Config{}}, "TLS is for tcp://"},
	} {
		if _, err := client.New(tc.cfg); !errors.Is(err, errclass.ErrInvalidParameter) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want invalid parameter saying %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := client.TLSConfig("ca.pem", "", "key.pem"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("TLSConfig without a certificate = %v, want invalid parameter", err)
	}
}

// TestUnreachable: a socket nobody serves gives an error of the unavailable class.
func TestUnreachable(t *testing.T) {
	cl, err := client.New(client.Config{Host: "unix://" + filepath.Join(t.TempDir(), "none.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.NetworkList(context.Background())
	var e *api.Error
	if !errors.As(err, &e) || !errors.Is(err, errclass.ErrUnavailable) || !strings.Contains(err.Error(), "cannot reach cnmd") {
		t.Errorf("NetworkList on a dead socket = %v, want unavailable", err)
	}
}

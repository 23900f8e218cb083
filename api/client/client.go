// Package client is a Go client of cnmd's REST API (package api): it speaks to a unix://
// socket, or to tcp:// with mutual TLS, and returns the API's types, with errors that match
// cnm's error classes (errors.Is(err, cnm.ErrNotFound)) and carry the server's message.
//
// It is pure Go, like package api: a program that only drives cnmd (cmd/cnmctl is one)
// imports nothing of cnm's core. A Client is safe for concurrent use; Close releases its idle
// connections.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/cnmkit/cnm/api"
)

// Config configures a Client.
type Config struct {
	// Host is "unix:///path/to.sock" or "tcp://host:port"; "" means api.DefaultHost.
	Host string
	// TLS is the client's TLS configuration (its certificate and the CA that signed the
	// server's, see TLSConfig). It is required with a tcp:// Host, which cnmd serves only
	// with mutual TLS, and must be nil with a unix:// one.
	TLS *tls.Config
}

// Client calls cnmd's API.
type Client struct {
	base string // "http://cnmd" for a socket, "https://host:port" for TCP
	hc   *http.Client
}

// New returns a Client for cfg.Host. It does not connect: the first call does. A bad Host,
// tcp:// without TLS or unix:// with it, is refused with an error of the invalid-parameter
// class.
func New(cfg Config) (*Client, error) {
	if cfg.Host == "" {
		cfg.Host = api.DefaultHost
	}
	scheme, addr, err := api.ParseHost(cfg.Host)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	c := &Client{hc: &http.Client{Transport: tr}}
	switch scheme {
	case "unix":
		if cfg.TLS != nil {
			return nil, api.Invalid("host", cfg.Host, "TLS is for tcp:// hosts; a unix socket is guarded by its file mode")
		}
		var d net.Dialer
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", addr)
		}
		c.base = "http://cnmd"
	case "tcp":
		if cfg.TLS == nil {
			return nil, api.Invalid("host", cfg.Host, "cnmd serves TCP only with mutual TLS: give the CA, certificate and key (--tlscacert, --tlscert, --tlskey)")
		}
		tr.TLSClientConfig = cfg.TLS
		c.base = "https://" + addr
	}
	return c, nil
}

// TLSConfig returns a client TLS configuration from PEM files: the CA that signed the
// server's certificate, and the client's certificate and key.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, api.Invalid("tls", fmt.Sprintf("ca=%q cert=%q key=%q", caFile, certFile, keyFile), "mutual TLS needs all three of CA, certificate and key")
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("client: tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, api.Invalid("tlscacert", caFile, "no PEM certificate in it")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, api.Invalid("tlscert", certFile, err.Error())
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Close releases the Client's idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// request sends a request and returns the response, or the server's error as an *api.Error.
func (c *Client) request(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("client: %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &api.Error{Message: fmt.Sprintf("cannot reach cnmd: %v", err), Class: api.ClassUnavailable, Status: http.StatusServiceUnavailable}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

// readError turns an error response into an *api.Error.
func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, api.MaxBodyBytes))
	e := &api.Error{Status: resp.StatusCode}
	if err := json.Unmarshal(b, e); err != nil || e.Message == "" {
		e.Message = fmt.Sprintf("cnmd: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return e
}

// do sends in (nil for no body) and decodes the response into out (nil to discard it).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.request(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("client: %s %s: decode response: %w", method, path, err)
	}
	// Read to the end (the encoder's newline), or the connection is not reused.
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func v1(parts ...string) string {
	p := "/" + api.Version
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// NetworkCreate creates a network (docker network create).
func (c *Client) NetworkCreate(ctx context.Context, req api.NetworkCreate) (api.NetworkCreated, error) {
	var out api.NetworkCreated
	err := c.do(ctx, http.MethodPost, v1("networks"), req, &out)
	return out, err
}

// NetworkList returns every network, sorted by name.
func (c *Client) NetworkList(ctx context.Context) ([]api.NetworkInspect, error) {
	var out []api.NetworkInspect
	err := c.do(ctx, http.MethodGet, v1("networks"), nil, &out)
	return out, err
}

// NetworkInspect returns the network with that name, ID or unique ID prefix.
func (c *Client) NetworkInspect(ctx context.Context, name string) (api.NetworkInspect, error) {
	var out api.NetworkInspect
	err := c.do(ctx, http.MethodGet, v1("networks", name), nil, &out)
	return out, err
}

// NetworkRemove removes a network; one with endpoints is refused (conflict).
func (c *Client) NetworkRemove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, v1("networks", name), nil, nil)
}

// NetworkConnect connects a sandbox to a network (docker network connect) and returns its
// endpoint.
func (c *Client) NetworkConnect(ctx context.Context, network string, req api.Connect) (api.EndpointSettings, error) {
	var out api.EndpointSettings
	err := c.do(ctx, http.MethodPost, v1("networks", network, "connect"), req, &out)
	return out, err
}

// NetworkDisconnect disconnects a sandbox from a network.
func (c *Client) NetworkDisconnect(ctx context.Context, network string, req api.Disconnect) error {
	return c.do(ctx, http.MethodPost, v1("networks", network, "disconnect"), req, nil)
}

// NetworkPrune removes every network without endpoints but the predefined ones.
func (c *Client) NetworkPrune(ctx context.Context) (api.PruneReport, error) {
	var out api.PruneReport
	err := c.do(ctx, http.MethodPost, v1("networks", "prune"), nil, &out)
	return out, err
}

// SandboxCreate creates a sandbox and connects it as its Network says.
func (c *Client) SandboxCreate(ctx context.Context, req api.SandboxCreate) (api.SandboxInspect, error) {
	var out api.SandboxInspect
	err := c.do(ctx, http.MethodPost, v1("sandboxes"), req, &out)
	return out, err
}

// SandboxList returns every sandbox, sorted by name.
func (c *Client) SandboxList(ctx context.Context) ([]api.SandboxInspect, error) {
	var out []api.SandboxInspect
	err := c.do(ctx, http.MethodGet, v1("sandboxes"), nil, &out)
	return out, err
}

// SandboxInspect returns a sandbox.
func (c *Client) SandboxInspect(ctx context.Context, name string) (api.SandboxInspect, error) {
	var out api.SandboxInspect
	err := c.do(ctx, http.MethodGet, v1("sandboxes", name), nil, &out)
	return out, err
}

// SandboxRemove removes a sandbox. One still connected to networks is refused (conflict)
// unless force, which disconnects it first, as docker rm -f does.
func (c *Client) SandboxRemove(ctx context.Context, name string, force bool) error {
	p := v1("sandboxes", name)
	if force {
		p += "?force=1"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil)
}

// Health returns the agent's health. A degraded agent answers with status 503 and the
// Health body: it is returned with an error.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var out api.Health
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health", nil)
	if err != nil {
		return out, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return out, &api.Error{Message: fmt.Sprintf("cannot reach cnmd: %v", err), Class: api.ClassUnavailable, Status: http.StatusServiceUnavailable}
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("client: health: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return out, &api.Error{Message: fmt.Sprintf("cnmd is %s: store %s, global store %s, gossip %s", out.Status, out.Store, out.GlobalStore, out.Gossip), Class: api.ClassUnavailable, Status: resp.StatusCode}
	}
	return out, nil
}

// Events calls f with each event of the agent's stream, from now on, until ctx is done (it
// then returns nil), the stream ends, or f returns an error (returned).
func (c *Client) Events(ctx context.Context, f func(api.Event) error) error {
	resp, err := c.request(ctx, http.MethodGet, v1("events"), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), api.MaxBodyBytes)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("client: events: %w", err)
		}
		if err := f(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("client: events: %w", err)
	}
	return nil
}

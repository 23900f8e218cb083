package server_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/ipam"
)

// Serve the bridge driver and the default IPAM to Docker as the plugin "cnm" (what cmd/cnm-plugin
// does): docker network create -d cnm --ipam-driver cnm n.
func ExampleServer_Serve() {
	drv, err := bridge.New(bridge.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer drv.Close()
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.New(server.Config{Driver: drv, IPAM: alloc})
	if err != nil {
		log.Fatal(err)
	}
	l, err := server.Listen("", "cnm") // /run/docker/plugins/cnm.sock
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := srv.Serve(ctx, l); err != nil {
		log.Fatal(err)
	}
}

// The handshake: a server with only an allocator says it is an IPAM plugin.
func ExampleServer_ServeHTTP() {
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.New(server.Config{IPAM: alloc})
	if err != nil {
		log.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("POST", "/Plugin.Activate", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("POST", "/NetworkDriver.Join", strings.NewReader("{}")))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output:
	// 200 {"Implements":["IpamDriver"]}
	// 404 {"Err":"NetworkDriver.Join: not implemented by this plugin"}
}

package server_test

import (
	"context"
	"log"
	"net"
	"net/http"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api/server"
)

// Serve cnmd's API over a Controller of your own (with your drivers in cnm.Config.Drivers).
func Example() {
	ctx := context.Background()
	c, err := cnm.New(ctx, cnm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	srv, err := server.New(server.Config{Controller: c})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("unix", "/run/cnm/cnm.sock")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, srv))
}

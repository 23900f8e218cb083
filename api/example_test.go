package api_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/internal/errclass"
)

// Parse what a user typed at the edges: -o pairs, a -p spec, a --net mode.
func Example() {
	opts, _ := api.ParseKeyValues("opt", []string{"com.docker.network.bridge.enable_icc=false"})
	ports, _ := api.ParsePortSpec("127.0.0.1:8080:80/tcp")
	mode, name, _ := api.ParseNetworkMode("container:db")
	fmt.Println(opts, ports[0], mode, name)
	// Output: map[com.docker.network.bridge.enable_icc:false] 127.0.0.1:8080:80/tcp container db
}

// An error's class travels as an HTTP status and back, and still matches cnm's sentinel.
func ExampleNewError() {
	e := api.NewError(fmt.Errorf("cnm: delete network: %w", &errclass.ConflictError{Kind: "network", Name: "new_bridge", Reason: "has active endpoints (db)"}))
	fmt.Println(e.Status, e.Class)
	fmt.Println(errors.Is(e, errclass.ErrConflict), e)
	// Output:
	// 409 conflict
	// true cnm: delete network: network "new_bridge": has active endpoints (db)
}

// Decode refuses unknown fields, naming them.
func ExampleDecode() {
	var req api.NetworkCreate
	err := api.Decode(strings.NewReader(`{"Name": "n", "Subnet": "10.0.0.0/24"}`), &req)
	fmt.Println(err)
	// Output: invalid body "": malformed JSON: json: unknown field "Subnet"
}

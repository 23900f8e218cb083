package wire_test

import (
	"encoding/json"
	"fmt"

	"github.com/cnmkit/cnm/drivers/remote/wire"
)

// A Join answer as a plugin sends it: the host-side link the caller moves in, and the gateway.
func Example() {
	b, _ := json.Marshal(wire.JoinResponse{
		InterfaceName: &wire.InterfaceName{SrcName: "cnm0123456789ab", DstPrefix: "eth"},
		Gateway:       "10.20.0.1",
	})
	fmt.Println("POST /" + wire.NetworkJoin)
	fmt.Println(string(b))
	// Output:
	// POST /NetworkDriver.Join
	// {"InterfaceName":{"SrcName":"cnm0123456789ab","DstPrefix":"eth"},"Gateway":"10.20.0.1"}
}

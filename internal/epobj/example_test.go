package epobj_test

import (
	"encoding/json"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/cnmkit/cnm/internal/epobj"
)

// This example shows an endpoint's record as the store keeps it while the endpoint is joined,
// and the key it is kept under. The record is the endpoint's lease: IPAM and the sandboxes are
// rebuilt from it after a restart.
func ExampleRecord() {
	rec := epobj.Record{
		ID:        "9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e",
		Name:      "web",
		NetworkID: "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b",
		MAC:       "02:42:0a:14:00:0a",
		IPv4:      netip.MustParsePrefix("10.20.0.10/24"),
		Created:   time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC),
		SandboxID: "web",
		IfName:    "eth0",
		Gateway:   netip.MustParseAddr("10.20.0.1"),
		JoinSeq:   7,
	}
	fmt.Println(epobj.Key(rec.NetworkID, rec.ID))
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))
	// Output:
	// cnm/v1/endpoints/1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b/9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e
	// {
	//   "id": "9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e",
	//   "name": "web",
	//   "network_id": "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b",
	//   "mac": "02:42:0a:14:00:0a",
	//   "ipv4": "10.20.0.10/24",
	//   "created": "2025-05-01T12:00:00Z",
	//   "sandbox_id": "web",
	//   "ifname": "eth0",
	//   "gateway": "10.20.0.1",
	//   "join_seq": 7
	// }
}

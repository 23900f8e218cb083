package cnm

import (
	"maps"
	"slices"

	"github.com/cnmkit/cnm/kvstore"
)

// What the tests of package cnm_test read of a Controller's inside.

// MapSizesForTest returns the number of entries of the Controller's maps that follow the
// sandboxes and endpoints: sandboxes, networks and their names, gateway claims, and the
// endpoints of every network.
func MapSizesForTest(c *Controller) map[string]int {
	c.mu.Lock()
	out := map[string]int{"sandboxes": len(c.sandboxes), "networks": len(c.networks), "network names": len(c.netNames)}
	nets := slices.Collect(maps.Values(c.networks))
	c.mu.Unlock()
	for _, n := range nets {
		out["endpoints"] += len(n.Eps())
	}
	c.gw.serial.Lock()
	out["gateway claims"] = len(c.gw.claims)
	c.gw.serial.Unlock()
	return out
}

// StoreForTest returns the Controller's local store.
func StoreForTest(c *Controller) kvstore.Store { return c.store }

// RunStoreForTest returns the Controller's run store.
func RunStoreForTest(c *Controller) kvstore.Store { return c.run }

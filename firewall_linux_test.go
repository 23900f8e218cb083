package cnm_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
)

// TestPrivilegedControllerNftables: Config.Firewall picks the built-in bridge driver's
// nftables backend: the seed's two containers on a user-defined network reach each other, the
// rules are in the table inet cnm and none in iptables, and deleting everything leaves no
// network's elements behind.
func TestPrivilegedControllerNftables(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	host := nstest.NewNS(t)
	c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: host.Path(), Firewall: bridge.FirewallNftables})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	nw := mustNetwork(t, c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.91.0.0/24")))
	db := mustSandbox(t, c, "db")
	mustSandbox(t, c, "web")
	mustConnect(t, c, "new_bridge", "db")
	ew := mustConnect(t, c, "new_bridge", "web")
	pingOK(t, db, ew.Info().IPv4.Addr())
	table, err := nstest.Exec(host, "nft", "list", "table", "inet", bridge.NftTable)
	if err != nil {
		t.Fatalf("nft list table inet %s: %v: %s", bridge.NftTable, err, table)
	}
	br := "br-" + nw.ID()[:12]
	if !strings.Contains(table, `"`+br+`"`) {
		t.Errorf("table inet %s has no element for %s:\n%s", bridge.NftTable, br, table)
	}
	if save, err := nstest.Exec(host, "iptables-save"); err != nil || strings.Contains(save, "CNM-") {
		t.Errorf("iptables-save = %v, %q; want no CNM chain with the nftables backend", err, save)
	}
	for _, id := range []string{"db", "web"} {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(ctx, "new_bridge"); err != nil {
		t.Fatal(err)
	}
	if table, _ := nstest.Exec(host, "nft", "list", "table", "inet", bridge.NftTable); strings.Contains(table, `"`+br+`"`) {
		t.Errorf("table inet %s still has %s after DeleteNetwork:\n%s", bridge.NftTable, br, table)
	}
}

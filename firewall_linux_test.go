package cnm_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
)

// TestPrivilegedControllerNftables: Config.Firewall picks the built-in bridge driver's
// nftables backend: the seed's two containers on a user-defined network reach each other, a
// published port is reached from the host and from the other container, the rules are in the
// table inet cnm and none in iptables, and deleting everything leaves no network's elements
// behind.
func TestPrivilegedControllerNftables(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	host := nstest.NewNS(t)
	addUplink(t, host)
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
	srv := mustSandbox(t, c, "srv")
	p, err := endpoint.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	es := mustConnect(t, c, "new_bridge", "srv", endpoint.WithPorts(p...))
	sns, err := netns.Open(srv.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer sns.Close()
	var ln net.Listener
	if err := sns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(es.Info().IPv4.Addr(), 80).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	to := netip.AddrPortFrom(portsHostIP.Addr(), 8080)
	for name, from := range map[string]string{"host": host.Path(), "other container (hairpin)": db.Key()} {
		if err := talk(from, to, ln); err != nil {
			t.Errorf("published port from the %s to %s: %v", name, to, err)
		}
	}
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
	for _, id := range []string{"db", "web", "srv"} {
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

package bridge

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
)

// TestPrivilegedDeleteNetworkFirewallFails checks DeleteNetwork when the removal of the rules,
// which runs while the bridge is deleted, fails: the error says so, the bridge is gone, and
// calling DeleteNetwork again removes the rules, leaving the tables as they were before the
// network.
func TestPrivilegedDeleteNetworkFirewallFails(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	bin, err := exec.LookPath("iptables-restore")
	if err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(t.TempDir(), "broken")
	path := os.Getenv("PATH")
	t.Setenv("PATH", pathWith(t, []string{"iptables-save", "ip6tables-save", "ip6tables-restore"}, map[string]string{
		"iptables-restore": "#!/bin/sh\nif [ -e " + broken + " ]; then echo 'iptables-restore: broken for the test' >&2; exit 1; fi\nexec " + bin + " \"$@\"\n",
	}))
	d := newDriver(t, e.host) // the driver looks the binaries up in New
	t.Setenv("PATH", path)
	e.newNetworkWith(t, d, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")}) // the base chains
	before := e.save(t)

	nid := driverstest.NewNetworkID()
	if err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.10.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid})
	if err == nil || !strings.Contains(err.Error(), "firewall") || !strings.Contains(err.Error(), "broken for the test") {
		t.Fatalf("DeleteNetwork with a failing iptables-restore: %v, want the firewall's error", err)
	}
	if names := linkNames(t, e.h); slices.Contains(names, "br-"+nid.Short()) {
		t.Errorf("links after DeleteNetwork: %v, want the bridge gone", names)
	}
	if after := e.save(t); !strings.Contains(after, "br-"+nid.Short()) {
		t.Errorf("the rules of the network are gone although their removal failed:\n%s", after)
	}

	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatalf("DeleteNetwork again: %v", err)
	}
	if diff := cmp.Diff(before, e.save(t)); diff != "" {
		t.Errorf("iptables after the second DeleteNetwork (-before the network +after):\n%s", diff)
	}
}

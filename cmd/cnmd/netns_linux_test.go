package main

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
)

// TestPrivilegedCLINetns: cnmctl puts a sandbox on a namespace the caller made (--netns), with
// the interface names asked for (--ifname on sandbox create and network connect); inspect
// names the namespace; rm takes the sandbox's interfaces out and leaves the namespace, with lo.
func TestPrivilegedCLINetns(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t)
	s := d.sock
	rt := nstest.NewNS(t) // the runtime's namespace
	mustCtl(t, s, "sandbox", "create", "--netns", rt.Path(), "--ifname", "net0", "pod")
	if got := mustCtl(t, s, "sandbox", "inspect", "-f", "{{.Netns}}", "pod"); got != rt.Path() {
		t.Errorf("inspect .Netns = %q, want %q", got, rt.Path())
	}
	ip := ipOf(t, s, "pod", "bridge")
	mustCtl(t, s, "network", "create", "second")
	mustCtl(t, s, "network", "connect", "--ifname", "net1", "second", "pod")
	ip2 := ipOf(t, s, "pod", "second")
	addrs := map[string][]string{}
	if err := rt.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			as, _ := i.Addrs()
			for _, a := range as {
				addrs[i.Name] = append(addrs[i.Name], a.String())
			}
			if len(as) == 0 {
				addrs[i.Name] = nil
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(addrs["net0"], func(a string) bool { return strings.HasPrefix(a, ip+"/") }) ||
		!slices.ContainsFunc(addrs["net1"], func(a string) bool { return strings.HasPrefix(a, ip2+"/") }) {
		t.Errorf("the runtime's namespace holds %v, want net0 with %s and net1 with %s", addrs, ip, ip2)
	}
	if _, err := ctl(t, s, "network", "connect", "--ifname", "net0", "second", "pod"); err == nil {
		t.Error("a second connect naming net0, taken: no error")
	}
	mustCtl(t, s, "sandbox", "rm", "pod")
	var left []string
	if err := rt.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			left = append(left, i.Name)
		}
		return err
	}); err != nil {
		t.Fatalf("the runtime's namespace after rm: %v", err)
	}
	if !slices.Equal(left, []string{"lo"}) {
		t.Errorf("the runtime's namespace after rm holds %v, want lo only", left)
	}
}

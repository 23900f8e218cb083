package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// add runs ADD through libcni and returns the result in the 1.x types, checked against the
// spec's shape: one interface with the namespace as its sandbox, an IPv4 address in cninet's
// subnet on it with the gateway, the default route via the gateway, nameservers.
func add(t *testing.T, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *types100.Result {
	t.Helper()
	res, err := cni.AddNetworkList(t.Context(), list, rt)
	if err != nil {
		t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != rt.IfName || r.Interfaces[0].Sandbox != rt.NetNS || r.Interfaces[0].Mac == "" {
		t.Fatalf("ADD %s: interfaces %+v, want one %s with a MAC in %s", rt.ContainerID, r.Interfaces, rt.IfName, rt.NetNS)
	}
	gw := netip.MustParseAddr("10.77.0.1")
	if len(r.IPs) != 1 || r.IPs[0].Interface == nil || *r.IPs[0].Interface != 0 || !netip.MustParsePrefix(subnet).Contains(addrOf(r.IPs[0].Address.IP)) || !r.IPs[0].Gateway.Equal(gw.AsSlice()) {
		t.Fatalf("ADD %s: ips %v, want one address of %s on interface 0 with gateway %s", rt.ContainerID, r.IPs, subnet, gw)
	}
	if ones, _ := r.IPs[0].Address.Mask.Size(); ones != 24 {
		t.Errorf("ADD %s: address %s, want a /24", rt.ContainerID, r.IPs[0].Address.String())
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || !r.Routes[0].GW.Equal(gw.AsSlice()) {
		t.Errorf("ADD %s: routes %v, want the default route via %s", rt.ContainerID, r.Routes, gw)
	}
	// The nameservers of the resolv.conf cnmd keeps for the sandbox: the host's until the
	// embedded resolver serves the namespace (it follows the join's event), then 127.0.0.11.
	if len(r.DNS.Nameservers) == 0 {
		t.Errorf("ADD %s: dns %+v, want the sandbox's nameservers", rt.ContainerID, r.DNS)
	}
	return r
}

func addrOf(ip []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// cniCode returns the code of a CNI error, or 0.
func cniCode(err error) uint {
	if e, ok := errors.AsType[*types.Error](err); ok {
		return e.Code
	}
	return 0
}

// TestPrivilegedCNIAddPing: two namespaces made as a runtime makes them, attached to cnm's
// bridge network by libcni through cnm-cni, ping each other; CHECK and STATUS pass; DEL takes
// the interfaces out of the namespaces (which stay), twice is fine; STATUS fails once cnmd is
// gone, and DEL then fails with "try again later".
func TestPrivilegedCNIAddPing(t *testing.T) {
	nstest.Privileged(t)
	a := startAgent(t)
	cni, list := newCNI(t), a.confList(t)
	if err := cni.GetStatusNetworkList(t.Context(), list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	var rts []*libcni.RuntimeConf
	var ips []string
	for i := range 2 {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("%064x", i+1), NetNS: runtimeNS(t), IfName: fmt.Sprintf("net%d", i)}
		r := add(t, cni, list, rt)
		rts = append(rts, rt)
		ips = append(ips, addrOf(r.IPs[0].Address.IP).String())
		if out, ok := linkIn(rt.NetNS, rt.IfName); !ok || !strings.Contains(out, r.IPs[0].Address.String()) {
			t.Fatalf("namespace %s: link %s: %s, want %s on it", rt.NetNS, rt.IfName, out, r.IPs[0].Address.String())
		}
		// cnmd's record: a sandbox named by the container ID on the runtime's namespace.
		in, err := a.cl.SandboxInspect(t.Context(), rt.ContainerID)
		if err != nil || in.Netns != rt.NetNS || in.NetworkSettings.Networks[netName].IfName != rt.IfName {
			t.Fatalf("cnmd's sandbox %s: %+v, %v", rt.ContainerID, in, err)
		}
	}
	if out, ok := nstest.Ping(rts[0].NetNS, ips[1], 2); !ok {
		t.Fatalf("ping %s from the first namespace: %s", ips[1], out)
	}
	if out, ok := nstest.Ping(rts[1].NetNS, ips[0], 2); !ok {
		t.Fatalf("ping %s from the second namespace: %s", ips[0], out)
	}
	for _, rt := range rts {
		if err := cni.CheckNetworkList(t.Context(), list, rt); err != nil {
			t.Errorf("CHECK %s: %v", rt.ContainerID, err)
		}
		// A repeated ADD of the same attachment gives the same address.
		res, err := cni.AddNetworkList(t.Context(), list, rt)
		if err != nil {
			t.Fatalf("second ADD: %v", err)
		}
		r, _ := types100.NewResultFromResult(res)
		if !slices.Contains(ips, addrOf(r.IPs[0].Address.IP).String()) {
			t.Errorf("second ADD gave %v, not one of %v", r.IPs, ips)
		}
	}
	for _, rt := range rts {
		for range 2 {
			if err := cni.DelNetworkList(t.Context(), list, rt); err != nil {
				t.Fatalf("DEL %s: %v", rt.ContainerID, err)
			}
		}
		if out, ok := linkIn(rt.NetNS, rt.IfName); ok {
			t.Errorf("after DEL, %s is still in %s: %s", rt.IfName, rt.NetNS, out)
		}
		if _, err := os.Stat(rt.NetNS); err != nil {
			t.Errorf("DEL removed the runtime's namespace %s: %v", rt.NetNS, err)
		}
		if _, err := a.cl.SandboxInspect(t.Context(), rt.ContainerID); api.Class(err) != api.ClassNotFound {
			t.Errorf("after DEL cnmd still has sandbox %s: %v", rt.ContainerID, err)
		}
	}
	in, err := a.cl.NetworkInspect(t.Context(), netName)
	if err != nil || len(in.Containers) != 0 {
		t.Errorf("after DEL network %s has endpoints %v (%v)", netName, in.Containers, err)
	}
	a.stop(t)
	if err := cni.GetStatusNetworkList(t.Context(), list); cniCode(err) != 50 {
		t.Errorf("STATUS with cnmd stopped: %v, want code 50", err)
	}
	rt := &libcni.RuntimeConf{ContainerID: "gone", NetNS: runtimeNS(t), IfName: "eth0"}
	if err := cni.DelNetworkList(t.Context(), list, rt); cniCode(err) != 11 {
		t.Errorf("DEL with cnmd stopped: %v, want code 11 (try again later)", err)
	}
}

// TestPrivilegedCNICheckAndConverge: CHECK fails once the link is deleted by hand, and DEL
// still converges; DEL of a namespace that is gone, and of an attachment cnmd never had,
// succeed; a second network's attachment of the same container keeps its sandbox until the
// last DEL.
func TestPrivilegedCNICheckAndConverge(t *testing.T) {
	nstest.Privileged(t)
	a := startAgent(t)
	cni, list := newCNI(t), a.confList(t)
	rt := &libcni.RuntimeConf{ContainerID: "check1", NetNS: runtimeNS(t), IfName: "eth0"}
	add(t, cni, list, rt)
	if err := cni.CheckNetworkList(t.Context(), list, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if out, err := exec.Command("nsenter", "--net="+rt.NetNS, "--", "ip", "link", "del", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("ip link del: %v: %s", err, out)
	}
	err := cni.CheckNetworkList(t.Context(), list, rt)
	if cniCode(err) != 100 || !strings.Contains(err.Error(), "no link eth0") {
		t.Fatalf("CHECK after the link was deleted: %v, want code 100 naming the link", err)
	}
	if err := cni.DelNetworkList(t.Context(), list, rt); err != nil {
		t.Fatalf("DEL after the link was deleted: %v", err)
	}

	// A namespace that the runtime removed before DEL.
	rt2 := &libcni.RuntimeConf{ContainerID: "check2", NetNS: runtimeNS(t), IfName: "eth0"}
	add(t, cni, list, rt2)
	if out, err := exec.Command("umount", "--lazy", rt2.NetNS).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	os.Remove(rt2.NetNS)
	if err := cni.DelNetworkList(t.Context(), list, rt2); err != nil {
		t.Fatalf("DEL with the namespace gone: %v", err)
	}
	if err := cni.DelNetworkList(t.Context(), list, &libcni.RuntimeConf{ContainerID: "check2", IfName: "eth0"}); err != nil {
		t.Fatalf("DEL again, without CNI_NETNS: %v", err)
	}
	if err := cni.DelNetworkList(t.Context(), list, &libcni.RuntimeConf{ContainerID: "never", NetNS: runtimeNS(t), IfName: "eth0"}); err != nil {
		t.Fatalf("DEL of an attachment cnmd never had: %v", err)
	}

	// The runtime's namespace has an eth0 already (another plugin's): ADD fails with the
	// spec's error JSON and leaves nothing in cnmd.
	busy := runtimeNS(t)
	if out, err := exec.Command("nsenter", "--net="+busy, "--", "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "p0").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	_, err = cni.AddNetworkList(t.Context(), list, &libcni.RuntimeConf{ContainerID: "busy", NetNS: busy, IfName: "eth0"})
	if code := cniCode(err); code == 0 {
		t.Errorf("ADD onto a taken eth0 = %v, want a CNI error", err)
	} else {
		t.Logf("ADD onto a taken eth0: code %d: %v", code, err)
	}
	if _, err := a.cl.SandboxInspect(t.Context(), "busy"); api.Class(err) != api.ClassNotFound {
		t.Errorf("a failed ADD left sandbox busy: %v", err)
	}
	if in, err := a.cl.NetworkInspect(t.Context(), netName); err != nil || len(in.Containers) != 0 {
		t.Errorf("a failed ADD left endpoints %v (%v)", in.Containers, err)
	}

	// Two networks, one container: one sandbox with two interfaces.
	if _, err := a.cl.NetworkCreate(t.Context(), api.NetworkCreate{Name: "second", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: "10.78.0.0/24"}}}}); err != nil {
		t.Fatal(err)
	}
	list2, err := libcni.ConfListFromBytes(fmt.Appendf(nil, `{"cniVersion": "1.1.0", "name": "second", "plugins": [{"type": "cnm-cni", "host": "unix://%s"}]}`, a.sock))
	if err != nil {
		t.Fatal(err)
	}
	ns := runtimeNS(t)
	rtA := &libcni.RuntimeConf{ContainerID: "multi", NetNS: ns, IfName: "eth0"}
	rtB := &libcni.RuntimeConf{ContainerID: "multi", NetNS: ns, IfName: "eth1"}
	add(t, cni, list, rtA)
	res, err := cni.AddNetworkList(t.Context(), list2, rtB)
	if err != nil {
		t.Fatalf("ADD on the second network: %v", err)
	}
	if r, _ := types100.NewResultFromResult(res); len(r.IPs) != 1 || !netip.MustParsePrefix("10.78.0.0/24").Contains(addrOf(r.IPs[0].Address.IP)) {
		t.Fatalf("ADD on the second network: %v", res)
	}
	for _, l := range []*libcni.NetworkConfigList{list, list2} {
		rt := rtA
		if l == list2 {
			rt = rtB
		}
		if err := cni.CheckNetworkList(t.Context(), l, rt); err != nil {
			t.Errorf("CHECK %s: %v", l.Name, err)
		}
	}
	if err := cni.DelNetworkList(t.Context(), list, rtA); err != nil {
		t.Fatal(err)
	}
	if _, ok := linkIn(ns, "eth1"); !ok {
		t.Errorf("DEL of eth0 took eth1 too")
	}
	if _, ok := linkIn(ns, "eth0"); ok {
		t.Errorf("eth0 is still there after its DEL")
	}
	if err := cni.DelNetworkList(t.Context(), list2, rtB); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cl.SandboxInspect(t.Context(), "multi"); api.Class(err) != api.ClassNotFound {
		t.Errorf("after the last DEL cnmd still has the sandbox: %v", err)
	}
}

// TestPrivilegedCNIGC: GC frees the attachments of the network that are not in
// cni.dev/valid-attachments (their interfaces leave their namespaces, their addresses are
// free) and keeps the listed ones and sandboxes cnm-cni did not make.
func TestPrivilegedCNIGC(t *testing.T) {
	nstest.Privileged(t)
	a := startAgent(t)
	cni, list := newCNI(t), a.confList(t)
	var rts []*libcni.RuntimeConf
	for _, id := range []string{"keep", "drop1", "drop2"} {
		rt := &libcni.RuntimeConf{ContainerID: id, NetNS: runtimeNS(t), IfName: "eth0"}
		add(t, cni, list, rt)
		rts = append(rts, rt)
	}
	// A sandbox made through the API, not by the plugin: GC leaves it.
	if _, err := a.cl.SandboxCreate(t.Context(), api.SandboxCreate{Name: "cnmctl-made", Network: netName}); err != nil {
		t.Fatal(err)
	}
	err := cni.GCNetworkList(t.Context(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}, {ContainerID: "drop1", IfName: "eth9"}}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	for i, rt := range rts {
		_, there := linkIn(rt.NetNS, "eth0")
		_, err := a.cl.SandboxInspect(t.Context(), rt.ContainerID)
		if want := i == 0; there != want || (err == nil) != want {
			t.Errorf("after GC, %s: link there %v, sandbox %v; want kept %v", rt.ContainerID, there, err, want)
		}
	}
	if _, err := a.cl.SandboxInspect(t.Context(), "cnmctl-made"); err != nil {
		t.Errorf("GC removed a sandbox cnm-cni did not make: %v", err)
	}
	if err := cni.CheckNetworkList(t.Context(), list, rts[0]); err != nil {
		t.Errorf("CHECK of the kept attachment: %v", err)
	}
	in, err := a.cl.NetworkInspect(t.Context(), netName)
	if err != nil || len(in.Containers) != 2 {
		t.Errorf("after GC network %s has %d endpoints (%v), want 2", netName, len(in.Containers), err)
	}
}

// TestPrivilegedCNITool runs the same configuration through the reference cnitool, as its
// README says: NETCONFPATH holds the configuration list, CNI_PATH the plugins, and the
// namespace is a path; add, check, status, del. cnitool keeps its cache in /var/lib/cni: it
// runs in a mount namespace of its own with a tmpfs there.
func TestPrivilegedCNITool(t *testing.T) {
	nstest.Privileged(t)
	a := startAgent(t)
	bin := binaries(t)
	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-cninet.conflist"), a.confBytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := runtimeNS(t)
	tool := filepath.Join(bin, "cnitool")
	script := fmt.Sprintf(`set -e
mount -t tmpfs cnitool /var/lib
echo "== add"; %[1]s add %[2]s %[3]s
echo "== check"; %[1]s check %[2]s %[3]s
echo "== ip"; nsenter --net=%[3]s -- ip -o -4 addr show dev eth0
echo "== status"; %[1]s status %[2]s %[3]s
echo "== del"; %[1]s del %[2]s %[3]s
echo "== del again"; %[1]s del %[2]s %[3]s
`, tool, netName, ns)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cnitool: %v\n%s", err, out)
	}
	// The add's output is the result: the address the link had.
	addOut := strings.SplitN(strings.SplitN(string(out), "== add\n", 2)[1], "== check", 2)[0]
	var r types100.Result
	if err := json.Unmarshal([]byte(addOut), &r); err != nil || len(r.IPs) != 1 {
		t.Fatalf("cnitool add printed %q: %v", addOut, err)
	}
	if !strings.Contains(string(out), "inet "+r.IPs[0].Address.String()) {
		t.Errorf("the namespace did not have %s after cnitool add:\n%s", r.IPs[0].Address.String(), out)
	}
	if _, ok := linkIn(ns, "eth0"); ok {
		t.Errorf("eth0 is still in the namespace after cnitool del")
	}
	sbs, err := a.cl.SandboxList(context.Background())
	if err != nil || len(sbs) != 0 {
		t.Errorf("after cnitool del cnmd has sandboxes %v (%v)", sbs, err)
	}
}

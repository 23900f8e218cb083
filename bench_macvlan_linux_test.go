package cnm_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/runstore"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
)

// BenchmarkPrivilegedMacvlanConnect measures Controller.Connect on a macvlan network (parent
// eth0 of a host namespace, bridge mode) against two baselines, in the same run:
//
//   - raw: the netlink calls of the same attach, by hand: the macvlan link created in the
//     sandbox's namespace in one message, its lookup, address, link up and default route (the
//     kernel objects Connect makes, no more);
//   - floor: everything Connect must do, by hand: one write to a run store's journal on the
//     RunDir's tmpfs (package internal/runstore, which holds the records of Connect's
//     endpoints), the same raw calls, and the sandbox's hosts file rewritten on that tmpfs,
//     one after the other as Connect makes them.
//
// Each iteration times raw, the commit alone and floor in turn, starting with a different one
// each time, then Connect, so that they meet the same machine load; sandboxes and namespaces are made and removed outside the timings. It
// reports the medians and the ratios connect/raw (the target) and connect/floor (what
// cnm's own code adds).
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- go test -run '^$' -bench PrivilegedMacvlanConnect -benchtime 300x -count 5 .
func BenchmarkPrivilegedMacvlanConnect(b *testing.B) {
	nstest.Privileged(b)
	ctx := b.Context()
	host := nstest.NewNS(b)
	hh, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(hh.Close)
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "lanp"}); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"eth0", "lanp"} {
		l, err := hh.LinkByName(name)
		if err == nil {
			err = hh.LinkSetUp(l)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	parent, err := hh.LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	runDir := benchRunDir(b)
	// CNM_BENCH_NODNS=1: without the embedded DNS resolver, to see what it costs.
	c, err := cnm.New(ctx, cnm.Config{DataDir: b.TempDir(), RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true,
		DisableDNS: os.Getenv("CNM_BENCH_NODNS") != ""})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if _, err := c.NewNetwork(ctx, "lan", "macvlan", network.WithSubnet(netip.MustParsePrefix("192.168.60.0/24")),
		network.WithGateway(netip.MustParseAddr("192.168.60.1")), network.WithDriverLabels(map[string]string{"parent": "eth0"})); err != nil {
		b.Fatal(err)
	}
	raw, err := cnl.NewSocket(host.Handle(), 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(raw.Close)
	// The store's floor: one record written to a run store's journal on the RunDir's tmpfs.
	rs, _, err := runstore.Open(filepath.Join(runDir, "floor.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rs.Close() })
	record := make([]byte, 600) // about an endpoint record's JSON
	commit := func(bucket, key string) error {
		_, err := rs.AtomicPut(ctx, bucket+"/"+key, record, 0)
		return err
	}
	nsDir := b.TempDir()
	hosts := filepath.Join(runDir, "floor-hosts")
	// attach makes the kernel objects of the attach in the namespace of r: a bridge-mode
	// macvlan link eth0 on the parent with mac, address a/24, up, default route.
	attach := func(r rawNS, mac net.HardwareAddr, a net.IP) error {
		if err := raw.Exec(cnl.MacvlanRequest("eth0", parent.Attrs().Index, 1500, 4 /* the kernel's MACVLAN_MODE_BRIDGE */, mac, r.ns.FD())); err != nil {
			return fmt.Errorf("link: %w", err)
		}
		l, err := r.h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("lookup: %w", err)
		}
		if err := r.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return fmt.Errorf("address: %w", err)
		}
		if err := r.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("up: %w", err)
		}
		if err := r.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP{192, 168, 60, 1}}); err != nil {
			return fmt.Errorf("route: %w", err)
		}
		return nil
	}
	settle := 3 * time.Millisecond // CNM_BENCH_SETTLE: the pause before each iteration
	if v, err := time.ParseDuration(os.Getenv("CNM_BENCH_SETTLE")); err == nil {
		settle = v
	}
	var rawT, floorT, cnmT, commitT []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		rawNS, floorNS := newRawNS(b, nsDir, 2*i), newRawNS(b, nsDir, 2*i+1)
		// MACs not derived from cnm's addresses (two macvlan links on one parent may not
		// share one), and that do not wrap at 256 iterations.
		rawMAC := net.HardwareAddr{0x02, 0x42, 0xc0, 0xfe, byte(i >> 8), byte(i)}
		floorMAC := net.HardwareAddr{0x06, 0x42, 0xc0, 0xfe, byte(i >> 8), byte(i)}
		a := net.IP{192, 168, 60, byte(i%200 + 50)}
		id := fmt.Sprintf("m%d", i)
		if _, err := c.NewSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		// The kernel tears the last iteration's namespaces down on a work queue that takes
		// the rtnl lock: let it finish, spinning rather than sleeping so that the CPU stays
		// awake, or the first step timed pays for it.
		for t0 := time.Now(); time.Since(t0) < settle; {
		}
		b.StartTimer()

		// The three baselines in turn, starting with a different one each iteration, then
		// Connect: what it leaves to other goroutines (the embedded DNS resolver follows its
		// event and opens its sockets in the sandbox) would otherwise be charged to the step
		// after it.
		steps := []func(){
			func() {
				t0 := time.Now()
				if err := attach(rawNS, rawMAC, a); err != nil {
					b.Fatalf("raw attach: %v", err)
				}
				rawT = append(rawT, time.Since(t0))
			},
			func() {
				t0 := time.Now()
				if err := commit("c", id); err != nil {
					b.Fatal(err)
				}
				commitT = append(commitT, time.Since(t0))
			},
			func() {
				t0 := time.Now()
				err := commit("f", id)
				if err == nil {
					err = attach(floorNS, floorMAC, a)
				}
				if err == nil {
					err = writeHosts(hosts, id, a)
				}
				if err != nil {
					b.Fatalf("floor: %v", err)
				}
				floorT = append(floorT, time.Since(t0))
			},
		}
		for k := range steps {
			steps[(i+k)%len(steps)]()
		}
		t0 := time.Now()
		if _, err := c.Connect(ctx, "lan", id); err != nil {
			b.Fatal(err)
		}
		cnmT = append(cnmT, time.Since(t0))

		b.StopTimer()
		rawNS.remove()
		floorNS.remove()
		if err := c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	r, f, m, cm := med(rawT), med(floorT), med(cnmT), med(commitT)
	b.ReportMetric(float64(r.Microseconds()), "raw-µs")
	b.ReportMetric(float64(cm.Microseconds()), "commit-µs")
	b.ReportMetric(float64(f.Microseconds()), "floor-µs")
	b.ReportMetric(float64(m.Microseconds()), "connect-µs")
	b.ReportMetric(float64(m)/float64(r), "connect/raw")
	b.ReportMetric(float64(m)/float64(f), "connect/floor")
}

// writeHosts rewrites the hosts file at path in place, as a sandbox does when it gains an
// interface: the loopback lines and the sandbox's name on address a.
func writeHosts(path, name string, a net.IP) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	data := fmt.Appendf(nil, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n%s\t%s\n", a, name)
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	return errors.Join(err, f.Close())
}

// benchRunDir returns a RunDir on a tmpfs, as /run is on a host, when there is one to use
// (/run/cnm under scripts/test.sh and nsrun is), else a temporary directory.
func benchRunDir(b *testing.B) string {
	if ok, err := sandbox.OnMemoryFS("/run/cnm"); err == nil && ok {
		dir, err := os.MkdirTemp("/run/cnm", "bench-")
		if err == nil {
			b.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return b.TempDir()
}

package cnm_test

import (
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
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
	"go.etcd.io/bbolt"
)

// BenchmarkPrivilegedMacvlanConnect measures Controller.Connect on a macvlan network (parent
// eth0 of a host namespace, bridge mode) against the raw netlink calls of the same attach: the
// macvlan link created in the sandbox's namespace in one message, its address, link up and the
// default route. Each iteration does both, alternating, so that they meet the same machine
// load; sandboxes (and, for raw, namespaces) are made and removed outside the timings. Beside
// them it times one bbolt commit on the DataDir's filesystem: Connect's one store commit runs
// beside its kernel work, so its floor is the larger of the two. It reports the medians and
// the ratios connect/raw and connect/max(raw, commit).
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- go test -run '^$' -bench PrivilegedMacvlanConnect -benchtime 200x -count 3 .
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
	c, err := cnm.New(ctx, cnm.Config{DataDir: b.TempDir(), RunDir: benchRunDir(b), HostNetns: host.Path(), NoPredefinedNetworks: true})
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
	gw := net.IP{192, 168, 60, 1}
	// The store's floor: one bbolt commit (with its fsync) on the same filesystem as the
	// Controller's DataDir, which Connect overlaps with its kernel work.
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "floor.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	var rawT, cnmT, commitT []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		sbNS := nstest.NewNS(b)
		sh, err := netlink.NewHandleAt(sbNS.Handle())
		if err != nil {
			b.Fatal(err)
		}
		ip := &net.IPNet{IP: net.IP{192, 168, 60, byte(i%200 + 50)}, Mask: net.CIDRMask(24, 32)}

		mac := net.HardwareAddr{0x02, 0x42, 0xc0, 0xfe, byte(i >> 8), byte(i)} // not one derived from cnm's addresses
		id := fmt.Sprintf("m%d", i)
		if _, err := c.NewSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		t0 := time.Now()
		step := "link"
		err = raw.Exec(cnl.MacvlanRequest("eth0", parent.Attrs().Index, 1500, 4 /* the kernel's MACVLAN_MODE_BRIDGE */, mac, sbNS.FD()))
		var l netlink.Link
		if err == nil {
			l, err = sh.LinkByName("eth0")
		}
		if err == nil {
			step, err = "address", sh.AddrAdd(l, &netlink.Addr{IPNet: ip})
		}
		if err == nil {
			step, err = "up", sh.LinkSetUp(l)
		}
		if err == nil {
			step, err = "route", sh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw})
		}
		if err != nil {
			b.Fatalf("raw attach: %s: %v", step, err)
		}
		rawT = append(rawT, time.Since(t0))

		t0 = time.Now()
		if err := db.Update(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return bk.Put([]byte(id), make([]byte, 400))
		}); err != nil {
			b.Fatal(err)
		}
		commitT = append(commitT, time.Since(t0))

		t0 = time.Now()
		if _, err := c.Connect(ctx, "lan", id); err != nil {
			b.Fatal(err)
		}
		cnmT = append(cnmT, time.Since(t0))

		b.StopTimer()
		sh.Close()
		if err := c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	r, m, cm := med(rawT), med(cnmT), med(commitT)
	b.ReportMetric(float64(r.Microseconds()), "raw-µs")
	b.ReportMetric(float64(cm.Microseconds()), "commit-µs")
	b.ReportMetric(float64(m.Microseconds()), "connect-µs")
	b.ReportMetric(float64(m)/float64(r), "connect/raw")
	b.ReportMetric(float64(m)/float64(max(r, cm)), "connect/max(raw,commit)")
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

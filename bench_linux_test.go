package cnm_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// benchLab is a Controller on a throwaway host namespace, with its data on the real disk (so
// store commits pay their fsync), and one bridge network on a /16.
type benchLab struct {
	host *netns.NS
	c    *cnm.Controller
	nw   network.Network
	br   netlink.Link
	sock cnl.Socket
	dir  string
}

func newBenchLab(b *testing.B) *benchLab { return newBenchLabWith(b, nil) }

// newBenchLabWith is newBenchLab with the Controller's Config changed by mod, when not nil.
func newBenchLabWith(b *testing.B, mod func(*cnm.Config)) *benchLab {
	b.Helper()
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	l := &benchLab{host: nstest.NewNS(b), dir: b.TempDir()}
	cfg := cnm.Config{DataDir: filepath.Join(l.dir, "data"), RunDir: filepath.Join(l.dir, "run"), HostNetns: l.host.Path(), NoPredefinedNetworks: true}
	if mod != nil {
		mod(&cfg)
	}
	c, err := cnm.New(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	l.c = c
	b.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	if l.nw, err = c.NewNetwork(b.Context(), "bench", "bridge", network.WithSubnet(netip.MustParsePrefix("10.200.0.0/16"))); err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandleAt(l.host.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	if l.br, err = h.LinkByName("br-" + l.nw.ID()[:12]); err != nil {
		b.Fatal(err)
	}
	if l.sock, err = cnl.NewSocket(l.host.Handle(), 10*time.Second); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.sock.Close)
	return l
}

// settle waits, outside the timer, until the kernel has finished removing the host end of a
// veth whose namespace was just deleted: that cleanup runs asynchronously, and an attach timed
// while it runs would measure the kernel's teardown instead.
func (l *benchLab) settle(b *testing.B, hostVeth string) {
	h, err := netlink.NewHandleAt(l.host.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	for range 1000 {
		if _, err := h.LinkByName(hostVeth); err != nil {
			return
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatalf("%s still there a second after its namespace went", hostVeth)
}

// rawNS is a bare namespace with a netlink handle, for the baseline.
type rawNS struct {
	ns   *netns.NS
	h    *netlink.Handle
	path string
}

func newRawNS(b *testing.B, dir string, i int) rawNS {
	path := filepath.Join(dir, fmt.Sprintf("raw%d", i))
	ns, err := netns.New(path)
	if err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		b.Fatal(err)
	}
	return rawNS{ns: ns, h: h, path: path}
}

func (r rawNS) remove() {
	r.h.Close()
	r.ns.Close()
	netns.Remove(r.path)
}

// rawAttach makes the netlink calls an attach needs, and nothing else: the veth pair in one
// message (host end up on the bridge, container end in the namespace), then in the namespace
// the address, link up and default route.
func (l *benchLab) rawAttach(r rawNS, i int) error {
	a := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
	mac := net.HardwareAddr{0x02, 0x42, 10, 200, byte(i >> 8), byte(i)}
	host := fmt.Sprintf("vethraw%08x", i)
	if err := l.sock.Exec(cnl.VethRequest(host, l.br.Attrs().Index, 1500, "eth0", mac, r.ns.FD())); err != nil {
		return err
	}
	link, err := r.h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := r.h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(16, 32)}}); err != nil {
		return err
	}
	if err := r.h.LinkSetUp(link); err != nil {
		return err
	}
	return r.h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP{10, 200, 0, 1}})
}

// BenchmarkPrivilegedAttach measures endpoint create+join (two calls, and Controller.Connect,
// one) and leave+delete against the raw netlink calls they need, in the same run. Sandboxes are made outside the timer.
//
//	CNM_PRIVILEGED_TESTS=1 go test -run '^$' -bench PrivilegedAttach -benchtime 200x -count 5 .
func BenchmarkPrivilegedAttach(b *testing.B) {
	l := newBenchLab(b)
	ctx := b.Context()
	b.Run("raw/attach", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, l.dir, i)
			b.StartTimer()
			if err := l.rawAttach(r, i+2); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			r.remove()
			b.StartTimer()
		}
	})
	b.Run("cnm/create+join", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("a%d", i)
			sb, err := l.c.NewSandbox(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			ep, err := l.nw.CreateEndpoint(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if err := ep.Join(ctx, sb); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := l.c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("cnm/connect", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("c%d", i)
			if _, err := l.c.NewSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := l.c.Connect(ctx, "bench", id); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := l.c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("raw/detach", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, l.dir, i)
			if err := l.rawAttach(r, i+2); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := l.sock.Exec(cnl.DelLinkRequest(fmt.Sprintf("vethraw%08x", i+2))); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			r.remove()
			b.StartTimer()
		}
	})
	b.Run("cnm/leave+delete", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("d%d", i)
			sb, err := l.c.NewSandbox(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			ep, err := l.c.Connect(ctx, "bench", id)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := ep.Leave(ctx, sb); err != nil {
				b.Fatal(err)
			}
			if err := ep.Delete(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := l.c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// BenchmarkPrivilegedDeleteSandbox measures deleting a sandbox with one endpoint (namespace,
// endpoint and records) against its raw floor, unmounting the namespace (alone, and with one
// bbolt commit deleting a key), and against deleting the veth first and then the namespace,
// the way that waits on the kernel twice.
func BenchmarkPrivilegedDeleteSandbox(b *testing.B) {
	l := newBenchLab(b)
	ctx := b.Context()
	b.Run("raw/unmount", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, l.dir, i)
			if err := l.rawAttach(r, i+2); err != nil {
				b.Fatal(err)
			}
			r.h.Close()
			r.ns.Close()
			b.StartTimer()
			if err := netns.Remove(r.path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw/unmount+commit", func(b *testing.B) {
		st, err := boltdb.Open(filepath.Join(l.dir, "raw.db"), boltdb.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, l.dir, i)
			if err := l.rawAttach(r, i+2); err != nil {
				b.Fatal(err)
			}
			r.h.Close()
			r.ns.Close()
			key := fmt.Sprintf("k%d", i)
			if _, err := st.Put(ctx, key, make([]byte, 300)); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := netns.Remove(r.path); err != nil {
				b.Fatal(err)
			}
			if err := st.Delete(ctx, key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw/veth-then-unmount", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, l.dir, i)
			if err := l.rawAttach(r, i+2); err != nil {
				b.Fatal(err)
			}
			r.h.Close()
			r.ns.Close()
			b.StartTimer()
			if err := l.sock.Exec(cnl.DelLinkRequest(fmt.Sprintf("vethraw%08x", i+2))); err != nil {
				b.Fatal(err)
			}
			if err := netns.Remove(r.path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cnm", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("s%d", i)
			if _, err := l.c.NewSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			if _, err := l.c.Connect(ctx, "bench", id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := l.c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPrivilegedAttachKth measures attaching the k-th endpoint of a network (k-1
// endpoints already joined to their own sandboxes, so the bridge has k-1 ports), for k = 1,
// 100, 1000, against the raw calls attaching a k-th port to the same bridge. Each iteration
// attaches into a fresh namespace and removes it afterwards, outside the timer.
func BenchmarkPrivilegedAttachKth(b *testing.B) {
	for _, k := range []int{1, 100, 1000} {
		l := newBenchLab(b)
		ctx := b.Context()
		for i := range k - 1 {
			id := fmt.Sprintf("f%d", i)
			if _, err := l.c.NewSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			if _, err := l.c.Connect(ctx, "bench", id); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("k=%d/raw", k), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				r := newRawNS(b, l.dir, i)
				b.StartTimer()
				if err := l.rawAttach(r, 5000+i); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				r.remove()
				l.settle(b, fmt.Sprintf("vethraw%08x", 5000+i))
				b.StartTimer()
			}
		})
		b.Run(fmt.Sprintf("k=%d/cnm", k), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				id := fmt.Sprintf("kth%d", i)
				if _, err := l.c.NewSandbox(ctx, id); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				ep, err := l.c.Connect(ctx, "bench", id)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := l.c.DeleteSandbox(ctx, id); err != nil {
					b.Fatal(err)
				}
				l.settle(b, "veth"+ep.ID()[:11])
				b.StartTimer()
			}
		})
	}
}

// BenchmarkPrivilegedConcurrentAttach measures the throughput of P attaches (create+join) at
// once to one network; ns/op is per attach.
func BenchmarkPrivilegedConcurrentAttach(b *testing.B) {
	for _, p := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("p=%d", p), func(b *testing.B) {
			l := newBenchLab(b)
			ctx := b.Context()
			sbs := make([]sandbox.Sandbox, p)
			for i := range p {
				var err error
				if sbs[i], err = l.c.NewSandbox(ctx, fmt.Sprintf("p%d", i)); err != nil {
					b.Fatal(err)
				}
			}
			var total time.Duration
			n := 0
			for b.Loop() {
				eps := make([]endpoint.Endpoint, p)
				errs := make([]error, p)
				var wg sync.WaitGroup
				start := time.Now()
				for i := range p {
					wg.Add(1)
					go func() {
						defer wg.Done()
						ep, err := l.nw.CreateEndpoint(ctx, fmt.Sprintf("e%d", i))
						if err == nil {
							err = ep.Join(ctx, sbs[i])
						}
						eps[i], errs[i] = ep, err
					}()
				}
				wg.Wait()
				total += time.Since(start)
				n += p
				b.StopTimer()
				for i, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
					if err := eps[i].Leave(ctx, sbs[i]); err != nil {
						b.Fatal(err)
					}
					if err := eps[i].Delete(ctx); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/attach")
			b.ReportMetric(float64(n)/total.Seconds(), "attaches/s")
		})
	}
}

//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/netns"
	"github.com/docker/docker/libnetwork/ipamapi"
	"github.com/docker/docker/libnetwork/ipams/defaultipam"
	"github.com/docker/docker/libnetwork/ipamutils"
	"github.com/vishvananda/netlink"
)

// runner holds the subjects still standing: one that fails an operation is reported and left
// out of the later groups, and the others go on.
type runner struct {
	o    benchOptions
	rep  *report
	subs []subject
	dir  string
}

func run(ctx context.Context, o benchOptions) (*report, error) {
	start := time.Now()
	r := &runner{o: o, rep: &report{Started: start, Machine: describeMachine(), Versions: versions(), Options: map[string]any{
		"n": o.n, "netn": o.netN, "k": o.k, "kbudget": o.kBudget.String(), "conc": o.conc, "conctotal": o.concTotal, "ipamn": o.ipamN,
		"ipamexecn": o.ipamExecN, "quiet": o.quiet, "quietwait": o.quietWait.String(), "smoke": o.smoke,
	}}}
	dir, err := os.MkdirTemp("", "cnm-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	r.dir = dir
	for _, name := range o.subjects {
		s, err := openSubject(ctx, name, filepath.Join(dir, name))
		if err != nil {
			r.skip(name, "setup", err)
			continue
		}
		r.subs = append(r.subs, s)
	}
	defer func() {
		if ctx.Err() != nil {
			return // interrupted: the namespace, and all in it, goes with the process
		}
		for _, s := range r.subs {
			if err := s.close(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s: close: %v\n", s.name(), err)
			}
		}
	}()
	r.rep.Skipped = append(r.rep.Skipped,
		"overlay: not measured (libnetwork's overlay needs a swarm cluster, the CNI reference plugins have none)",
		"nftables backends: not measured (libnetwork's is experimental in v28 and process-wide, CNI's ipMasqBackend and cnm's are left at their defaults)")
	for _, g := range []func(context.Context) error{r.networks, r.attaches, r.kth, r.concurrent, r.ipam} {
		if err := g(ctx); err != nil {
			return r.rep, err
		}
	}
	r.rep.Seconds = time.Since(start).Seconds()
	var failed []string
	for _, s := range r.rep.Skipped {
		if strings.Contains(s, " failed") {
			failed = append(failed, s)
		}
	}
	if o.smoke && len(failed) > 0 {
		return r.rep, fmt.Errorf("smoke run: %s", strings.Join(failed, "; "))
	}
	return r.rep, nil
}

func openSubject(ctx context.Context, name, dir string) (subject, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	switch name {
	case "raw":
		return newRaw(ctx)
	case "cnm":
		return newCNM(ctx, dir)
	case "libnetwork":
		return newLibnetwork(ctx, dir)
	case "cni":
		return newCNI(ctx, dir, os.Getenv(cniBinEnv))
	}
	return nil, fmt.Errorf("unknown subject %q", name)
}

// skip records that a subject failed and drops it from the later groups.
func (r *runner) skip(name, what string, err error) {
	r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("%s: %s failed: %v", name, what, err))
	fmt.Fprintf(os.Stderr, "bench: %s: %s failed: %v\n", name, what, err)
	for i, s := range r.subs {
		if s.name() == name {
			if cerr := s.close(); cerr != nil {
				fmt.Fprintf(os.Stderr, "bench: %s: close: %v\n", name, cerr)
			}
			r.subs = append(r.subs[:i:i], r.subs[i+1:]...)
			break
		}
	}
}

// begin waits for a quiet machine and starts a group.
func (r *runner) begin(ctx context.Context, name, note string) *group {
	fmt.Fprintf(os.Stderr, "bench: %s\n", name)
	g := &group{Name: name, Note: note, Quiet: waitQuiet(ctx, r.o.quiet, r.o.quietWait)}
	r.rep.Groups = append(r.rep.Groups, g)
	return g
}

func (r *runner) end(g *group) {
	g.Load1End = load1()
	g.ratios()
}

func (g *group) add(f *figure) { g.Figures = append(g.Figures, f) }

func timed(f func() error) (time.Duration, error) {
	t := time.Now()
	err := f()
	return time.Since(t), err
}

// samples collects durations per subject and operation, keeping the order of first use.
type samples struct {
	order []string
	m     map[string][]time.Duration
}

func (s *samples) add(subject, op string, d time.Duration) {
	if s.m == nil {
		s.m = map[string][]time.Duration{}
	}
	k := subject + "\x00" + op
	if _, ok := s.m[k]; !ok {
		s.order = append(s.order, k)
	}
	s.m[k] = append(s.m[k], d)
}

func (s *samples) figures(g *group, load float64) {
	for _, k := range s.order {
		subject, op, _ := strings.Cut(k, "\x00")
		f := newFigure(op, subject, "", s.m[k])
		f.Load1 = load
		g.add(f)
	}
}

// networks times network create and delete, rounds interleaved across the subjects.
func (r *runner) networks(ctx context.Context) error {
	g := r.begin(ctx, "Network create and delete",
		"A bridge network with each subject's default NAT rules, created then deleted, rounds interleaved. raw: a bridge, its address and one MASQUERADE rule (one iptables process).")
	load := load1()
	var s samples
	for i := range r.o.netN {
		for j := range r.subs {
			sub := r.subs[(i+j)%len(r.subs)]
			d, err := timed(func() error { return sub.netCreate(ctx, i, subnets[sub.name()][1]) })
			if errors.Is(err, errNoNetworkObject) {
				continue
			}
			if err != nil {
				r.skip(sub.name(), "network create", err)
				break
			}
			s.add(sub.name(), "network create", d)
			d, err = timed(func() error { return sub.netDelete(ctx, i) })
			if err != nil {
				r.skip(sub.name(), "network delete", err)
				break
			}
			s.add(sub.name(), "network delete", d)
		}
	}
	s.figures(g, load)
	r.end(g)
	if r.has("cni") {
		r.rep.Skipped = append(r.rep.Skipped, "cni: network create/delete: "+errNoNetworkObject.Error())
	}
	return ctx.Err()
}

func (r *runner) has(name string) bool {
	for _, s := range r.subs {
		if s.name() == name {
			return true
		}
	}
	return false
}

// attaches times a container's whole network life, rounds interleaved across the subjects:
// namespace create, attach, detach, namespace delete, each timed on its own.
func (r *runner) attaches(ctx context.Context) error {
	g := r.begin(ctx, "Attach and detach",
		"Per round and subject: the container's namespace is created, attached to the network, detached, and the namespace deleted, each step timed on its own; rounds interleave the subjects in rotating order.")
	load := load1()
	var s samples
	for i := range r.o.n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for j := range r.subs {
			sub := r.subs[(i+j)%len(r.subs)]
			if err := r.life(ctx, sub, fmt.Sprintf("att-%d", i), &s, i == 0); err != nil {
				r.skip(sub.name(), "attach/detach", err)
				break
			}
		}
	}
	s.figures(g, load)
	r.end(g)
	return ctx.Err()
}

// life is one container's network life. With check, it also verifies, untimed, that the
// attach really connected the namespace (see verify).
func (r *runner) life(ctx context.Context, sub subject, id string, s *samples, check bool) error {
	var b any
	d, err := timed(func() (err error) { b, err = sub.newBox(ctx, id); return err })
	if err != nil {
		return fmt.Errorf("namespace create: %w", err)
	}
	s.add(sub.name(), "namespace create", d)
	if d, err = timed(func() error { return sub.attach(ctx, b) }); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	s.add(sub.name(), "attach", d)
	if check {
		if err := verify(sub.nsPath(b), subnets[sub.name()][0]); err != nil {
			return fmt.Errorf("attach did not connect the namespace: %w", err)
		}
	}
	if d, err = timed(func() error { return sub.detach(ctx, b) }); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	s.add(sub.name(), "detach", d)
	if d, err = timed(func() error { return sub.deleteBox(ctx, b) }); err != nil {
		return fmt.Errorf("namespace delete: %w", err)
	}
	s.add(sub.name(), "namespace delete", d)
	return nil
}

// kth times the k-th attach for k = 1..K, each subject on its own (k−1 of its own containers
// attached, none of the others'), then detaches everything.
func (r *runner) kth(ctx context.Context) error {
	g := r.begin(ctx, fmt.Sprintf("The k-th attach, k = 1..%d, then removing everything", r.o.k),
		fmt.Sprintf("K containers per subject attached one after the other, the subjects interleaved (each k in rotating order, so that all see the same machine and the same number of namespaces at each k); namespace creation is not timed in the attach; figures per bucket of k. A subject whose series has taken longer than %s stops there (its last bucket shows the k reached). Then, subject after subject, every container is removed the subject's way (`remove`: cnm DeleteSandbox; libnetwork Sandbox.Delete, which leaves and deletes the endpoint; CNI DEL, then the namespace unmounted; raw: the namespace unmounted, the kernel deleting the veth with it); `remove all` is the wall time of the K removals, and `kernel settle` the time after it until the kernel has finished deleting that subject's veths in the background.", r.o.kBudget))
	type series struct {
		sub   subject
		boxes []any
		att   []time.Duration
		spent time.Duration
		done  bool
		err   error
	}
	all := make([]*series, len(r.subs))
	for i, sub := range r.subs {
		all[i] = &series{sub: sub, boxes: make([]any, 0, r.o.k), att: make([]time.Duration, 0, r.o.k)}
	}
	load := load1()
	for k := 1; k <= r.o.k; k++ {
		for j := range all {
			s := all[(k+j)%len(all)]
			if s.done {
				continue
			}
			if s.spent > r.o.kBudget {
				s.done = true
				r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("%s: the k-th attach stopped at k = %d of %d: its series ran out of its %s budget", s.sub.name(), k-1, r.o.k, r.o.kBudget))
				continue
			}
			t0 := time.Now()
			b, err := s.sub.newBox(ctx, fmt.Sprintf("kth-%d", k))
			if err != nil {
				s.done, s.err = true, fmt.Errorf("namespace create %d: %w", k, err)
				continue
			}
			s.boxes = append(s.boxes, b)
			d, err := timed(func() error { return s.sub.attach(ctx, b) })
			s.spent += time.Since(t0)
			if err != nil {
				s.done, s.err = true, fmt.Errorf("attach %d: %w", k, err)
				continue
			}
			s.att = append(s.att, d)
		}
		if ctx.Err() != nil {
			// Interrupted: leaving is the teardown, the namespace goes with the process.
			return ctx.Err()
		}
	}
	for _, s := range all {
		sub, err := s.sub, s.err
		rload := load1()
		links0, lerr := countLinks()
		if lerr != nil {
			return lerr
		}
		var rm []time.Duration
		t0 := time.Now()
		for i, b := range s.boxes {
			d, derr := timed(func() error {
				if i < len(s.att) && !sub.removeDetaches() {
					if err := sub.detach(ctx, b); err != nil {
						return fmt.Errorf("detach: %w", err)
					}
				}
				return sub.deleteBox(ctx, b)
			})
			if derr != nil {
				err = errors.Join(err, fmt.Errorf("remove: %w", derr))
			}
			rm = append(rm, d)
		}
		wall := time.Since(t0)
		// Each attached container left one host-side veth in this namespace.
		settle, serr := settleLinks(ctx, links0-len(s.att))
		err = errors.Join(err, serr)
		if err != nil {
			r.skip(sub.name(), "k-th attach", err)
			continue
		}
		for _, bk := range kBuckets(len(s.att)) {
			f := newFigure("attach", sub.name(), fmt.Sprintf("k=%d-%d", bk[0], bk[1]), s.att[bk[0]-1:bk[1]])
			f.Load1 = load
			g.add(f)
		}
		param := fmt.Sprintf("K=%d", len(s.att))
		f := newFigure("remove", sub.name(), param, rm)
		f.Wall, f.Load1 = ms(wall), rload
		g.add(f)
		g.add(&figure{Op: "remove all (wall)", Subject: sub.name(), Param: param, N: 1, Median: ms(wall), P95: ms(wall), Mean: ms(wall), OpsPerSec: float64(len(rm)) / wall.Seconds(), Wall: ms(wall), Load1: rload})
		g.add(&figure{Op: "kernel settle after", Subject: sub.name(), Param: param, N: 1, Median: ms(settle), P95: ms(settle), Mean: ms(settle), Wall: ms(settle), Load1: rload})
		fmt.Fprintf(os.Stderr, "bench:   %s: %d attaches in %.1f s, removed in %.1f s, kernel settled %.1f s later\n", sub.name(), len(s.att), s.spent.Seconds(), wall.Seconds(), settle.Seconds())
	}
	r.end(g)
	return ctx.Err()
}

// kBuckets splits 1..k into at most ten ranges: 1–10, 11–100, then hundreds.
func kBuckets(k int) [][2]int {
	var b [][2]int
	lo := 1
	for _, hi := range []int{1, 10, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000} {
		if lo > k {
			break
		}
		hi = min(hi, k)
		if hi >= lo {
			b = append(b, [2]int{lo, hi})
			lo = hi + 1
		}
	}
	for lo <= k {
		hi := min(lo+999, k)
		b = append(b, [2]int{lo, hi})
		lo = hi + 1
	}
	return b
}

// concurrent starts P attaches at once into P fresh namespaces, for each P; the teardown is not
// timed.
func (r *runner) concurrent(ctx context.Context) error {
	g := r.begin(ctx, "Concurrent attaches",
		"P attaches started at once (a barrier), each into its own fresh namespace; rounds interleave the subjects. Per-attach latency, and ops/s over the batches' wall time. Namespace creation and the teardown are not timed.")
	for _, p := range r.o.conc {
		rounds := max(1, r.o.concTotal/p)
		lat := map[string][]time.Duration{}
		walls := map[string]time.Duration{}
		load := load1()
		for round := range rounds {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			for j := range r.subs {
				sub := r.subs[(round+j)%len(r.subs)]
				ds, wall, err := r.batch(ctx, sub, p, fmt.Sprintf("c%d-%d", p, round))
				if err != nil {
					r.skip(sub.name(), fmt.Sprintf("concurrent attach (P=%d)", p), err)
					break
				}
				lat[sub.name()] = append(lat[sub.name()], ds...)
				walls[sub.name()] += wall
			}
		}
		for _, sub := range r.subs {
			f := newFigure("attach, P at once", sub.name(), fmt.Sprintf("P=%d", p), lat[sub.name()])
			if w := walls[sub.name()]; w > 0 {
				f.OpsPerSec = float64(f.N) / w.Seconds()
			}
			f.Wall, f.Load1 = ms(walls[sub.name()]), load
			g.add(f)
		}
	}
	r.end(g)
	return ctx.Err()
}

func (r *runner) batch(ctx context.Context, sub subject, p int, prefix string) ([]time.Duration, time.Duration, error) {
	boxes := make([]any, p)
	var errs []error
	defer func() {
		for _, b := range boxes {
			if b != nil {
				_ = sub.deleteBox(ctx, b)
			}
		}
	}()
	for i := range boxes {
		b, err := sub.newBox(ctx, fmt.Sprintf("%s-%d", prefix, i))
		if err != nil {
			return nil, 0, err
		}
		boxes[i] = b
	}
	ds := make([]time.Duration, p)
	errs = make([]error, p)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range boxes {
		wg.Go(func() {
			<-start
			ds[i], errs[i] = timed(func() error { return sub.attach(ctx, boxes[i]) })
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	for _, b := range boxes {
		if err := sub.detach(ctx, b); err != nil {
			return nil, 0, fmt.Errorf("detach: %w", err)
		}
	}
	return ds, wall, nil
}

// ipam times address request+release alone, with 1,000 addresses of a /16 held: cnm's
// ipam.Default and libnetwork's defaultipam in the process, in batches of 100 pairs, and
// host-local through libcni, a plugin process per call.
func (r *runner) ipam(ctx context.Context) error {
	g := r.begin(ctx, "IPAM alone",
		"One address requested and released, 1,000 others of the /16 held (host-local: none held). In-process allocators are timed in batches of 100 pairs (a sample is a batch's time over 100); host-local is a process per request and per release, through libcni. There is no kernel floor: ratios are against cnm.")
	const held, batch = 1000, 100
	load := load1()
	if r.o.has("cnm") {
		a, err := ipam.NewDefault(ipam.DefaultConfig{})
		if err == nil {
			var p ipam.Pool
			p, err = a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.206.0.0/16")})
			for i := 0; err == nil && i < held; i++ {
				_, err = a.RequestAddress(ctx, p.ID, netip.Addr{})
			}
			var ds []time.Duration
			for i := 0; err == nil && i < r.o.ipamN/batch; i++ {
				var d time.Duration
				d, err = timed(func() error {
					for range batch {
						x, err := a.RequestAddress(ctx, p.ID, netip.Addr{})
						if err != nil {
							return err
						}
						if err := a.ReleaseAddress(ctx, p.ID, x); err != nil {
							return err
						}
					}
					return nil
				})
				ds = append(ds, d/batch)
			}
			if err == nil {
				f := newFigure("request+release", "cnm", "ipam.Default", ds)
				f.N *= batch
				f.Load1 = load
				g.add(f)
			}
		}
		if err != nil {
			r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("cnm: IPAM failed: %v", err))
		}
	}
	if r.o.has("libnetwork") {
		a, err := defaultipam.NewAllocator(ipamutils.GetLocalScopeDefaultNetworks(), ipamutils.GetGlobalScopeDefaultNetworks())
		if err == nil {
			var p ipamapi.AllocatedPool
			p, err = a.RequestPool(ipamapi.PoolRequest{AddressSpace: "LocalDefault", Pool: "10.206.0.0/16"})
			for i := 0; err == nil && i < held; i++ {
				_, _, err = a.RequestAddress(p.PoolID, nil, nil)
			}
			var ds []time.Duration
			for i := 0; err == nil && i < r.o.ipamN/batch; i++ {
				var d time.Duration
				d, err = timed(func() error {
					for range batch {
						x, _, err := a.RequestAddress(p.PoolID, nil, nil)
						if err != nil {
							return err
						}
						if err := a.ReleaseAddress(p.PoolID, x.IP); err != nil {
							return err
						}
					}
					return nil
				})
				ds = append(ds, d/batch)
			}
			if err == nil {
				f := newFigure("request+release", "libnetwork", "defaultipam", ds)
				f.N *= batch
				f.Load1 = load
				g.add(f)
			}
		}
		if err != nil {
			r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("libnetwork: IPAM failed: %v", err))
		}
	}
	if r.o.has("cni") {
		c, err := newCNIIPAM(filepath.Join(r.dir, "cni"), os.Getenv(cniBinEnv))
		var ds []time.Duration
		for i := 0; err == nil && i < r.o.ipamExecN; i++ {
			var d time.Duration
			d, err = timed(func() error { return c.requestRelease(ctx, fmt.Sprintf("ipam-%d", i)) })
			ds = append(ds, d)
		}
		if err == nil {
			f := newFigure("request+release", "cni", "host-local", ds)
			f.Load1 = load
			g.add(f)
		} else {
			r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("cni: IPAM failed: %v", err))
		}
	}
	// The param names the allocator, so ratios against cnm are computed by operation.
	for _, f := range g.Figures {
		for _, c := range g.Figures {
			if c.Subject == "cnm" && c.Median > 0 {
				f.VsCNM = f.Median / c.Median
			}
		}
	}
	g.Load1End = load1()
	return ctx.Err()
}

// versions names what was measured.
func versions() map[string]string {
	v := map[string]string{
		"cni-plugins (bridge, host-local)": cniPluginsVersion,
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			switch m.Path {
			case "github.com/docker/docker", "github.com/containernetworking/cni", "github.com/vishvananda/netlink":
				v[m.Path] = m.Version
			case "github.com/cnmkit/cnm":
				v[m.Path] = "this checkout (" + gitHead() + ")"
			}
		}
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		v["iptables"] = strings.TrimSpace(string(out))
	}
	return v
}

func gitHead() string {
	out, err := exec.Command("git", "log", "-1", "--format=%h %cs").Output()
	if err != nil {
		return "unknown commit"
	}
	return strings.TrimSpace(string(out))
}

// verify checks an attached namespace in the kernel: eth0 is up with an address in subnet, a
// default route is there, and the gateway (the bridge's first address) answers a ping from
// inside the namespace.
func verify(path, subnet string) error {
	if path == "" {
		return errors.New("no namespace path")
	}
	pfx := netip.MustParsePrefix(subnet)
	ns, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return errors.New("eth0 is down")
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	found := false
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		found = found || (ok && pfx.Contains(ip))
	}
	if !found {
		return fmt.Errorf("eth0 has no address in %s (%v)", pfx, addrs)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	def := false
	for _, rt := range routes {
		def = def || (rt.Dst == nil || rt.Dst.String() == "0.0.0.0/0") && rt.Gw != nil
	}
	if !def {
		return errors.New("no default route")
	}
	gw := pfx.Addr().Next().String()
	if out, err := exec.Command("nsenter", "--net="+path, "ping", "-c", "1", "-W", "2", gw).CombinedOutput(); err != nil {
		return fmt.Errorf("ping %s from the namespace: %v: %s", gw, err, out)
	}
	return nil
}

// countLinks returns the number of links in this (the run's host) namespace. A dump the
// kernel interrupted (links changed during it, as they do while it deletes veths in the
// background) is asked again.
func countLinks() (int, error) {
	for {
		l, err := netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return len(l), err
		}
	}
}

// settleLinks waits until the host namespace is back to n links: the kernel deletes the host
// ends of veths whose namespaces were removed in the background (cleanup_net), and the next
// figures should not pay for it.
func settleLinks(ctx context.Context, n int) (time.Duration, error) {
	t0 := time.Now()
	for {
		c, err := countLinks()
		if err != nil {
			return time.Since(t0), err
		}
		if c <= n {
			return time.Since(t0), nil
		}
		if time.Since(t0) > 5*time.Minute {
			return time.Since(t0), fmt.Errorf("%d links left in the host namespace 5 minutes after the removals, %d before the series", c, n)
		}
		select {
		case <-ctx.Done():
			return time.Since(t0), ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

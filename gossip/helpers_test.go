package gossip

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine is left once every test is over. memberlist's own
// goroutines outlive Shutdown briefly (a probe in flight waits out its ProbeInterval, longer on a
// loaded machine), so the check waits up to about 10 s for them.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := waitNoLeak(15 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// waitNoLeak retries goleak.Find until it finds no goroutine but those opts ignore, or timeout
// passes.
func waitNoLeak(timeout time.Duration, opts ...goleak.Option) error {
	deadline := time.Now().Add(timeout)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var loopback = netip.MustParseAddr("127.0.0.1")

// testKey returns a deterministic 16-byte key.
func testKey(seed byte) []byte {
	k := make([]byte, 16)
	for i := range k {
		k[i] = seed*31 + byte(i)
	}
	return k
}

// testLogger discards logs unless GOSSIP_TEST_LOG is set (to a level: debug, info, warn).
// Tests must not log through t: memberlist's goroutines may still log after a test ends.
func testLogger() *slog.Logger {
	lvl := os.Getenv("GOSSIP_TEST_LOG")
	if lvl == "" {
		return slog.New(slog.DiscardHandler)
	}
	var l slog.Level
	_ = l.UnmarshalText([]byte(lvl))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// testConfig is a node on 127.0.0.1 with a kernel-chosen port and timings cut for tests, yet
// lenient enough for a loaded 2-core machine under -race: probes every 400 ms with a 300 ms
// timeout, failure declared about 1.6 s after the first missed probe.
func testConfig(name string, key []byte) Config {
	return Config{
		NodeName:            name,
		BindAddr:            loopback,
		Keys:                [][]byte{key},
		RotationInterval:    -1,
		GossipInterval:      50 * time.Millisecond,
		ProbeInterval:       400 * time.Millisecond,
		ProbeTimeout:        300 * time.Millisecond,
		SuspicionMult:       4,
		PushPullInterval:    5 * time.Second,
		TCPTimeout:          2 * time.Second,
		AntiEntropyInterval: time.Second,
		ReapInterval:        time.Minute,
		NodeReapInterval:    time.Minute,
		ReconnectInterval:   250 * time.Millisecond,
		Logger:              testLogger(),
	}
}

// netFilter drops traffic between nodes on different sides of a partition, and records what
// nodes send when tapping. It sits between memberlist and its NetTransport, so it sees packets
// as they go on the wire: label header, then ciphertext.
type netFilter struct {
	mu     sync.Mutex // guards following
	side   map[string]int
	active bool
	udpOff map[string]bool // addresses whose outgoing UDP user traffic is dropped
	tapped [][]byte
	tap    bool
}

func newNetFilter() *netFilter {
	return &netFilter{side: map[string]int{}, udpOff: map[string]bool{}}
}

func (f *netFilter) blocked(from, to string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.active {
		return false
	}
	a, okA := f.side[from]
	b, okB := f.side[to]
	return okA && okB && a != b
}

func (f *netFilter) partition(groups ...[]*Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.side)
	for g, nodes := range groups {
		for _, n := range nodes {
			f.side[n.LocalAddr().String()] = g
		}
	}
	f.active = true
}

func (f *netFilter) heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active = false
}

func (f *netFilter) record(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tap {
		f.tapped = append(f.tapped, slices.Clone(b))
	}
}

func (f *netFilter) wrap(nt memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	port := nt.(*memberlist.NetTransport).GetAutoBindPort()
	return &filterTransport{NodeAwareTransport: nt, f: f, self: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

type filterTransport struct {
	memberlist.NodeAwareTransport
	f    *netFilter
	self string
}

func (t *filterTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.f.blocked(t.self, addr) {
		return time.Now(), nil
	}
	t.f.record(b)
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *filterTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.f.blocked(t.self, a.Addr) {
		return time.Now(), nil
	}
	t.f.record(b)
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func (t *filterTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.f.blocked(t.self, addr) {
		return nil, fmt.Errorf("partitioned from %s", addr)
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *filterTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.f.blocked(t.self, a.Addr) {
		return nil, fmt.Errorf("partitioned from %s", a.Addr)
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// cluster is a set of in-process nodes on loopback.
type cluster struct {
	t      testing.TB
	nodes  []*Node
	filter *netFilter
	// scale is how many times slower than testConfig's the nodes run their periodic work (see
	// scaleConfig), and so how many times longer the protocol takes to do anything.
	scale float64
	cfg   Config // node-00's configuration, for the bounds derived from it
}

// clusterScale is the slow-down of the periodic work of an n-node cluster: 1 up to 10 nodes,
// n/10 above. testConfig's timings are tuned for at most 10 nodes sharing the test process;
// all nodes of a cluster share one process (and its two cores, under -race), so the process's
// protocol work grows with n at fixed intervals. Stretching every interval by n/10 keeps the
// process's probe, gossip, push/pull and anti-entropy rates at those of a 10-node cluster,
// which keeps the failure detector's timeouts as far from the scheduler's delays as at N=10.
func clusterScale(n int) float64 { return max(1, float64(n)/10) }

// scaleConfig stretches cfg's periods and timeouts by f, and for f > 1 turns memberlist's
// compression off, which costs a 64 KB LZW table for every packet sent. Measured under -race
// with testConfig's timings, an idle 30-node cluster takes 0.6 core with compression and 0.34
// without; stretched 3 times and without compression, 0.13. Without that headroom, on two
// cores shared with other tests, a few probes time out, and the false failures feed on
// themselves: each one sets off reconnects, refutations and anti-entropy rounds on every
// node, which starve more probes (1.3 cores and dozens of false failures a second measured).
func scaleConfig(cfg *Config, f float64) {
	if f <= 1 {
		return
	}
	for _, d := range []*time.Duration{&cfg.GossipInterval, &cfg.ProbeInterval, &cfg.ProbeTimeout, &cfg.PushPullInterval,
		&cfg.TCPTimeout, &cfg.AntiEntropyInterval, &cfg.ReconnectInterval} {
		*d = time.Duration(float64(*d) * f)
	}
	cfg.DisableCompression = true
}

// newCluster starts n nodes named node-00, node-01, ..., with testConfig's timings stretched by
// clusterScale(n), lets mod adjust each config, and joins them all to node-00. It waits until
// every node sees every other alive.
func newCluster(t testing.TB, n int, mod func(i int, c *Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, filter: newNetFilter(), scale: clusterScale(n)}
	key := testKey(1)
	for i := range n {
		cfg := testConfig(fmt.Sprintf("node-%02d", i), key)
		scaleConfig(&cfg, c.scale)
		cfg.testTransport = c.filter.wrap
		if mod != nil {
			mod(i, &cfg)
		}
		if i == 0 {
			c.cfg = cfg
		}
		c.start(cfg)
	}
	c.joinAll(c.nodes[1:]...)
	c.waitAlive(n)
	return c
}

// bound stretches a wait tuned for clusters of up to 10 nodes by the cluster's scale: every
// period of the protocol is that many times longer.
func (c *cluster) bound(d time.Duration) time.Duration {
	return time.Duration(float64(d) * max(1, c.scale))
}

// detectBound bounds the time for every live node to declare failed a member that stopped
// answering (killed, or cut off): memberlist's longest suspicion timeout, reached when no other
// member confirms the suspicion (SuspicionMaxTimeoutMult, 6 in memberlist's LAN profile, times
// SuspicionMult·max(1, log10 N)·ProbeInterval), plus one full round of probes (each node
// probes each member once every N probe intervals), plus 8 s for a starved scheduler. It is
// 20 s at N=6 and testConfig's timings, 87 s at N=30 with timings stretched 3 times; detection
// takes about a quarter of that.
func (c *cluster) detectBound() time.Duration {
	n := float64(len(c.nodes))
	probe := float64(c.cfg.ProbeInterval)
	suspicion := 6 * float64(c.cfg.SuspicionMult) * max(1, math.Log10(n)) * probe
	return time.Duration(suspicion+n*probe) + 8*time.Second
}

func (c *cluster) start(cfg Config) *Node {
	c.t.Helper()
	nd, err := New(cfg)
	if err != nil {
		c.t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	c.t.Cleanup(func() { _ = nd.Close() })
	c.nodes = append(c.nodes, nd)
	return nd
}

// joinAll joins nodes to node-00, concurrently.
func (c *cluster) joinAll(nodes ...*Node) {
	c.t.Helper()
	seed := c.nodes[0].LocalAddr().String()
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, nd := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := nd.Join(ctx, []string{seed}); err != nil {
				errs <- fmt.Errorf("%s: %w", nd.Name(), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatalf("join: %v", err)
	}
}

// live returns the nodes not closed.
func (c *cluster) live() []*Node {
	var out []*Node
	for _, nd := range c.nodes {
		if !nd.isClosed() {
			out = append(out, nd)
		}
	}
	return out
}

// waitAlive waits until every live node sees n members alive.
func (c *cluster) waitAlive(n int) {
	c.t.Helper()
	c.waitAliveWithin(n, c.bound(20*time.Second))
}

func (c *cluster) waitAliveWithin(n int, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, func() error {
		for _, nd := range c.live() {
			if got := nd.NumAlive(); got != n {
				return fmt.Errorf("%s sees %d alive members, want %d", nd.Name(), got, n)
			}
		}
		return nil
	})
}

func (c *cluster) joinNetwork(nid NetworkID) {
	c.t.Helper()
	for _, nd := range c.live() {
		if err := nd.JoinNetwork(nid); err != nil {
			c.t.Fatal(err)
		}
	}
}

// waitSynced waits until every live node has bulk-synced network nid with a peer and no bulk
// sync has arrived anywhere for a while, so what follows is delivered by gossip alone.
func (c *cluster) waitSynced(nid NetworkID) {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, func() error {
		for _, nd := range c.live() {
			nd.mu.Lock()
			nw := nd.networks[nid]
			ok := nw != nil && nw.inSync
			nd.mu.Unlock()
			if !ok {
				return fmt.Errorf("%s has not synced %s", nd.Name(), nid)
			}
		}
		return nil
	})
	last := c.totalStats().BulkSyncs
	waitFor(c.t, 10*time.Second, func() error {
		time.Sleep(300 * time.Millisecond)
		now := c.totalStats().BulkSyncs
		if now != last {
			last = now
			return fmt.Errorf("bulk syncs still arriving")
		}
		return nil
	})
}

// waitTablesAgree waits until every live node holds exactly want entries in network nid and
// all hold the same ones.
func (c *cluster) waitTablesAgree(nid NetworkID, want int, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, func() error {
		var ref []Entry
		for i, nd := range c.live() {
			got := nd.Entries(nid, "")
			if len(got) != want {
				return fmt.Errorf("%s holds %d entries, want %d", nd.Name(), len(got), want)
			}
			if i == 0 {
				ref = got
				continue
			}
			if !slices.EqualFunc(ref, got, entryEqual) {
				return fmt.Errorf("%s disagrees with %s", nd.Name(), c.live()[0].Name())
			}
		}
		return nil
	})
}

func entryEqual(a, b Entry) bool {
	return a.Network == b.Network && a.Table == b.Table && a.Key == b.Key && a.Owner == b.Owner && string(a.Value) == string(b.Value)
}

// totalStats sums the counters of every node, closed ones included.
func (c *cluster) totalStats() Stats {
	var s Stats
	for _, nd := range c.nodes {
		x := nd.Stats()
		s.DecryptFailures += x.DecryptFailures
		s.LabelRejects += x.LabelRejects
		s.MalformedPackets += x.MalformedPackets
		s.MalformedMessages += x.MalformedMessages
		s.OtherErrors += x.OtherErrors
		s.EventsApplied += x.EventsApplied
		s.EventsFromSync += x.EventsFromSync
		s.BulkSyncs += x.BulkSyncs
		s.RotationsCompleted += x.RotationsCompleted
	}
	return s
}

// logLastErrors logs the last error line memberlist logged on each node.
func (c *cluster) logLastErrors() {
	for _, nd := range c.nodes {
		if m := nd.stats.lastRejection.Load(); m != nil {
			c.t.Logf("%s: last logged error: %s", nd.Name(), *m)
		}
	}
}

// waitFor polls cond until it returns nil or timeout passes, then fails with its last error.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// collector drains a Watch channel and counts events per key.
type collector struct {
	mu     sync.Mutex
	events []Event
	done   chan struct{}
}

func collect(ch <-chan Event) *collector {
	c := &collector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for ev := range ch {
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *collector) snapshot() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// created returns the keys with a create event.
func (c *collector) created() map[string]bool {
	out := map[string]bool{}
	for _, ev := range c.snapshot() {
		if ev.Type == EntryCreated {
			out[ev.Key] = true
		}
	}
	return out
}

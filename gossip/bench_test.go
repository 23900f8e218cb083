package gossip

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// The benchmarks measure figures, not ns/op: each runs its trials once whatever b.N is, so run
// them with -benchtime=1x, for example
//
//	go test -run '^$' -bench . -benchtime=1x ./gossip/
//	go test -run '^$' -bench . -benchtime=1x ./gossip/ -gossip.big   # adds N=100
//
// Every cluster uses memberlist's LAN timings (200 ms gossip, 1 s probes), encryption with one
// 16-byte key and the cluster label, on 127.0.0.1, nodes started 0-1 s apart so their tickers
// do not run in lockstep.
var (
	benchBig     = flag.Bool("gossip.big", false, "benchmarks also run N=100")
	benchSamples = flag.Int("gossip.samples", 20, "entries (broadcasts) per propagation benchmark")
	benchTrials  = flag.Int("gossip.trials", 3, "cluster formations per convergence benchmark")
)

func benchSizes() []int {
	if *benchBig {
		return []int{10, 30, 100}
	}
	return []int{10, 30}
}

func lanConfig(name string) Config {
	return Config{NodeName: name, BindAddr: loopback, Keys: [][]byte{testKey(1)}, RotationInterval: -1, Logger: testLogger()}
}

// startStaggered creates n nodes, each after a random 0-1 s delay, concurrently.
func startStaggered[T any](b *testing.B, n int, mk func(i int) (T, error)) []T {
	out := make([]T, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		wg.Go(func() {
			time.Sleep(rand.N(time.Second))
			v, err := mk(i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out[i] = v
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return out
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkEntryPropagation measures how long a table entry takes from CreateEntry on a random
// node to the last of N nodes' watchers, against a plain memberlist user broadcast (a
// TransmitLimitedQueue relayed by every node on first receipt, as networkdb and the research
// harness do) in the same run with the same settings. Reports p50/p95 of both and their ratio.
func BenchmarkEntryPropagation(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			cnm := measureCNMPropagation(b, n, *benchSamples)
			plain := measurePlainPropagation(b, n, *benchSamples)
			b.ReportMetric(ms(percentile(cnm, .5)), "cnm-p50-ms")
			b.ReportMetric(ms(percentile(cnm, .95)), "cnm-p95-ms")
			b.ReportMetric(ms(percentile(plain, .5)), "plain-p50-ms")
			b.ReportMetric(ms(percentile(plain, .95)), "plain-p95-ms")
			b.ReportMetric(ms(percentile(cnm, .5))/ms(percentile(plain, .5)), "p50-ratio")
			b.ReportMetric(ms(percentile(cnm, .95))/ms(percentile(plain, .95)), "p95-ratio")
		})
	}
}

func measureCNMPropagation(b *testing.B, n, samples int) []time.Duration {
	nodes := startStaggered(b, n, func(i int) (*Node, error) { return New(lanConfig(fmt.Sprintf("node-%03d", i))) })
	defer func() {
		for _, nd := range nodes {
			nd.Close()
		}
	}()
	var mu sync.Mutex
	seen := map[string]int{}
	last := map[string]time.Time{}
	for _, nd := range nodes {
		if err := nd.JoinNetwork("bench"); err != nil {
			b.Fatal(err)
		}
		ch, cancel := nd.Watch("bench", "t")
		defer cancel()
		go func() {
			for ev := range ch {
				if ev.Type == EntryCreated {
					mu.Lock()
					seen[ev.Key]++
					last[ev.Key] = time.Now()
					mu.Unlock()
				}
			}
		}()
	}
	joinAllTo(b, nodes)
	waitFor(b, 60*time.Second, func() error {
		for _, nd := range nodes {
			if nd.NumAlive() != n {
				return fmt.Errorf("%s sees %d", nd.Name(), nd.NumAlive())
			}
		}
		return nil
	})
	time.Sleep(4 * time.Second) // past the post-join anti-entropy burst: measure gossip alone
	var lat []time.Duration
	for i := range samples {
		time.Sleep(100*time.Millisecond + rand.N(200*time.Millisecond))
		key := fmt.Sprintf("k%d", i)
		origin := nodes[rand.N(n)]
		start := time.Now()
		if err := origin.CreateEntry("bench", "t", key, make([]byte, 48)); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 30*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if seen[key] < n {
				return fmt.Errorf("%s reached %d of %d", key, seen[key], n)
			}
			return nil
		})
		mu.Lock()
		lat = append(lat, last[key].Sub(start))
		mu.Unlock()
	}
	return lat
}

func joinAllTo(b *testing.B, nodes []*Node) {
	seed := nodes[0].LocalAddr().String()
	var wg sync.WaitGroup
	for _, nd := range nodes[1:] {
		wg.Go(func() {
			if _, err := nd.Join(context.Background(), []string{seed}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
}

// plainNode is a bare memberlist node with a relaying broadcast queue: the baseline.
type plainNode struct {
	ml     *memberlist.Memberlist
	q      *memberlist.TransmitLimitedQueue
	mu     sync.Mutex
	seen   map[string]bool
	onRecv func(id string)
}

func (p *plainNode) NodeMeta(int) []byte           { return nil }
func (p *plainNode) LocalState(bool) []byte        { return nil }
func (p *plainNode) MergeRemoteState([]byte, bool) {}
func (p *plainNode) GetBroadcasts(overhead, limit int) [][]byte {
	return p.q.GetBroadcasts(overhead, limit)
}
func (p *plainNode) NotifyMsg(b []byte) {
	id := string(b[:8])
	p.mu.Lock()
	if p.seen[id] {
		p.mu.Unlock()
		return
	}
	p.seen[id] = true
	p.mu.Unlock()
	p.onRecv(id)
	p.q.QueueBroadcast(&broadcast{msg: slices.Clone(b)})
}

func newPlainNode(name string, numNodes int, onRecv func(string)) (*plainNode, error) {
	p := &plainNode{seen: map[string]bool{}, onRecv: onRecv}
	lan := memberlist.DefaultLANConfig()
	p.q = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return numNodes }, RetransmitMult: lan.RetransmitMult}
	ring, err := memberlist.NewKeyring(nil, testKey(1))
	if err != nil {
		return nil, err
	}
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.BindAddr = "127.0.0.1" // memberlist's own Config
	c.BindPort = 0
	c.AdvertisePort = 0
	c.Keyring = ring
	c.Label = DefaultClusterLabel
	c.Delegate = p
	c.LogOutput = io.Discard
	c.DNSConfigPath = ""
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, err
	}
	p.ml = ml
	return p, nil
}

func measurePlainPropagation(b *testing.B, n, samples int) []time.Duration {
	var mu sync.Mutex
	seen := map[string]int{}
	last := map[string]time.Time{}
	onRecv := func(id string) {
		mu.Lock()
		seen[id]++
		last[id] = time.Now()
		mu.Unlock()
	}
	nodes := startStaggered(b, n, func(i int) (*plainNode, error) { return newPlainNode(fmt.Sprintf("plain-%03d", i), n, onRecv) })
	defer func() {
		for _, p := range nodes {
			_ = p.ml.Shutdown()
		}
	}()
	seed := nodes[0].ml.LocalNode().Address()
	var wg sync.WaitGroup
	for _, p := range nodes[1:] {
		wg.Go(func() {
			if _, err := p.ml.Join([]string{seed}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	waitFor(b, 120*time.Second, func() error {
		for _, p := range nodes {
			if p.ml.NumMembers() != n {
				return fmt.Errorf("plain node sees %d", p.ml.NumMembers())
			}
		}
		return nil
	})
	time.Sleep(time.Second)
	var lat []time.Duration
	for i := range samples {
		time.Sleep(100*time.Millisecond + rand.N(200*time.Millisecond))
		id := fmt.Sprintf("m%07d", i)
		msg := append([]byte(id), make([]byte, 56)...)
		origin := nodes[rand.N(n)]
		start := time.Now()
		origin.NotifyMsg(msg) // counts the origin's own receipt and queues the broadcast
		err := func() error {
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				mu.Lock()
				done := seen[id] >= n
				mu.Unlock()
				if done {
					return nil
				}
				time.Sleep(5 * time.Millisecond)
			}
			return fmt.Errorf("plain broadcast %s never reached all %d nodes", id, n)
		}()
		if err != nil {
			b.Log(err) // the gossip loss floor; counted as a missing sample
			continue
		}
		mu.Lock()
		lat = append(lat, last[id].Sub(start))
		mu.Unlock()
	}
	return lat
}

// BenchmarkJoinConvergence measures, for N nodes that each joined a network and wrote one
// entry before joining the cluster all at once: the time from the last Join until every node
// lists N members, until every node holds all N entries, and then, after one node is killed,
// until its entry is gone from every other node. A plain memberlist join storm in the same run
// gives the membership baseline. Reports the worst trial of each figure.
func BenchmarkJoinConvergence(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			var members, tables, removal, plain []time.Duration
			for range *benchTrials {
				m, tb, r := cnmJoinTrial(b, n)
				members, tables, removal = append(members, m), append(tables, tb), append(removal, r)
				plain = append(plain, plainJoinTrial(b, n))
			}
			b.ReportMetric(ms(slices.Max(members)), "members-max-ms")
			b.ReportMetric(ms(slices.Max(tables)), "tables-max-ms")
			b.ReportMetric(ms(percentile(tables, .5)), "tables-p50-ms")
			b.ReportMetric(ms(slices.Max(removal)), "dead-removal-max-ms")
			b.ReportMetric(ms(slices.Max(plain)), "plain-members-max-ms")
			b.Logf("N=%d members %v tables %v dead removal %v plain members %v", n, members, tables, removal, plain)
		})
	}
}

func cnmJoinTrial(b *testing.B, n int) (members, tables, removal time.Duration) {
	nodes := make([]*Node, n)
	for i := range n {
		nd, err := New(lanConfig(fmt.Sprintf("node-%03d", i)))
		if err != nil {
			b.Fatal(err)
		}
		defer nd.Close()
		if err := nd.JoinNetwork("bench"); err != nil {
			b.Fatal(err)
		}
		if err := nd.CreateEntry("bench", "t", nd.Name(), []byte("v")); err != nil {
			b.Fatal(err)
		}
		nodes[i] = nd
	}
	time.Sleep(rand.N(time.Second))
	joinAllTo(b, nodes)
	start := time.Now()
	var memDone time.Duration
	waitFor(b, 120*time.Second, func() error {
		for _, nd := range nodes {
			if nd.NumAlive() != n {
				return fmt.Errorf("%s sees %d", nd.Name(), nd.NumAlive())
			}
		}
		memDone = time.Since(start)
		return nil
	})
	waitFor(b, 120*time.Second, func() error {
		for _, nd := range nodes {
			if got := len(nd.Entries("bench", "t")); got != n {
				return fmt.Errorf("%s holds %d entries", nd.Name(), got)
			}
		}
		return nil
	})
	tables = time.Since(start)
	victim := nodes[n-1]
	victim.Close()
	killed := time.Now()
	waitFor(b, 120*time.Second, func() error {
		for _, nd := range nodes[:n-1] {
			if got := len(nd.Entries("bench", "t")); got != n-1 {
				return fmt.Errorf("%s holds %d entries", nd.Name(), got)
			}
		}
		return nil
	})
	return memDone, tables, time.Since(killed)
}

func plainJoinTrial(b *testing.B, n int) time.Duration {
	nodes := make([]*plainNode, n)
	for i := range n {
		p, err := newPlainNode(fmt.Sprintf("plain-%03d", i), n, func(string) {})
		if err != nil {
			b.Fatal(err)
		}
		defer p.ml.Shutdown()
		nodes[i] = p
	}
	time.Sleep(rand.N(time.Second))
	seed := nodes[0].ml.LocalNode().Address()
	var wg sync.WaitGroup
	for _, p := range nodes[1:] {
		wg.Go(func() {
			if _, err := p.ml.Join([]string{seed}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	start := time.Now()
	var done time.Duration
	waitFor(b, 120*time.Second, func() error {
		for _, p := range nodes {
			if p.ml.NumMembers() != n {
				return fmt.Errorf("plain node sees %d", p.ml.NumMembers())
			}
		}
		done = time.Since(start)
		return nil
	})
	return done
}

// BenchmarkCompression measures what memberlist's LZW compression (Config.DisableCompression
// false, the default) costs and saves: the CPU time the whole process spends while an idle
// 10-node cluster runs for 5 s, and the bytes of UDP packets sent while 200 entries (an
// endpoint's IP and MAC, as the overlay writes them) spread to every node, with compression on
// and off in the same run. Reports both and their ratio (on / off).
func BenchmarkCompression(b *testing.B) {
	const n, writes = 10, 200
	type result struct {
		cpu   time.Duration
		bytes int
	}
	run := func(disable bool) result {
		f := newNetFilter()
		nodes := make([]*Node, n)
		for i := range n {
			cfg := lanConfig(fmt.Sprintf("node-%03d", i))
			cfg.DisableCompression = disable
			cfg.testTransport = f.wrap
			nd, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer nd.Close()
			if err := nd.JoinNetwork("bench"); err != nil {
				b.Fatal(err)
			}
			nodes[i] = nd
		}
		joinAllTo(b, nodes)
		waitFor(b, 30*time.Second, func() error {
			for _, nd := range nodes {
				if nd.NumAlive() != n || len(nd.NetworkNodes("bench")) != n {
					return fmt.Errorf("%s: %d alive, %d in the network", nd.Name(), nd.NumAlive(), len(nd.NetworkNodes("bench")))
				}
			}
			return nil
		})
		time.Sleep(4 * time.Second) // past the fast anti-entropy rounds of the join
		c0 := cpuTime(b)
		time.Sleep(5 * time.Second)
		idle := cpuTime(b) - c0

		f.mu.Lock()
		f.tap, f.tapped = true, nil
		f.mu.Unlock()
		for i := range writes {
			value := fmt.Sprintf("10.0.%d.%d 02:42:0a:00:%02x:%02x", i/250, i%250+2, i/250, i%250+2)
			if err := nodes[i%n].CreateEntry("bench", "endpoints", fmt.Sprintf("ep-%d", i), []byte(value)); err != nil {
				b.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		waitFor(b, 30*time.Second, func() error {
			for _, nd := range nodes {
				if got := len(nd.Entries("bench", "endpoints")); got != writes {
					return fmt.Errorf("%s holds %d entries", nd.Name(), got)
				}
			}
			return nil
		})
		time.Sleep(2 * time.Second) // retransmissions run out
		f.mu.Lock()
		defer f.mu.Unlock()
		f.tap = false
		total := 0
		for _, p := range f.tapped {
			total += len(p)
		}
		return result{cpu: idle, bytes: total}
	}
	on, off := run(false), run(true)
	b.ReportMetric(ms(on.cpu)/5000, "idle-cpu-cores-on")
	b.ReportMetric(ms(off.cpu)/5000, "idle-cpu-cores-off")
	b.ReportMetric(float64(on.cpu)/float64(off.cpu), "idle-cpu-on/off")
	b.ReportMetric(float64(on.bytes), "udp-bytes-on")
	b.ReportMetric(float64(off.bytes), "udp-bytes-off")
	b.ReportMetric(float64(on.bytes)/float64(off.bytes), "udp-bytes-on/off")
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

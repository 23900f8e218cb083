package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// keysAgree checks that every node has finished rotation epoch >= minEpoch and holds exactly
// the target keyring with the target primary.
func keysAgree(nodes []*Node, minEpoch uint64) error {
	var ref KeyringStatus
	for i, nd := range nodes {
		s := nd.KeyringStatus()
		if s.Epoch < minEpoch || s.Phase != "done" {
			return fmt.Errorf("%s at epoch %d phase %s, want epoch >= %d done", nd.Name(), s.Epoch, s.Phase, minEpoch)
		}
		if s.Primary != s.TargetPrimary {
			return fmt.Errorf("%s encrypts with %s, target primary %s", nd.Name(), s.Primary, s.TargetPrimary)
		}
		if !sameSet(s.Keys, s.Target) {
			return fmt.Errorf("%s holds %v, target %v", nd.Name(), s.Keys, s.Target)
		}
		if i == 0 {
			ref = s
		} else if s.Epoch != ref.Epoch || s.Primary != ref.Primary || !sameSet(s.Keys, ref.Keys) {
			return fmt.Errorf("%s (epoch %d, %v) disagrees with %s (epoch %d, %v)", nd.Name(), s.Epoch, s.Keys, nodes[0].Name(), ref.Epoch, ref.Keys)
		}
	}
	return nil
}

// rotationBudget lets the driver start only as many rotations as the test allows.
type rotationBudget struct{ left atomic.Int64 }

func (b *rotationBudget) allow(n int64) { b.left.Add(n) }

// hook is a Config.testAdvance: steps within a rotation always pass; starting one takes one
// from the budget.
func (b *rotationBudget) hook(from, to rotationPhase) bool {
	if from != phaseDone {
		return true
	}
	for {
		v := b.left.Load()
		if v <= 0 {
			return false
		}
		if b.left.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestRotationUnderTraffic: several rotations in a row at a 1 s interval while two nodes write
// entries continuously. memberlist must log no decrypt failure anywhere, no member may be
// suspected dead, and every watcher on every node must see every entry created.
func TestRotationUnderTraffic(t *testing.T) {
	const n = 5
	const rotations = 3
	var budget rotationBudget
	budget.allow(rotations)
	c := newCluster(t, n, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		cfg.testNoRepair = true // deliveries must come from gossip, not repair
		cfg.testAdvance = budget.hook
	})
	c.joinNetwork("net1")
	c.waitSynced("net1")
	syncedBefore := c.totalStats().EventsFromSync
	var cols []*collector
	for _, nd := range c.nodes {
		ch, cancel := nd.Watch("net1", "t")
		t.Cleanup(cancel)
		cols = append(cols, collect(ch))
	}
	mev, cancelM := c.nodes[0].WatchMembers()
	defer cancelM()
	var fails atomic.Int32
	go func() {
		for ev := range mev {
			if ev.Type == MemberFail || ev.Type == MemberLeave {
				fails.Add(1)
			}
		}
	}()
	initial := c.nodes[0].KeyringStatus().Primary

	stop := make(chan struct{})
	var written atomic.Int64
	var wg sync.WaitGroup
	for _, w := range []*Node{c.nodes[1], c.nodes[3]} {
		wg.Go(func() {
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if err := w.CreateEntry("net1", "t", fmt.Sprintf("%s-%d", w.Name(), i), []byte("v")); err != nil {
					t.Error(err)
					return
				}
				written.Add(1)
			}
		})
	}
	start := time.Now()
	waitFor(t, 60*time.Second, func() error { return keysAgree(c.nodes, rotations) })
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond) // traffic continues after the last rotation
	close(stop)
	wg.Wait()
	total := int(written.Load())
	c.waitTablesAgree("net1", total, 20*time.Second)
	waitFor(t, 10*time.Second, func() error {
		for i, col := range cols {
			if got := len(col.created()); got != total {
				return fmt.Errorf("%s watched %d creates, want %d", c.nodes[i].Name(), got, total)
			}
		}
		return nil
	})
	waitFor(t, 10*time.Second, func() error { return keysAgree(c.nodes, rotations) })
	s := c.totalStats()
	s.EventsFromSync -= syncedBefore
	epoch := c.nodes[0].KeyringStatus().Epoch
	t.Logf("%d rotations in %v under %d writes: decrypt failures %d, rejected %d, events applied by gossip %d, repaired by sync %d",
		epoch, elapsed.Round(time.Millisecond), total, s.DecryptFailures, s.Rejected(), s.EventsApplied, s.EventsFromSync)
	// (LabelRejects is left out: on a starved machine a TCP fallback probe can time out before
	// it writes anything, and the empty stream it leaves reads as one without a label.)
	if s.DecryptFailures != 0 || s.MalformedPackets != 0 || s.MalformedMessages != 0 {
		c.logLastErrors()
		t.Errorf("rotation caused rejections: %+v", s)
	}
	if s.EventsFromSync != 0 {
		t.Errorf("%d deliveries needed repair: gossip lost them", s.EventsFromSync)
	}
	if f := fails.Load(); f != 0 {
		t.Errorf("%d members declared failed during rotation", f)
	}
	if got := c.nodes[0].KeyringStatus(); got.Primary == initial || len(got.Keys) != 3 || got.Epoch < rotations {
		t.Errorf("after rotating: %+v (initial primary %s)", got, initial)
	}
}

// TestRotationDriverCrash: the driver crashes mid-rotation (after every member installed the
// new keys, before anyone switched); the next member in name order finishes the same rotation.
func TestRotationDriverCrash(t *testing.T) {
	c := newCluster(t, 4, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		switch i {
		case 0: // the driver stalls after the install phase, then crashes
			cfg.testAdvance = func(from, to rotationPhase) bool { return from != phaseInstall }
		case 1: // the next driver finishes what it finds and starts nothing of its own
			cfg.testAdvance = func(from, to rotationPhase) bool { return from != phaseDone }
		}
	})
	var target KeyringStatus
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range c.nodes {
			s := nd.KeyringStatus()
			if s.Epoch != 1 || s.Phase != "install" || len(s.Keys) != 3 {
				return fmt.Errorf("%s: epoch %d phase %s keys %d", nd.Name(), s.Epoch, s.Phase, len(s.Keys))
			}
			target = s
		}
		return nil
	})
	crashed := time.Now()
	if err := c.nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	rest := c.live()
	waitFor(t, 30*time.Second, func() error { return keysAgree(rest, 1) })
	t.Logf("rotation finished by %s %v after the driver crashed", rest[0].Name(), time.Since(crashed))
	got := rest[0].KeyringStatus()
	if got.Epoch != 1 || got.TargetPrimary != target.TargetPrimary || !slices.Equal(got.Target, target.Target) {
		t.Errorf("finished %+v, want the crashed driver's rotation %+v", got, target)
	}
	if s := c.totalStats(); s.DecryptFailures != 0 {
		t.Errorf("%d decrypt failures", s.DecryptFailures)
	}
}

// TestRestartWithPersistedKeyring: a node with a KeyringFile is killed, misses one rotation,
// and restarts from the file (its Config.Keys is the stale bootstrap key): it rejoins, catches
// up, and nothing anywhere failed to decrypt.
func TestRestartWithPersistedKeyring(t *testing.T) {
	dir := t.TempDir()
	var budget rotationBudget
	budget.allow(1)
	cfgs := make([]Config, 3)
	c := newCluster(t, 3, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		cfg.KeyringFile = filepath.Join(dir, fmt.Sprintf("node-%02d.keyring", i))
		cfg.testAdvance = budget.hook
		cfgs[i] = *cfg
	})
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes, 1) })

	victim := c.nodes[2]
	port := victim.LocalAddr().Port()
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	before := victim.KeyringStatus().Epoch
	budget.allow(1)
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes[:2], before+1) })

	fi, err := os.Stat(cfgs[2].KeyringFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("keyring file mode %v, want 0600", fi.Mode().Perm())
	}
	cfg := cfgs[2]
	cfg.BindPort = int(port)
	cfg.Keys = [][]byte{testKey(1)} // stale: the file wins
	cfg.testAdvance = budget.hook
	restarted := c.start(cfg)
	if got := restarted.KeyringStatus(); got.Epoch != before {
		t.Fatalf("restarted node loaded epoch %d, want %d from its file", got.Epoch, before)
	}
	if _, err := restarted.Join(t.Context(), []string{c.nodes[0].LocalAddr().String()}); err != nil {
		t.Fatalf("rejoin after missing one rotation: %v", err)
	}
	nodes := []*Node{c.nodes[0], c.nodes[1], restarted}
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range nodes {
			if nd.NumAlive() != 3 {
				return fmt.Errorf("%s sees %d alive", nd.Name(), nd.NumAlive())
			}
		}
		return keysAgree(nodes, before+1)
	})
	if s := c.totalStats(); s.DecryptFailures != 0 {
		t.Errorf("%d decrypt failures", s.DecryptFailures)
	}
}

// TestMissedTwoRotations: a node that missed two rotations shares no key with the cluster and
// cannot join with its old keyring file; started again with the keys a healthy member exports
// (and its stale file removed), as the package documentation says, it joins.
func TestMissedTwoRotations(t *testing.T) {
	dir := t.TempDir()
	var budget rotationBudget
	budget.allow(1)
	c := newCluster(t, 3, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		cfg.KeyringFile = filepath.Join(dir, fmt.Sprintf("node-%02d.keyring", i))
		cfg.testAdvance = budget.hook
	})
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes, 1) })
	victim := c.nodes[2]
	cfg := victim.cfg
	cfg.Logger = testLogger()
	cfg.BindPort = 0
	before := victim.KeyringStatus().Epoch
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	budget.allow(2)
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes[:2], before+2) })

	stale := c.start(cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := stale.Join(ctx, []string{c.nodes[0].LocalAddr().String()}); err == nil {
		t.Fatal("a node two rotations behind joined")
	} else if !errors.Is(err, errclass.ErrUnavailable) {
		t.Errorf("join error %v, want an Unavailable error", err)
	}
	if c.nodes[0].Stats().DecryptFailures == 0 {
		t.Error("the cluster did not count the stale node's undecryptable join")
	}
	if err := stale.Close(); err != nil {
		t.Fatal(err)
	}

	if err := os.Remove(cfg.KeyringFile); err != nil {
		t.Fatal(err)
	}
	cfg.Keys = c.nodes[0].Keys()
	fresh := c.start(cfg)
	if _, err := fresh.Join(ctx, []string{c.nodes[0].LocalAddr().String()}); err != nil {
		t.Fatalf("join with the exported keys: %v", err)
	}
	nodes := []*Node{c.nodes[0], c.nodes[1], fresh}
	waitFor(t, 20*time.Second, func() error { return keysAgree(nodes, before+2) })
}

// TestSchedulePersisted: a restart keeps the rotation schedule and the keys of the file, not
// those of Config.Keys.
func TestSchedulePersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	cfg := testConfig("solo", testKey(7))
	cfg.RotationInterval = time.Hour
	cfg.KeyringFile = path
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := a.KeyringStatus()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	cfg.Keys = [][]byte{testKey(8)}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := b.KeyringStatus()
	if !got.NextRotation.Equal(want.NextRotation) {
		t.Errorf("next rotation after restart %v, want %v", got.NextRotation, want.NextRotation)
	}
	if got.Primary != KeyID(testKey(7)) {
		t.Errorf("primary after restart %s, want the file's %s", got.Primary, KeyID(testKey(7)))
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"next"`)) {
		t.Errorf("keyring file has no schedule: %s", raw)
	}
}

// TestWatchKeys: a subscriber of WatchKeys hears each step of a rotation that changes this
// node's keyring (install, use, remove), in order, with key IDs only; and stops with cancel.
func TestWatchKeys(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.RotationInterval = time.Second })
	ch, cancel := c.nodes[1].WatchKeys()
	var seen []KeyringStatus
	deadline := time.After(20 * time.Second)
	for len(seen) < 3 || seen[len(seen)-1].Phase != "remove" {
		select {
		case st := <-ch:
			seen = append(seen, st)
		case <-deadline:
			t.Fatalf("after 20s saw %d keyring changes: %+v", len(seen), seen)
		}
	}
	for i, st := range seen {
		for _, id := range append([]string{st.Primary}, st.Keys...) {
			if len(id) > 16 || id == "" {
				t.Fatalf("status %d shows %q: want key IDs only", i, id)
			}
		}
		if i > 0 && st.Epoch < seen[i-1].Epoch {
			t.Fatalf("epochs out of order: %+v", seen)
		}
	}
	if first, last := seen[0], seen[len(seen)-1]; first.Primary == last.Primary && first.Epoch == last.Epoch {
		t.Fatalf("a full rotation left the primary at %s: %+v", first.Primary, seen)
	}
	cancel()
	cancel()
	for range ch { // drained and closed by cancel
	}
}

package gossip

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// openBolt opens a bbolt store in t's temporary directory, shared by every node of the test
// (one process holds a bbolt file), and closes it at the end of the test, after the nodes.
func openBolt(t *testing.T) *boltdb.Store {
	t.Helper()
	s, err := boltdb.Open(filepath.Join(t.TempDir(), "cnm.db"), boltdb.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// drive is one write of the rotation record seen by a lockTracker.
type drive struct {
	epoch  uint64
	phase  rotationPhase
	driver string // the record's Driver
	writer string // the node whose store handle wrote it
	holder string // the node holding the rotation lock at that moment
	create bool   // a create-only write (the bootstrap at New)
}

// lockTracker watches the rotation lock and the rotation record through the nodeStore handles
// of every node of a test: who holds the lock, whether two ever held it at once, and every
// write of the record.
type lockTracker struct {
	wg sync.WaitGroup // simulated lease expiries

	mu       sync.Mutex // guards following
	holder   string
	overlaps []string
	drives   []drive
}

func (tr *lockTracker) take(name string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.holder != "" {
		tr.overlaps = append(tr.overlaps, fmt.Sprintf("%s took the lock held by %s", name, tr.holder))
	}
	tr.holder = name
}

func (tr *lockTracker) release(name string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.holder == name {
		tr.holder = ""
	}
}

func (tr *lockTracker) current() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.holder
}

func (tr *lockTracker) history() []drive {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.drives)
}

// check fails t if two nodes ever held the lock at once, if a step was written by a node not
// holding the lock, or if a step of a rotation was written twice. It returns, per epoch, the
// drivers of its install, use, remove and done steps.
func (tr *lockTracker) check(t *testing.T) map[uint64][4]string {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, o := range tr.overlaps {
		t.Error(o)
	}
	steps := map[uint64][4]string{}
	for _, d := range tr.drives {
		if d.create {
			continue
		}
		if d.writer != d.holder || d.driver != d.writer {
			t.Errorf("epoch %d %s written by %s (record says %s) while %q held the lock", d.epoch, d.phase, d.writer, d.driver, d.holder)
		}
		s := steps[d.epoch]
		if i := int(d.phase) - 1; s[i] != "" {
			t.Errorf("epoch %d %s written twice: by %s and by %s", d.epoch, d.phase, s[i], d.writer)
		} else {
			s[i] = d.writer
		}
		steps[d.epoch] = s
	}
	return steps
}

// nodeStore is one node's handle on the shared store. It reports to a lockTracker and can
// simulate the node's process dying (crash: every call fails from then on, and the lock it
// held frees itself a lease TTL later) or its lease running out while it lives (expire). The
// bbolt lock cannot expire by itself: it lives in the one process that holds the file.
type nodeStore struct {
	kvstore.Store
	name string
	tr   *lockTracker
	ttl  time.Duration

	down atomic.Bool // every call fails with kvstore.ErrUnavailable, as when the store is cut off

	mu   sync.Mutex // guards following
	dead bool
	held *trackedLock
}

var (
	_ kvstore.Store    = (*nodeStore)(nil)
	_ kvstore.Locker   = (*nodeStore)(nil)
	_ kvstore.Unlocker = (*trackedLock)(nil)
)

func newNodeStore(s kvstore.Store, name string, tr *lockTracker) *nodeStore {
	return &nodeStore{Store: s, name: name, tr: tr, ttl: time.Second}
}

func (s *nodeStore) alive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return kvstore.ErrClosed
	}
	if s.down.Load() {
		return kvstore.ErrUnavailable
	}
	return nil
}

func (s *nodeStore) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	if err := s.alive(); err != nil {
		return kvstore.KVPair{}, err
	}
	return s.Store.Get(ctx, key)
}

func (s *nodeStore) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := s.alive(); err != nil {
		return 0, err
	}
	return s.Store.Put(ctx, key, value)
}

func (s *nodeStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	if err := s.alive(); err != nil {
		return 0, err
	}
	rev, err := s.Store.AtomicPut(ctx, key, value, prev)
	if err == nil && strings.HasSuffix(key, storeKeyring) {
		st, driver, derr := decodeStoreRecord(key, value)
		if derr != nil {
			panic(derr) // the node wrote a record it cannot read back
		}
		s.tr.mu.Lock()
		s.tr.drives = append(s.tr.drives, drive{epoch: st.Epoch, phase: st.Phase, driver: driver, writer: s.name,
			holder: s.tr.holder, create: prev == 0})
		s.tr.mu.Unlock()
	}
	return rev, err
}

func (s *nodeStore) Delete(ctx context.Context, key string) error {
	if err := s.alive(); err != nil {
		return err
	}
	return s.Store.Delete(ctx, key)
}

func (s *nodeStore) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	if err := s.alive(); err != nil {
		return err
	}
	return s.Store.AtomicDelete(ctx, key, prev)
}

func (s *nodeStore) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	if err := s.alive(); err != nil {
		return nil, err
	}
	return s.Store.List(ctx, prefix)
}

func (s *nodeStore) Watch(ctx context.Context, prefix string, from uint64) (<-chan kvstore.Event, error) {
	if err := s.alive(); err != nil {
		return nil, err
	}
	return s.Store.Watch(ctx, prefix, from)
}

// Close does nothing: the shared store is closed by the test.
func (s *nodeStore) Close() error { return nil }

func (s *nodeStore) Lock(ctx context.Context, key string) (kvstore.Unlocker, error) {
	if err := s.alive(); err != nil {
		return nil, err
	}
	u, err := s.Store.(kvstore.Locker).Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead { // the process died while it waited
		_ = u.Unlock(context.Background())
		return nil, kvstore.ErrClosed
	}
	s.tr.take(s.name)
	l := &trackedLock{s: s, u: u, lost: make(chan struct{})}
	s.held = l
	return l, nil
}

// crash makes the node's process die as far as the store can tell: every later call fails,
// and the lock it holds, if any, frees itself ttl later, as a lease that is no longer renewed
// does.
func (s *nodeStore) crash() {
	s.mu.Lock()
	s.dead = true
	l := s.held
	s.held = nil
	s.mu.Unlock()
	if l != nil {
		s.tr.wg.Go(func() {
			time.Sleep(s.ttl)
			l.end()
		})
	}
}

// expire ends the lease of the lock the node holds while the node lives on, as when its
// renewals fail for a whole TTL: the lock frees itself, and Lost tells the node. It returns
// false if the node holds no lock.
func (s *nodeStore) expire() bool {
	s.mu.Lock()
	l := s.held
	s.held = nil
	s.mu.Unlock()
	if l == nil {
		return false
	}
	l.end()
	return true
}

type trackedLock struct {
	s    *nodeStore
	u    kvstore.Unlocker
	lost chan struct{}
	once sync.Once
	gone atomic.Bool // ended without Unlock
}

// end frees the lock without its holder's Unlock.
func (l *trackedLock) end() {
	l.once.Do(func() {
		l.gone.Store(true)
		l.s.tr.release(l.s.name)
		_ = l.u.Unlock(context.Background())
		close(l.lost)
	})
}

func (l *trackedLock) Unlock(ctx context.Context) error {
	if err := l.s.alive(); err != nil {
		return err
	}
	if l.gone.Load() {
		return kvstore.ErrLockLost
	}
	var err error
	l.once.Do(func() {
		l.s.mu.Lock()
		if l.s.held == l {
			l.s.held = nil
		}
		l.s.mu.Unlock()
		l.s.tr.release(l.s.name)
		err = l.u.Unlock(ctx)
	})
	return err
}

func (l *trackedLock) Lost() <-chan struct{} { return l.lost }

// storeCluster is a cluster whose nodes share one bbolt store through tracked handles.
type storeCluster struct {
	*cluster
	store   *boltdb.Store
	tr      *lockTracker
	handles map[string]*nodeStore
}

func newStoreCluster(t *testing.T, n int, mod func(i int, c *Config)) *storeCluster {
	t.Helper()
	sc := &storeCluster{store: openBolt(t), tr: &lockTracker{}, handles: map[string]*nodeStore{}}
	t.Cleanup(sc.tr.wg.Wait)
	sc.cluster = newCluster(t, n, func(i int, c *Config) {
		c.Store = sc.handle(c.NodeName)
		if mod != nil {
			mod(i, c)
		}
	})
	return sc
}

// handle returns a fresh store handle for a node (a restarted node gets a new one).
func (sc *storeCluster) handle(name string) *nodeStore {
	h := newNodeStore(sc.store, name, sc.tr)
	sc.handles[name] = h
	return h
}

func (sc *storeCluster) node(name string) *Node {
	for _, nd := range sc.live() {
		if nd.Name() == name {
			return nd
		}
	}
	sc.t.Fatalf("no live node %s", name)
	return nil
}

// waitHolder waits until a live node holds the rotation lock and returns it.
func (sc *storeCluster) waitHolder(not string) *Node {
	sc.t.Helper()
	var h string
	waitFor(sc.t, 20*time.Second, func() error {
		h = sc.tr.current()
		if h == "" || h == not {
			return fmt.Errorf("lock held by %q", h)
		}
		return nil
	})
	return sc.node(h)
}

// storeState reads the rotation record straight from the store.
func storeState(t *testing.T, s kvstore.Store, prefix string) (*rotationState, string) {
	t.Helper()
	kv, err := s.Get(t.Context(), prefix+storeKeyring)
	if err != nil {
		t.Fatal(err)
	}
	st, driver, err := decodeStoreRecord(kv.Key, kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	return st, driver
}

// phaseGate is a Config.testAdvance shared by every node: rotations start only as the budget
// allows, and while hold is set no rotation moves past its install phase.
type phaseGate struct {
	budget rotationBudget
	hold   atomic.Bool
}

func (g *phaseGate) hook(from, to rotationPhase) bool {
	if from == phaseInstall && g.hold.Load() {
		return false
	}
	return g.budget.hook(from, to)
}

// TestStoreOneDriver: with a store, the nodes compete for the rotation lock, and only its
// holder drives, whatever its name: with the lock handed to the highest name, every step of
// three rotations is written once, by that node, and no two nodes ever hold the lock at once.
// The record in the store ends where the members are.
func TestStoreOneDriver(t *testing.T) {
	var gate phaseGate
	sc := newStoreCluster(t, 4, func(i int, c *Config) {
		c.RotationInterval = time.Second
		c.testAdvance = gate.hook
	})
	// Hand the lock down the queue to the node with the highest name: the lowest, alive all
	// along, must not drive.
	for h := sc.waitHolder(""); h.Name() != "node-03"; {
		if !sc.handles[h.Name()].expire() {
			t.Fatalf("%s holds no lock", h.Name())
		}
		h = sc.waitHolder(h.Name())
	}
	gate.budget.allow(3)
	waitFor(t, 60*time.Second, func() error { return keysAgree(sc.nodes, 3) })
	steps := sc.tr.check(t)
	holder := sc.tr.current()
	if holder != "node-03" {
		t.Errorf("lock held by %s, want node-03", holder)
	}
	for epoch := uint64(1); epoch <= 3; epoch++ {
		for i, d := range steps[epoch] {
			if d == "" {
				t.Errorf("epoch %d: no %s step in the store", epoch, rotationPhase(i+1))
			} else if d != holder {
				t.Errorf("epoch %d %s driven by %s, the lock is %s's", epoch, rotationPhase(i+1), d, holder)
			}
		}
	}
	t.Logf("rotations driven by %s, the lock holder; steps %v", holder, steps)
	st, driver := storeState(t, sc.store, DefaultStorePrefixBase+DefaultClusterLabel)
	ks := sc.nodes[0].KeyringStatus()
	if st.Epoch != ks.Epoch || st.Phase != phaseDone || KeyID(st.Keys[st.Primary]) != ks.Primary || driver != holder {
		t.Errorf("store holds epoch %d %s primary %s by %s; members at epoch %d primary %s", st.Epoch, st.Phase,
			KeyID(st.Keys[st.Primary]), driver, ks.Epoch, ks.Primary)
	}
	if !time.Unix(0, st.Next).Equal(ks.NextRotation) {
		t.Errorf("store schedules %v, members %v", time.Unix(0, st.Next), ks.NextRotation)
	}
	if s := sc.totalStats(); s.DecryptFailures != 0 {
		t.Errorf("%d decrypt failures", s.DecryptFailures)
	}
}

// traffic writes entries continuously from some nodes and watches them on others, for the
// tests of rotations under load.
type traffic struct {
	t       *testing.T
	stop    chan struct{}
	wg      sync.WaitGroup
	written atomic.Int64
	cols    map[string]*collector
}

func startTraffic(t *testing.T, nid NetworkID, writers, watchers []*Node) *traffic {
	tr := &traffic{t: t, stop: make(chan struct{}), cols: map[string]*collector{}}
	for _, nd := range watchers {
		ch, cancel := nd.Watch(nid, "t")
		t.Cleanup(cancel)
		tr.cols[nd.Name()] = collect(ch)
	}
	for _, w := range writers {
		tr.wg.Go(func() {
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-tr.stop:
					return
				case <-tick.C:
				}
				if err := w.CreateEntry(nid, "t", fmt.Sprintf("%s-%d", w.Name(), i), []byte("v")); err != nil {
					t.Error(err)
					return
				}
				tr.written.Add(1)
			}
		})
	}
	t.Cleanup(tr.halt)
	return tr
}

func (tr *traffic) halt() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// verify stops the writers and waits until every watcher saw a create for every entry.
func (tr *traffic) verify(c *cluster, nid NetworkID) int {
	tr.t.Helper()
	tr.halt()
	total := int(tr.written.Load())
	c.waitTablesAgree(nid, total, 20*time.Second)
	waitFor(tr.t, 10*time.Second, func() error {
		for name, col := range tr.cols {
			if got := len(col.created()); got != total {
				return fmt.Errorf("%s watched %d creates, want %d", name, got, total)
			}
		}
		return nil
	})
	return total
}

// TestStoreDriverLost: the lock holder stops mid-rotation, after every member installed the new
// keys and before anyone switched to them; another member takes the lock and finishes that very
// rotation, then drives the next ones, while two other nodes write entries continuously. No
// message fails to decrypt and every entry reaches every watcher by gossip alone.
//
// In "crash" the holder's process dies (the lock frees itself a lease TTL later); in
// "lease-expired" the holder lives on but its lease runs out (Lost fires): it must stop
// driving, and it competes for the lock again.
func TestStoreDriverLost(t *testing.T) {
	for _, mode := range []string{"crash", "lease-expired"} {
		t.Run(mode, func(t *testing.T) {
			var gate phaseGate
			sc := newStoreCluster(t, 5, func(i int, c *Config) {
				c.RotationInterval = time.Second
				c.testAdvance = gate.hook
				c.testNoRepair = true // deliveries must come from gossip, not repair
			})
			sc.joinNetwork("net1")
			sc.waitSynced("net1")
			syncedBefore := sc.totalStats().EventsFromSync
			t.Cleanup(func() {
				if t.Failed() { // what the checks after a failed wait would have said
					t.Logf("counters of every node: %+v", sc.totalStats())
					sc.logLastErrors()
				}
			})
			first := sc.waitHolder("")
			var others []*Node
			for _, nd := range sc.nodes {
				if nd != first {
					others = append(others, nd)
				}
			}
			watchers := others
			if mode != "crash" {
				watchers = sc.nodes
			}
			tr := startTraffic(t, "net1", others[:2], watchers)

			gate.hold.Store(true)
			gate.budget.allow(1)
			var target KeyringStatus
			waitFor(t, 20*time.Second, func() error {
				for _, nd := range sc.nodes {
					s := nd.KeyringStatus()
					if s.Epoch != 1 || s.Phase != "install" || len(s.Keys) != 3 {
						return fmt.Errorf("%s: epoch %d phase %s keys %d", nd.Name(), s.Epoch, s.Phase, len(s.Keys))
					}
					target = s
				}
				return nil
			})
			stopped := time.Now()
			if mode == "crash" {
				sc.handles[first.Name()].crash()
				if err := first.Close(); err != nil {
					t.Fatal(err)
				}
			} else if !sc.handles[first.Name()].expire() {
				t.Fatalf("%s holds no lock", first.Name())
			}
			gate.hold.Store(false)
			next := sc.waitHolder(first.Name())
			live := sc.live()
			waitFor(t, 30*time.Second, func() error { return keysAgree(live, 1) })
			t.Logf("%s took the lock and finished the rotation %v after %s stopped", next.Name(), time.Since(stopped).Round(time.Millisecond), first.Name())
			if got := next.KeyringStatus(); got.TargetPrimary != target.TargetPrimary || !slices.Equal(got.Target, target.Target) {
				t.Errorf("finished %+v, want the stopped driver's rotation %+v", got, target)
			}
			gate.budget.allow(2)
			waitFor(t, 60*time.Second, func() error { return keysAgree(live, 3) })
			time.Sleep(200 * time.Millisecond) // traffic goes on after the last rotation
			total := tr.verify(sc.cluster, "net1")

			steps := sc.tr.check(t)
			if s := steps[1]; s[0] != first.Name() || s[1] != next.Name() || s[2] != next.Name() || s[3] != next.Name() {
				t.Errorf("epoch 1 driven by %v, want install by %s and the rest by %s", s, first.Name(), next.Name())
			}
			for _, e := range []uint64{2, 3} {
				if s := steps[e]; s[0] == "" || s[3] == "" || s[0] == first.Name() && mode == "crash" {
					t.Errorf("epoch %d driven by %v", e, s)
				}
			}
			s := sc.totalStats()
			s.EventsFromSync -= syncedBefore
			t.Logf("%d writes, decrypt failures %d, rejected %d, applied by gossip %d, repaired by sync %d",
				total, s.DecryptFailures, s.Rejected(), s.EventsApplied, s.EventsFromSync)
			if s.DecryptFailures != 0 || s.MalformedPackets != 0 || s.MalformedMessages != 0 {
				sc.logLastErrors()
				t.Errorf("rejections: %+v", s)
			}
			if s.EventsFromSync != 0 {
				t.Errorf("%d deliveries needed repair: gossip lost them", s.EventsFromSync)
			}
		})
	}
}

// TestStoreLeaveHandsOver: the lock holder leaves gracefully; it releases the lock, so another
// member drives the next rotation at once, without waiting for any lease to run out.
func TestStoreLeaveHandsOver(t *testing.T) {
	var gate phaseGate
	sc := newStoreCluster(t, 3, func(i int, c *Config) {
		c.RotationInterval = time.Second
		c.testAdvance = gate.hook
	})
	first := sc.waitHolder("")
	start := time.Now()
	if err := first.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	if h := sc.tr.current(); h == first.Name() {
		t.Fatalf("%s still holds the lock after Leave", h)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	next := sc.waitHolder(first.Name())
	t.Logf("%s took the lock %v after %s left", next.Name(), time.Since(start).Round(time.Millisecond), first.Name())
	gate.budget.allow(1)
	live := sc.live()
	waitFor(t, 30*time.Second, func() error { return keysAgree(live, 1) })
	if s := sc.tr.check(t)[1]; s != [4]string{next.Name(), next.Name(), next.Name(), next.Name()} {
		t.Errorf("epoch 1 driven by %v, want %s", s, next.Name())
	}
}

// TestStoreRestartWithoutKeyringFile: nodes without a KeyringFile. One is killed and misses two
// rotations (it shares no key with the cluster any more); restarted with nothing but the store
// (no file, no Config.Keys), it starts with the cluster's current keys and rejoins. So does a
// brand-new node. A node whose keyring file is two rotations old starts from the store's newer
// state and rejoins too.
func TestStoreRestartWithoutKeyringFile(t *testing.T) {
	var gate phaseGate
	gate.budget.allow(1)
	dir := t.TempDir()
	sc := newStoreCluster(t, 4, func(i int, c *Config) {
		c.RotationInterval = time.Second
		c.testAdvance = gate.hook
		if i == 3 {
			c.KeyringFile = filepath.Join(dir, "node-03.keyring")
		}
	})
	waitFor(t, 30*time.Second, func() error { return keysAgree(sc.nodes, 1) })
	victim, stale := sc.nodes[2], sc.nodes[3]
	vcfg, scfg := victim.cfg, stale.cfg
	for _, nd := range []*Node{victim, stale} {
		if err := nd.Close(); err != nil {
			t.Fatal(err)
		}
	}
	gate.budget.allow(2)
	waitFor(t, 30*time.Second, func() error { return keysAgree(sc.live(), 3) })
	want := sc.nodes[0].KeyringStatus()

	restart := func(cfg Config) *Node {
		t.Helper()
		cfg.Logger = testLogger()
		cfg.BindPort = 0
		cfg.Store = sc.handle(cfg.NodeName)
		nd := sc.start(cfg)
		if got := nd.KeyringStatus(); got.Epoch != want.Epoch || got.TargetPrimary != want.Primary || !slices.Equal(got.Target, want.Target) {
			t.Errorf("%s started at epoch %d target primary %s %v; the cluster is at epoch %d primary %s %v",
				cfg.NodeName, got.Epoch, got.TargetPrimary, got.Target, want.Epoch, want.Primary, want.Target)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := nd.Join(ctx, []string{sc.nodes[0].LocalAddr().String()}); err != nil {
			t.Fatalf("%s: join: %v", cfg.NodeName, err)
		}
		return nd
	}
	vcfg.Keys = nil // nothing but the store
	restart(vcfg)
	scfg.Keys = [][]byte{testKey(9)} // the file and the store win over Config.Keys
	restart(scfg)
	fresh := testConfig("node-04", nil)
	fresh.Keys = nil
	fresh.RotationInterval = time.Second
	fresh.testAdvance = gate.hook
	fresh.testTransport = sc.filter.wrap
	restart(fresh)
	live := sc.live()
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range live {
			if nd.NumAlive() != 5 {
				return fmt.Errorf("%s sees %d alive", nd.Name(), nd.NumAlive())
			}
		}
		return keysAgree(live, 3)
	})
	keys, rot, err := loadKeyringFile(scfg.KeyringFile)
	if err != nil {
		t.Fatal(err)
	}
	if rot.Epoch != want.Epoch || KeyID(keys[0]) != want.Primary {
		t.Errorf("stale node's keyring file at epoch %d primary %s after it caught up, want %d %s", rot.Epoch, KeyID(keys[0]), want.Epoch, want.Primary)
	}
	sc.tr.check(t)
}

// TestStoreSchedulePersisted: every node of a cluster restarts, without keyring files and with
// other Config.Keys; they come back with the keys and the time of the next rotation the store
// kept, and the driver elected afterwards keeps that schedule.
func TestStoreSchedulePersisted(t *testing.T) {
	sc := newStoreCluster(t, 3, func(i int, c *Config) {
		c.RotationInterval = time.Hour
	})
	sc.waitHolder("")
	want := sc.nodes[0].KeyringStatus()
	var cfgs []Config
	for _, nd := range sc.nodes {
		cfgs = append(cfgs, nd.cfg)
		if err := nd.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := sc.store.Get(t.Context(), DefaultStorePrefixBase+DefaultClusterLabel+storeKeyring)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	var restarted []*Node
	for i, cfg := range cfgs {
		cfg.BindPort = 0
		cfg.Logger = testLogger()
		cfg.Keys = [][]byte{testKey(byte(40 + i))}
		cfg.Store = sc.handle(cfg.NodeName)
		restarted = append(restarted, sc.start(cfg))
	}
	for _, nd := range restarted[1:] {
		if _, err := nd.Join(t.Context(), []string{restarted[0].LocalAddr().String()}); err != nil {
			t.Fatal(err)
		}
	}
	sc.waitAlive(3)
	sc.waitHolder("")
	for _, nd := range restarted {
		got := nd.KeyringStatus()
		if !got.NextRotation.Equal(want.NextRotation) {
			t.Errorf("%s: next rotation after restart %v, want %v", nd.Name(), got.NextRotation, want.NextRotation)
		}
		if got.Primary != want.Primary || got.Epoch != want.Epoch {
			t.Errorf("%s: primary %s epoch %d after restart, want %s %d", nd.Name(), got.Primary, got.Epoch, want.Primary, want.Epoch)
		}
	}
	st, _ := storeState(t, sc.store, DefaultStorePrefixBase+DefaultClusterLabel)
	if !time.Unix(0, st.Next).Equal(want.NextRotation) {
		t.Errorf("store schedules %v, want %v", time.Unix(0, st.Next), want.NextRotation)
	}
	if got, err := sc.store.Get(t.Context(), rec.Key); err != nil || got.Revision != rec.Revision {
		t.Errorf("record rewritten by the restart: revision %d, was %d (%v)", got.Revision, rec.Revision, err)
	}
	sc.tr.check(t)
}

// TestStoreUnavailable: the store goes away while a rotation is due: the driver cannot write
// its first step, so no member changes its keys; when the store comes back the rotation runs,
// driven by the lock holder, and the record catches up.
func TestStoreUnavailable(t *testing.T) {
	// Rotations may start while open is set. (A budget would not do: the driver's failed
	// attempts would use it up.)
	var open atomic.Bool
	sc := newStoreCluster(t, 3, func(i int, c *Config) {
		c.RotationInterval = time.Second
		c.testAdvance = func(from, to rotationPhase) bool { return from != phaseDone || open.Load() }
	})
	holder := sc.waitHolder("")
	for _, h := range sc.handles {
		h.down.Store(true)
	}
	open.Store(true)
	// Let the driver try (every 50 ms) for a second after the rotation is due.
	deadline := holder.KeyringStatus().NextRotation.Add(time.Second)
	if d := time.Now().Add(time.Second); d.After(deadline) {
		deadline = d
	}
	for time.Now().Before(deadline) {
		for _, nd := range sc.nodes {
			if s := nd.KeyringStatus(); s.Epoch != 0 {
				t.Fatalf("%s at epoch %d %s while the store is down", nd.Name(), s.Epoch, s.Phase)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, h := range sc.handles {
		h.down.Store(false)
	}
	waitFor(t, 30*time.Second, func() error {
		if s := holder.KeyringStatus(); s.Epoch == 0 {
			return errors.New("no rotation started yet")
		}
		return nil
	})
	open.Store(false)
	waitFor(t, 30*time.Second, func() error { return keysAgree(sc.nodes, 1) })
	if s := sc.tr.check(t)[1]; s != [4]string{holder.Name(), holder.Name(), holder.Name(), holder.Name()} {
		t.Errorf("epoch 1 driven by %v, want %s", s, holder.Name())
	}
	st, _ := storeState(t, sc.store, DefaultStorePrefixBase+DefaultClusterLabel)
	if ks := holder.KeyringStatus(); st.Epoch != ks.Epoch || st.Phase != phaseDone {
		t.Errorf("store at epoch %d %s, members at %d %s", st.Epoch, st.Phase, ks.Epoch, ks.Phase)
	}
}

// lockless is a store without the Locker capability.
type lockless struct{ kvstore.Store }

// TestStoreConfig: a store that cannot lock is refused; the default prefix and a custom one;
// a store with no record and no keys anywhere; a store that cannot be read, with and without
// a keyring file. The record never holds a key in clear.
func TestStoreConfig(t *testing.T) {
	s := openBolt(t)
	cfg := testConfig("a", testKey(1))
	cfg.Store = lockless{s}
	_, err := New(cfg)
	if !errors.Is(err, errclass.ErrInvalidParameter) || !errors.Is(err, errclass.ErrNotSupported) || !strings.Contains(err.Error(), "kvstore.Locker") {
		t.Errorf("store without Locker: %v", err)
	}

	cfg.Store = s
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	pairs, err := s.List(t.Context(), "cnm/v1/gossip/")
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 1 || pairs[0].Key != "cnm/v1/gossip/cnm/keyring" {
		t.Errorf("store holds %v, want cnm/v1/gossip/cnm/keyring", pairs)
	}
	if strings.Contains(string(pairs[0].Value), string(testKey(1))) {
		t.Error("the record holds a key in clear")
	}

	cfg = testConfig("b", nil)
	cfg.Keys = nil
	cfg.Store = s
	cfg.StorePrefix = "custom/gossip/"
	if _, err := New(cfg); !errors.Is(err, errclass.ErrInvalidParameter) || !strings.Contains(err.Error(), "Keys") {
		t.Errorf("no keys anywhere: %v", err)
	}
	cfg.Keys = [][]byte{testKey(2)}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), "custom/gossip/keyring"); err != nil {
		t.Errorf("custom prefix: %v", err)
	}

	dead := newNodeStore(s, "c", &lockTracker{})
	dead.crash()
	cfg = testConfig("c", testKey(1))
	cfg.Store = dead
	if _, err := New(cfg); !errors.Is(err, errclass.ErrUnavailable) || !errors.Is(err, kvstore.ErrClosed) {
		t.Errorf("unreadable store and no keyring file: %v", err)
	}
	cfg.KeyringFile = filepath.Join(t.TempDir(), "keyring")
	if err := saveKeyringFile(cfg.KeyringFile, [][]byte{testKey(5)}, initialRotation([][]byte{testKey(5)}, time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("unreadable store with a keyring file: %v", err)
	}
	if got := c.KeyringStatus().Primary; got != KeyID(testKey(5)) {
		t.Errorf("primary %s, want the file's %s", got, KeyID(testKey(5)))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

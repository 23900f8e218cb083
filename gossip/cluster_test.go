package gossip

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
)

// testLarge makes the cluster tests also run at N=30 (TestClusterConverges) and run the
// failure and partition tests at N=30 instead of 5 and 6. The default run keeps them small so
// the package's tests finish in well under a minute on 2 cores under -race.
var testLarge = flag.Bool("gossip.large", os.Getenv("CNM_GOSSIP_LARGE") == "1", "run the cluster tests with 30 nodes too (default on when CNM_GOSSIP_LARGE=1, as scripts/test.sh sets)")

func largeN(small int) int {
	if *testLarge {
		return 30
	}
	return small
}

// TestClusterConverges: N nodes join one seed; membership converges; an entry written at one
// node reaches every node (read and watched); one entry per node converges everywhere.
func TestClusterConverges(t *testing.T) {
	sizes := []int{3, 10}
	if *testLarge {
		sizes = append(sizes, 30)
	}
	for _, n := range sizes {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			start := time.Now()
			c := newCluster(t, n, nil)
			t.Logf("membership of %d nodes converged in %v", n, time.Since(start))
			c.joinNetwork("net1")
			var cols []*collector
			for _, nd := range c.nodes {
				ch, cancel := nd.Watch("net1", "endpoints")
				t.Cleanup(cancel)
				cols = append(cols, collect(ch))
			}

			start = time.Now()
			if err := c.nodes[0].CreateEntry("net1", "endpoints", "ep-0", []byte("10.0.0.2 02:42:0a:00:00:02")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, c.bound(10*time.Second), func() error {
				for i, nd := range c.nodes {
					e, err := nd.GetEntry("net1", "endpoints", "ep-0")
					if err != nil {
						return fmt.Errorf("%s: %w", nd.Name(), err)
					}
					if string(e.Value) != "10.0.0.2 02:42:0a:00:00:02" || e.Owner != "node-00" {
						return fmt.Errorf("%s: got %+v", nd.Name(), e)
					}
					if !cols[i].created()["ep-0"] {
						return fmt.Errorf("%s: no create event yet", nd.Name())
					}
				}
				return nil
			})
			t.Logf("entry reached all %d nodes in %v", n, time.Since(start))

			for i, nd := range c.nodes[1:] {
				if err := nd.CreateEntry("net1", "endpoints", fmt.Sprintf("ep-%d", i+1), []byte(nd.Name())); err != nil {
					t.Fatal(err)
				}
			}
			c.waitTablesAgree("net1", n, c.bound(10*time.Second))
			// (Label rejects are left out: see TestRotationUnderTraffic.)
			if s := c.totalStats(); s.DecryptFailures+s.MalformedPackets+s.MalformedMessages != 0 {
				c.logLastErrors()
				t.Errorf("rejections in a healthy cluster: %+v", s)
			}
		})
	}
}

// TestKilledNodeEntriesRemoved: a node closed without Leave is declared failed by every other
// node, and its entries disappear everywhere (watchers see deletes); the others' stay.
func TestKilledNodeEntriesRemoved(t *testing.T) {
	n := largeN(5)
	c := newCluster(t, n, nil)
	c.joinNetwork("net1")
	for _, nd := range c.nodes {
		if err := nd.CreateEntry("net1", "endpoints", nd.Name(), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	c.waitTablesAgree("net1", n, c.bound(10*time.Second))
	var cols []*collector
	for _, nd := range c.nodes[:n-1] {
		ch, cancel := nd.Watch("net1", "")
		t.Cleanup(cancel)
		cols = append(cols, collect(ch))
	}
	victim := c.nodes[n-1]
	killed := time.Now()
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", n-1, c.detectBound())
	t.Logf("entries of the killed node gone everywhere after %v", time.Since(killed))
	for i, nd := range c.live() {
		for _, e := range nd.Entries("net1", "") {
			if e.Owner == victim.Name() {
				t.Errorf("%s still holds %+v", nd.Name(), e)
			}
		}
		// Watch events are delivered asynchronously: the delete may trail the table.
		waitFor(t, c.bound(10*time.Second), func() error {
			for _, ev := range cols[i].snapshot() {
				if ev.Type == EntryDeleted && ev.Key == victim.Name() {
					return nil
				}
			}
			return fmt.Errorf("%s: no delete event for the killed node's entry", nd.Name())
		})
		st := stateOf(nd, victim.Name())
		if st != StateFailed && st != 0 {
			t.Errorf("%s sees %s as %v", nd.Name(), victim.Name(), st)
		}
	}
}

func stateOf(nd *Node, name string) MemberState {
	for _, m := range nd.Members() {
		if m.Name == name {
			return m.State
		}
	}
	return 0
}

// TestLeaveRemovesEntries: a node that leaves gracefully has its entries removed at once (well
// before failure detection would), and its members' events say leave.
func TestLeaveRemovesEntries(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.joinNetwork("net1")
	for _, nd := range c.nodes {
		if err := nd.CreateEntry("net1", "t", nd.Name(), nil); err != nil {
			t.Fatal(err)
		}
	}
	c.waitTablesAgree("net1", 3, 10*time.Second)
	mev, cancel := c.nodes[0].WatchMembers()
	defer cancel()
	leaver := c.nodes[2]
	start := time.Now()
	if err := leaver.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := leaver.Close(); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", 2, 5*time.Second)
	t.Logf("entries of the leaving node gone everywhere after %v", time.Since(start))
	// The leave is announced before memberlist's dead message; should the dead message still
	// arrive first (a fail event), the announcement turns it into a leave.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-mev:
			if ev.Member.Name == leaver.Name() && ev.Type == MemberLeave {
				return
			}
		case <-timeout:
			t.Fatal("no leave event")
		}
	}
}

// TestPartitionHeals: two halves cut apart by the transport declare each other failed, keep
// writing on their side, and after the cut heals the membership and the tables agree again.
func TestPartitionHeals(t *testing.T) {
	n := largeN(6)
	c := newCluster(t, n, nil)
	c.joinNetwork("net1")
	for _, nd := range c.nodes {
		if err := nd.CreateEntry("net1", "t", nd.Name(), []byte("before")); err != nil {
			t.Fatal(err)
		}
	}
	c.waitTablesAgree("net1", n, c.bound(10*time.Second))

	left, right := c.nodes[:n/2], c.nodes[n/2:]
	cut := time.Now()
	c.filter.partition(left, right)
	waitFor(t, c.detectBound(), func() error {
		for _, nd := range c.nodes {
			if got := nd.NumAlive(); got != n/2 {
				return fmt.Errorf("%s sees %d alive, want %d", nd.Name(), got, n/2)
			}
			if got := len(nd.Entries("net1", "")); got != n/2 {
				return fmt.Errorf("%s shows %d entries, want %d (the other side's hidden)", nd.Name(), got, n/2)
			}
		}
		return nil
	})
	t.Logf("each side declared the other failed %v after the cut", time.Since(cut).Round(time.Millisecond))
	// Writes on both sides during the partition: updates, a delete, new entries.
	for _, nd := range c.nodes {
		if err := nd.UpdateEntry("net1", "t", nd.Name(), []byte("during")); err != nil {
			t.Fatal(err)
		}
		if err := nd.CreateEntry("net1", "t", nd.Name()+"-new", []byte("during")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.nodes[0].DeleteEntry("net1", "t", c.nodes[0].Name()); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[n-1].DeleteEntry("net1", "t", c.nodes[n-1].Name()); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	c.filter.heal()
	// Healing takes a few reconnect intervals; the bound allows for a member suspected again
	// meanwhile, which clears only after a suspicion timeout.
	c.waitAliveWithin(n, c.detectBound())
	c.waitTablesAgree("net1", 2*n-2, c.bound(20*time.Second))
	t.Logf("membership and tables agree %v after the partition healed", time.Since(healed))
	for _, e := range c.nodes[0].Entries("net1", "") {
		if string(e.Value) != "during" {
			t.Errorf("entry %s = %q, want the write made during the partition", e.Key, e.Value)
		}
	}
}

// TestAntiEntropyRepairsLostGossip: a node whose table gossip is all lost (UDP user messages
// dropped at the senders) still converges, through the periodic bulk sync.
func TestAntiEntropyRepairsLostGossip(t *testing.T) {
	c := newCluster(t, 4, nil)
	c.joinNetwork("net1")
	deaf := c.nodes[3]
	// deaf stops taking part in net1 for a moment (the others still count it in), so the
	// gossip of these writes reaches it and is ignored until its retransmissions run out.
	deaf.mu.Lock()
	nw := deaf.networks["net1"]
	delete(deaf.networks, "net1")
	deaf.mu.Unlock()
	for _, nd := range c.nodes[:3] {
		if err := nd.CreateEntry("net1", "t", nd.Name(), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	deaf.mu.Lock()
	deaf.networks["net1"] = nw
	deaf.mu.Unlock()
	if got := len(deaf.Entries("net1", "")); got != 0 {
		t.Fatalf("deaf node got %d entries by gossip", got)
	}
	before := deaf.Stats().EventsFromSync
	c.waitTablesAgree("net1", 3, 10*time.Second)
	if got := deaf.Stats().EventsFromSync - before; got < 3 {
		t.Errorf("deaf node learnt %d events from bulk sync, want >= 3", got)
	}
}

// TestNetworkScoping: a node stores only the networks it joined; leaving a network removes the
// node's entries from the others and its own view of that network.
func TestNetworkScoping(t *testing.T) {
	c := newCluster(t, 3, nil)
	a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
	for _, nd := range []*Node{a, b} {
		if err := nd.JoinNetwork("blue"); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.JoinNetwork("red"); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateEntry("blue", "t", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateEntry("blue", "t", "k2", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if len(a.Entries("blue", "")) != 2 || len(b.Entries("blue", "")) != 2 {
			return errors.New("blue not converged")
		}
		if got := a.NetworkNodes("blue"); len(got) != 2 {
			return fmt.Errorf("blue nodes %v", got)
		}
		return nil
	})
	if _, err := x.GetEntry("blue", "t", "k"); !errors.Is(err, ErrNetworkNotJoined) || !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("GetEntry on a network not joined: %v", err)
	}
	if err := x.CreateEntry("blue", "t", "k3", nil); !errors.Is(err, ErrNetworkNotJoined) {
		t.Errorf("CreateEntry on a network not joined: %v", err)
	}
	x.mu.Lock()
	_, stored := x.networks["blue"]
	x.mu.Unlock()
	if stored {
		t.Error("node stores a network it did not join")
	}
	if err := b.LeaveNetwork("blue"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if got := a.Entries("blue", ""); len(got) != 1 || got[0].Owner != a.Name() {
			return fmt.Errorf("a holds %v after b left blue", got)
		}
		return nil
	})
	if b.Entries("blue", "") != nil {
		t.Error("b still holds blue after leaving it")
	}
	if err := b.LeaveNetwork("blue"); err != nil {
		t.Errorf("leaving twice: %v", err)
	}
}

// TestEntryOwnershipAndTombstones: create/update/delete errors, last writer wins for two
// owners writing one key at once, and tombstones reaped after ReapInterval.
func TestEntryOwnershipAndTombstones(t *testing.T) {
	c := newCluster(t, 3, func(i int, cfg *Config) {
		cfg.ReapInterval = 1500 * time.Millisecond
		cfg.ReconnectInterval = 100 * time.Millisecond
	})
	c.joinNetwork("net1")
	a, b := c.nodes[0], c.nodes[1]
	if err := a.CreateEntry("net1", "t", "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateEntry("net1", "t", "k", []byte("1")); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Errorf("create twice: %v", err)
	}
	if err := a.UpdateEntry("net1", "t", "missing", nil); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("update missing: %v", err)
	}
	if err := a.CreateEntry("net1", "t", "", nil); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("empty key: %v", err)
	}
	if err := a.CreateEntry("net1", "t", "big", make([]byte, 2000)); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("oversized value: %v", err)
	}
	waitFor(t, 10*time.Second, func() error {
		_, err := b.GetEntry("net1", "t", "k")
		return err
	})
	if err := b.UpdateEntry("net1", "t", "k", []byte("2")); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("update of another node's entry: %v", err)
	}
	if err := b.DeleteEntry("net1", "t", "k"); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("delete of another node's entry: %v", err)
	}
	if err := a.UpdateEntry("net1", "t", "k", []byte("2")); err != nil {
		t.Fatal(err)
	}

	// Two owners create the same key at once: every node ends with the same winner.
	for _, nd := range c.nodes {
		go func() { _ = nd.CreateEntry("net1", "t", "race", []byte(nd.Name())) }()
	}
	c.waitTablesAgree("net1", 2, 10*time.Second)
	race, err := a.GetEntry("net1", "t", "race")
	if err != nil || string(race.Value) != race.Owner {
		t.Errorf("race entry %+v, %v", race, err)
	}

	if err := a.DeleteEntry("net1", "t", "k"); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", 1, 10*time.Second)
	tombstones := func() int {
		count := 0
		for _, nd := range c.nodes {
			nd.mu.Lock()
			for _, e := range nd.networks["net1"].entries {
				if e.deleted {
					count++
				}
			}
			nd.mu.Unlock()
		}
		return count
	}
	if got := tombstones(); got != len(c.nodes) {
		t.Errorf("%d tombstones right after the delete, want %d", got, len(c.nodes))
	}
	waitFor(t, 10*time.Second, func() error {
		if got := tombstones(); got != 0 {
			return fmt.Errorf("%d tombstones left", got)
		}
		return nil
	})
	// Re-creating a reaped key works and is not shadowed by the old delete.
	if err := a.CreateEntry("net1", "t", "k", []byte("3")); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", 2, 10*time.Second)
}

// TestCloseStopsEverything: closing the nodes of a cluster, with watchers and a join in
// flight, leaves no goroutine behind (memberlist's own exit shortly after Shutdown).
func TestCloseStopsEverything(t *testing.T) {
	before := goleak.IgnoreCurrent()
	c := newCluster(t, 3, nil)
	c.joinNetwork("net1")
	for _, nd := range c.nodes {
		_, cancel := nd.Watch("", "")
		defer cancel()
		nd.WatchMembers()
		if err := nd.CreateEntry("net1", "t", nd.Name(), nil); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _, _ = c.nodes[2].Join(context.Background(), []string{"127.0.0.1:1"}) }()
	for _, nd := range c.nodes {
		if err := nd.Close(); err != nil {
			t.Fatal(err)
		}
		if err := nd.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
	if err := waitNoLeak(15*time.Second, before); err != nil {
		t.Error(err)
	}
}

// TestRestartedNodeEntries: a node killed and restarted under the same name is a new
// incarnation: what its previous incarnation wrote disappears everywhere (even where the
// failure went unnoticed), and what it writes now wins, although its clock restarted.
func TestRestartedNodeEntries(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.joinNetwork("net1")
	old := c.nodes[2]
	for _, k := range []string{"a", "b"} {
		if err := old.CreateEntry("net1", "t", k, []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	c.waitTablesAgree("net1", 2, 10*time.Second)
	cfg := old.cfg
	cfg.BindPort = int(old.LocalAddr().Port())
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	restarted := c.start(cfg) // at once: the others have not noticed the failure yet
	if err := restarted.JoinNetwork("net1"); err != nil {
		t.Fatal(err)
	}
	if err := restarted.CreateEntry("net1", "t", "a", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := restarted.Join(t.Context(), []string{c.nodes[0].LocalAddr().String()}); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", 1, 20*time.Second)
	for _, nd := range c.live() {
		e, err := nd.GetEntry("net1", "t", "a")
		if err != nil || string(e.Value) != "new" {
			t.Errorf("%s: %+v, %v", nd.Name(), e, err)
		}
	}
}

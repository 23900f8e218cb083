package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// side is a fake cluster.Networks: it records the adoptions and forgets, and holds the networks
// a test gives it.
type side struct {
	mu      sync.Mutex
	adopted []string
	forgot  []string
	nets    map[string]*fakeNet
}

func (s *side) Adopt(ctx context.Context, rec netobj.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.adopted = append(s.adopted, rec.Name)
}

func (s *side) Forget(ctx context.Context, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgot = append(s.forgot, id)
}

func (s *side) Known() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id := range s.nets {
		ids = append(ids, id)
	}
	return ids
}

func (s *side) Network(id string) cluster.Network {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nets[id]; ok {
		return n
	}
	return nil
}

func (s *side) Global() []cluster.Network {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.Network
	for _, n := range s.nets {
		out = append(out, n)
	}
	return out
}

func (s *side) Allocators() map[string]drivers.NetworkAllocator { return nil }

func (s *side) calls() (adopted, forgot []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.adopted), slices.Clone(s.forgot)
}

// fakeNet is a global network known on a host; it records the endpoints it reclaimed.
type fakeNet struct {
	id        string
	store     kvstore.Store
	mu        sync.Mutex
	reclaimed []string
}

func (n *fakeNet) ID() string       { return n.id }
func (n *fakeNet) Name() string     { return "net-" + n.id }
func (n *fakeNet) Eps() []*epobj.Ep { return nil }
func (n *fakeNet) Record() netobj.Record {
	return netobj.Record{ID: n.id, Name: n.Name()}
}
func (n *fakeNet) Reassert(context.Context, *epobj.Ep) (bool, error) {
	return false, nil
}

func (n *fakeNet) ReleaseReclaimed(ctx context.Context, rec epobj.Record) error {
	n.mu.Lock()
	n.reclaimed = append(n.reclaimed, rec.Name)
	n.mu.Unlock()
	return nil
}

// host is one host of a test cluster: its local store and its side.
type host struct {
	name  string
	local kvstore.Store
	side  *side
	evs   chan events.Event
}

func newHost(t *testing.T, name string) *host {
	t.Helper()
	local, err := boltdb.Open(filepath.Join(t.TempDir(), "local.db"), boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	return &host{name: name, local: local, side: &side{nets: map[string]*fakeNet{}}, evs: make(chan events.Event, 100)}
}

func (h *host) open(t *testing.T, global kvstore.Store) (*cluster.Cluster, error) {
	t.Helper()
	c, err := cluster.New(t.Context(), cluster.Config{
		Store: global, Local: h.local, Host: h.name, TTL: time.Second, Timeout: 2 * time.Second, Networks: h.side,
		Publish: func(ev events.Event) {
			select {
			case h.evs <- ev:
			default:
			}
		},
	})
	if err == nil {
		t.Cleanup(c.Stop)
	}
	return c, err
}

func openGlobal(t *testing.T) kvstore.Store {
	t.Helper()
	s, err := boltdb.Open(filepath.Join(t.TempDir(), "global.db"), boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRegistry: hosts register under unique names; a second host with a taken name is refused,
// the same host restarting (same local store) takes its entry back.
func TestRegistry(t *testing.T) {
	gs := openGlobal(t)
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	ca, err := a.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.open(t, gs); err != nil {
		t.Fatal(err)
	}
	hosts, err := ca.Hosts(t.Context())
	if err != nil || !slices.Equal(hosts, []string{"host-a", "host-b"}) {
		t.Fatalf("hosts = %v, %v", hosts, err)
	}
	impostor := newHost(t, "host-a")
	if _, err := impostor.open(t, gs); !errors.Is(err, errclass.ErrAlreadyExists) || !strings.Contains(err.Error(), "unique Config.Hostname") {
		t.Fatalf("a second host named host-a = %v, want ErrAlreadyExists", err)
	}
	ca.Stop()
	if _, err := a.open(t, gs); err != nil {
		t.Fatalf("host-a restarting before its lease ran out: %v", err)
	}
	if _, err := cluster.New(t.Context(), cluster.Config{Store: gs, Local: a.local, Host: "bad name", Networks: a.side}); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Fatalf("a bad host name = %v, want ErrInvalidParameter", err)
	}
}

// TestRecords: global network records are create-only with cluster-unique names, and deletion
// is fenced against endpoints on any host.
func TestRecords(t *testing.T) {
	ctx := t.Context()
	gs := openGlobal(t)
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	ca, err := a.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	rec := netobj.Record{ID: netobj.NewID(), Name: "g1", Scope: drivers.GlobalScope}
	raw, _ := json.Marshal(rec)
	if err := ca.CreateNetwork(ctx, rec, raw); err != nil {
		t.Fatal(err)
	}
	dup := netobj.Record{ID: netobj.NewID(), Name: "g1", Scope: drivers.GlobalScope}
	if err := cb.CreateNetwork(ctx, dup, raw); !errors.Is(err, errclass.ErrAlreadyExists) || !strings.Contains(err.Error(), rec.ID[:12]) {
		t.Fatalf("the same name from host-b = %v, want ErrAlreadyExists naming %s", err, rec.ID[:12])
	}
	// host-b has an endpoint: host-a's delete is refused, naming it, and leaves no fence.
	ep := epobj.Record{ID: netobj.NewID(), Name: "web", NetworkID: rec.ID, Host: "host-b"}
	eb, _ := json.Marshal(ep)
	if _, err := gs.Put(ctx, epobj.Key(rec.ID, ep.ID), eb); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.BeginDelete(ctx, rec); !errors.Is(err, errclass.ErrConflict) || !strings.Contains(err.Error(), "1 on host-b") {
		t.Fatalf("delete with host-b's endpoint = %v, want ErrConflict naming host-b", err)
	}
	// createEp stores a new endpoint record of host-b through the fenced create, and
	// reports whether the record is in the store afterwards.
	createEp := func(c *cluster.Cluster) (bool, error) {
		r := epobj.Record{ID: netobj.NewID(), Name: "db", NetworkID: rec.ID, Host: "host-b"}
		b, _ := json.Marshal(r)
		key := epobj.Key(rec.ID, r.ID)
		rev, err := c.CreateEndpoint(ctx, rec, key, b)
		kv, gerr := gs.Get(ctx, key)
		if err == nil && (gerr != nil || kv.Revision != rev) {
			t.Errorf("CreateEndpoint returned revision %d; the store has %v (%v)", rev, kv.Revision, gerr)
		}
		if gerr == nil {
			if derr := gs.Delete(ctx, key); derr != nil {
				t.Fatal(derr)
			}
		}
		return gerr == nil, err
	}
	if stored, err := createEp(cb); err != nil || !stored {
		t.Fatalf("endpoint create after a refused delete = %v (stored %v), want nil (no fence left)", err, stored)
	}
	if _, err := cb.CreateEndpoint(ctx, rec, epobj.Key(rec.ID, ep.ID), eb); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Fatalf("endpoint create over an existing record = %v, want ErrAlreadyExists", err)
	}
	if err := gs.Delete(ctx, epobj.Key(rec.ID, ep.ID)); err != nil {
		t.Fatal(err)
	}
	finish, err := ca.BeginDelete(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	// While the delete runs, an endpoint stored on host-b is fenced out.
	if stored, err := createEp(cb); !errors.Is(err, errclass.ErrConflict) || stored {
		t.Fatalf("endpoint create during a delete = %v (stored %v), want ErrConflict and no record", err, stored)
	}
	if _, err := cb.BeginDelete(ctx, rec); !errors.Is(err, errclass.ErrConflict) {
		t.Fatalf("a second delete during the first = %v, want ErrConflict", err)
	}
	if err := finish(ctx, false); err != nil {
		t.Fatal(err)
	}
	if stored, err := createEp(cb); err != nil || !stored {
		t.Fatalf("endpoint create after a given-up delete = %v (stored %v)", err, stored)
	}
	finish, err = cb.BeginDelete(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := finish(ctx, true); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{netobj.KeyPrefix, cluster.NameKeyPrefix, cluster.DeletingKeyPrefix} {
		if kvs, err := gs.List(ctx, prefix); err != nil || len(kvs) != 0 {
			t.Fatalf("%s after the delete: %v (%v)", prefix, kvs, err)
		}
	}
	if stored, err := createEp(ca); !errors.Is(err, errclass.ErrConflict) || stored {
		t.Fatalf("endpoint create on a deleted network = %v (stored %v), want ErrConflict and no record", err, stored)
	}
}

// TestWatch: a host adopts the networks others create, not those it creates itself, forgets
// those deleted, publishes hosts joining and leaving, and reclaims a departed host's endpoints.
func TestWatch(t *testing.T) {
	ctx := t.Context()
	gs := openGlobal(t)
	a, b := newHost(t, "host-a"), newHost(t, "host-b")
	ca, err := a.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	ca.Start()
	cb, err := b.open(t, gs)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "host-a publishes host-b's join", func() bool {
		for {
			select {
			case ev := <-a.evs:
				if ev.Kind == events.HostJoined && ev.Host == "host-b" {
					return true
				}
			default:
				return false
			}
		}
	})
	mine := netobj.Record{ID: netobj.NewID(), Name: "mine", Scope: drivers.GlobalScope}
	ca.Creating(mine.ID)
	raw, _ := json.Marshal(mine)
	if err := ca.CreateNetwork(ctx, mine, raw); err != nil {
		t.Fatal(err)
	}
	theirs := netobj.Record{ID: netobj.NewID(), Name: "theirs", Scope: drivers.GlobalScope}
	raw, _ = json.Marshal(theirs)
	if err := cb.CreateNetwork(ctx, theirs, raw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "host-a adopts theirs", func() bool {
		adopted, _ := a.side.calls()
		return slices.Contains(adopted, "theirs")
	})
	ca.Created(mine.ID)
	if adopted, _ := a.side.calls(); slices.Contains(adopted, "mine") {
		t.Fatalf("host-a adopted its own network while creating it: %v", adopted)
	}
	// host-b's endpoint on theirs, then host-b leaves: host-a reclaims it.
	n := &fakeNet{id: theirs.ID, store: gs}
	a.side.mu.Lock()
	a.side.nets[theirs.ID] = n
	a.side.mu.Unlock()
	ep := epobj.Record{ID: netobj.NewID(), Name: "web", NetworkID: theirs.ID, Host: "host-b"}
	eb, _ := json.Marshal(ep)
	if _, err := gs.Put(ctx, epobj.Key(theirs.ID, ep.ID), eb); err != nil {
		t.Fatal(err)
	}
	if err := cb.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-a reclaims host-b's endpoint", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return slices.Equal(n.reclaimed, []string{"web"})
	})
	if got := ca.Reclaimed(); len(got) == 0 || !strings.Contains(got[0].Object, "web") {
		t.Fatalf("reclaimed = %v", got)
	}
	// A network deleted in the store is forgotten.
	if err := gs.Delete(ctx, netobj.Key(theirs.ID)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "host-a forgets theirs", func() bool {
		_, forgot := a.side.calls()
		return slices.Contains(forgot, theirs.ID)
	})
}

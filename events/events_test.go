package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"pgregory.net/rapid"
)

// TestMain fails the run if any test leaves a goroutine behind (STYLE.md rule 24).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fataler is what recv needs of a *testing.T or a *rapid.T.
type fataler interface {
	Helper()
	Fatal(args ...any)
}

// recv returns the next event on ch, failing the test if none comes within 5s or ch is closed.
func recv(t fataler, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("channel closed, want an event")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return Event{}
}

// waitClosed drains ch until it is closed, failing the test if that takes more than 5s.
func waitClosed(t testing.TB, ch <-chan Event) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("channel not closed within 5s")
		}
	}
}

// waitQueued waits until every subscriber of b has exactly n events queued: its goroutine has
// taken the ones before into its hand.
func waitQueued(t testing.TB, b *Bus, n int) {
	t.Helper()
	for range 5000 {
		b.mu.Lock()
		ok := true
		for _, s := range b.subs {
			ok = ok && s.n == n
		}
		b.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("subscribers do not have %d events queued after 5s", n)
}

// ev returns a NetworkCreated event for network i.
func ev(i int) Event { return Event{Kind: NetworkCreated, Network: fmt.Sprint("n", i)} }

func TestKindString(t *testing.T) {
	seen := map[string]Kind{}
	for k := NetworkCreated; k <= Dropped; k++ {
		s := k.String()
		if s == "" || strings.HasPrefix(s, "kind(") {
			t.Errorf("Kind(%d).String() = %q, want a name", k, s)
		}
		if other, dup := seen[s]; dup {
			t.Errorf("kinds %d and %d are both %q", other, k, s)
		}
		seen[s] = k
	}
	if got := Kind(0).String(); got != "kind(0)" {
		t.Errorf("Kind(0).String() = %q, want kind(0)", got)
	}
	if got := (Dropped + 1).String(); got != fmt.Sprintf("kind(%d)", Dropped+1) {
		t.Errorf("Kind(Dropped+1).String() = %q", got)
	}
}

// TestOrder publishes from many goroutines at once: every subscriber receives every event,
// numbered 1, 2, 3, ... in the order received, and each publisher's events in the order it
// published them. A slow subscriber with a small queue loses some but still receives a
// strictly increasing sequence whose gaps its Dropped events account for exactly.
func TestOrder(t *testing.T) {
	const publishers, each = 8, 2000
	var b Bus
	defer b.Close()
	ctx := t.Context()
	fast := []<-chan Event{b.Subscribe(ctx, publishers*each), b.Subscribe(ctx, publishers*each)}
	slow := b.Subscribe(ctx, 8)

	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				b.Publish(Event{Kind: KeyRotated, Host: fmt.Sprint("p", p), Key: KeyRotation{Epoch: uint64(i)}})
			}
		})
	}
	results := make(chan error, len(fast)+1)
	for _, ch := range fast {
		go func() {
			next := map[string]uint64{}
			for seq := uint64(1); seq <= publishers*each; seq++ {
				e := <-ch
				switch {
				case e.Kind != KeyRotated:
					results <- fmt.Errorf("event %d is %v, want key.rotated (nothing dropped)", seq, e.Kind)
					return
				case e.Seq != seq:
					results <- fmt.Errorf("event %d has Seq %d", seq, e.Seq)
					return
				case e.Key.Epoch != next[e.Host]:
					results <- fmt.Errorf("publisher %s: event %d after %d", e.Host, e.Key.Epoch, next[e.Host])
					return
				case e.Time.IsZero():
					results <- fmt.Errorf("event %d has no time", seq)
					return
				}
				next[e.Host]++
			}
			results <- nil
		}()
	}
	go func() {
		var covered uint64 // every seq up to here was received or counted in a Dropped
		var drops int
		for covered < publishers*each {
			e := <-slow
			switch {
			case e.Kind == Dropped && (e.Dropped == 0 || e.Seq != covered+e.Dropped):
				results <- fmt.Errorf("slow: Dropped{Seq %d, Dropped %d} after seq %d", e.Seq, e.Dropped, covered)
				return
			case e.Kind != Dropped && e.Seq != covered+1:
				results <- fmt.Errorf("slow: Seq %d after %d", e.Seq, covered)
				return
			}
			if e.Kind == Dropped {
				drops++
				covered = e.Seq
				continue
			}
			covered++
			if covered%64 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		t.Logf("slow subscriber: %d Dropped events", drops)
		results <- nil
	}()
	wg.Wait()
	for range len(fast) + 1 {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
}

// TestDroppedExact fills a subscriber's queue while it does not read: it receives the event
// it held, the queued ones, one Dropped event with the exact count, then newer events.
func TestDroppedExact(t *testing.T) {
	var b Bus
	defer b.Close()
	ch := b.Subscribe(t.Context(), 4)
	b.Publish(ev(1))
	waitQueued(t, &b, 0) // event 1 is in the goroutine's hand
	for i := 2; i <= 10; i++ {
		b.Publish(ev(i))
	}
	for seq := uint64(1); seq <= 5; seq++ {
		if e := recv(t, ch); e.Kind != NetworkCreated || e.Seq != seq || e.Network != fmt.Sprint("n", seq) {
			t.Fatalf("event %d = %+v", seq, e)
		}
	}
	if e := recv(t, ch); e.Kind != Dropped || e.Dropped != 5 || e.Seq != 10 {
		t.Fatalf("after the queued events: %v Seq %d Dropped %d, want dropped Seq 10 Dropped 5", e.Kind, e.Seq, e.Dropped)
	}
	b.Publish(ev(11))
	b.Publish(ev(12))
	for seq := uint64(11); seq <= 12; seq++ {
		if e := recv(t, ch); e.Kind != NetworkCreated || e.Seq != seq {
			t.Fatalf("after the loss: %v Seq %d, want network.created Seq %d", e.Kind, e.Seq, seq)
		}
	}
}

// TestDroppedBetween checks a loss reported between queued events, and a second one after
// them: each Dropped comes exactly where the events went missing.
func TestDroppedBetween(t *testing.T) {
	var b Bus
	defer b.Close()
	ch := b.Subscribe(t.Context(), 2)
	b.Publish(ev(1))
	waitQueued(t, &b, 0) // 1 in hand
	for i := 2; i <= 5; i++ {
		b.Publish(ev(i)) // 2, 3 queued; 4, 5 lost
	}
	if e := recv(t, ch); e.Seq != 1 {
		t.Fatalf("first event Seq %d, want 1", e.Seq)
	}
	waitQueued(t, &b, 1) // 2 in hand, 3 queued
	b.Publish(ev(6))     // queued after the loss of 4 and 5
	b.Publish(ev(7))     // lost
	type got struct {
		kind    Kind
		seq     uint64
		dropped uint64
	}
	want := []got{{NetworkCreated, 2, 0}, {NetworkCreated, 3, 0}, {Dropped, 5, 2}, {NetworkCreated, 6, 0}, {Dropped, 7, 1}}
	for i, w := range want {
		e := recv(t, ch)
		if g := (got{e.Kind, e.Seq, e.Dropped}); g != w {
			t.Fatalf("event %d = %+v, want %+v", i, g, w)
		}
	}
	b.Publish(ev(8))
	if e := recv(t, ch); e.Seq != 8 || e.Kind != NetworkCreated {
		t.Fatalf("after the losses: %v Seq %d, want Seq 8", e.Kind, e.Seq)
	}
}

// TestPublishNeverBlocks publishes many events while one subscriber reads nothing: Publish
// returns quickly every time, and the stuck subscriber is told exactly how many it lost.
func TestPublishNeverBlocks(t *testing.T) {
	const n = 100_000
	var b Bus
	defer b.Close()
	stuck := b.Subscribe(t.Context(), 1)
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		t0 := time.Now()
		b.Publish(ev(i))
		slowest = max(slowest, time.Since(t0))
	}
	took := time.Since(start)
	t.Logf("%d publishes in %v, slowest %v", n, took, slowest)
	if took > 10*time.Second || slowest > time.Second {
		t.Fatalf("%d publishes to a stuck subscriber took %v (slowest %v)", n, took, slowest)
	}
	var got, lost uint64
	for got+lost < n {
		e := recv(t, stuck)
		if e.Kind == Dropped {
			lost += e.Dropped
		} else {
			got++
		}
	}
	if got > 2 || got+lost != n {
		t.Fatalf("stuck subscriber with a queue of 1: %d received and %d lost, want at most 2 and %d in all", got, lost, n)
	}
}

// TestContextEnds checks that a subscriber's channel is closed when its context ends, even
// with events waiting, and that the others keep receiving.
func TestContextEnds(t *testing.T) {
	var b Bus
	defer b.Close()
	ctx, cancel := context.WithCancel(t.Context())
	ch := b.Subscribe(ctx, 0)
	other := b.Subscribe(t.Context(), 0)
	b.Publish(ev(1))
	b.Publish(ev(2))
	cancel()
	waitClosed(t, ch)
	for range 100 {
		if b.nsubs.Load() == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := b.nsubs.Load(); n != 1 {
		t.Fatalf("%d subscribers after one's context ended, want 1", n)
	}
	b.Publish(ev(3))
	for seq := uint64(1); seq <= 3; seq++ {
		if e := recv(t, other); e.Seq != seq {
			t.Fatalf("other subscriber: Seq %d, want %d", e.Seq, seq)
		}
	}
	if ch := b.Subscribe(ctx, 0); !closedNow(ch) {
		t.Fatal("Subscribe with an ended context returned an open channel")
	}
}

// closedNow reports whether ch is closed (waiting at most a second for it).
func closedNow(ch <-chan Event) bool {
	select {
	case _, ok := <-ch:
		return !ok
	case <-time.After(time.Second):
		return false
	}
}

// TestClose checks that Close closes every channel, a stuck one included, waits for the
// goroutines, and that the Bus is inert afterwards.
func TestClose(t *testing.T) {
	var b Bus
	stuck := b.Subscribe(t.Context(), 1)
	idle := b.Subscribe(t.Context(), 0)
	reading := b.Subscribe(t.Context(), 0)
	for i := range 10 {
		b.Publish(ev(i))
	}
	recv(t, reading)
	done := make(chan struct{})
	go func() {
		b.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s with a stuck subscriber")
	}
	for _, ch := range []<-chan Event{stuck, idle, reading} {
		waitClosed(t, ch)
	}
	if ch := b.Subscribe(t.Context(), 0); !closedNow(ch) {
		t.Fatal("Subscribe after Close returned an open channel")
	}
	b.Publish(ev(11)) // no panic, no effect
	b.Close()         // idempotent
	var nilBus *Bus
	nilBus.Publish(ev(1))
}

// TestPublishAllocs checks the cost of Publish: nothing with no subscriber, and no allocation
// with one once its queue has grown.
func TestPublishAllocs(t *testing.T) {
	var b Bus
	defer b.Close()
	e := ev(1)
	if n := testing.AllocsPerRun(1000, func() { b.Publish(e) }); n != 0 {
		t.Errorf("Publish with no subscriber: %v allocations, want 0", n)
	}
	ch := b.Subscribe(t.Context(), 64)
	for range 64 {
		b.Publish(e) // grow the queue to its bound
	}
	if n := testing.AllocsPerRun(1000, func() { b.Publish(e) }); n != 0 {
		t.Errorf("Publish with one subscriber: %v allocations, want 0", n)
	}
	_ = ch
}

// TestDeliveryProperty runs random interleavings of publishes and receives against one
// subscriber and checks what it receives: the events in sequence, every gap reported by one
// Dropped event with its exact size (never two in a row), and no event lost that was published
// while at most buffer-1 events were unreceived.
func TestDeliveryProperty(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		buffer := rapid.IntRange(1, 8).Draw(rt, "buffer")
		var b Bus
		ctx, cancel := context.WithCancel(context.Background())
		defer func() {
			cancel()
			b.Close()
		}()
		ch := b.Subscribe(ctx, buffer)
		var (
			published, covered uint64
			safe               = map[uint64]bool{} // published with room: must not be lost
			lastDropped        bool
		)
		receive := func() {
			e := recv(rt, ch)
			if e.Kind == Dropped {
				if lastDropped || e.Dropped == 0 || e.Seq != covered+e.Dropped {
					rt.Fatalf("Dropped{Seq %d, Dropped %d} after seq %d (after a Dropped: %v)", e.Seq, e.Dropped, covered, lastDropped)
				}
				for s := covered + 1; s <= e.Seq; s++ {
					if safe[s] {
						rt.Fatalf("event %d lost though published with %d unreceived (buffer %d)", s, s-1-covered, buffer)
					}
				}
				covered, lastDropped = e.Seq, true
				return
			}
			if e.Seq != covered+1 {
				rt.Fatalf("Seq %d after %d", e.Seq, covered)
			}
			covered, lastDropped = e.Seq, false
		}
		steps := rapid.IntRange(1, 60).Draw(rt, "steps")
		for range steps {
			if rapid.Bool().Draw(rt, "publish") {
				for range rapid.IntRange(1, 2*buffer+2).Draw(rt, "burst") {
					published++
					safe[published] = published-1-covered < uint64(buffer)
					b.Publish(ev(int(published)))
				}
			} else if covered < published {
				receive()
			}
		}
		for covered < published {
			receive()
		}
	})
}

func BenchmarkPublish(b *testing.B) {
	e := Event{Kind: EndpointJoined, NetworkID: "0123456789abcdef", Network: "bench", EndpointID: "fedcba9876543210", Endpoint: "web", SandboxID: "web"}
	b.Run("subscribers=0", func(b *testing.B) {
		var bus Bus
		defer bus.Close()
		b.ReportAllocs()
		for b.Loop() {
			bus.Publish(e)
		}
	})
	b.Run("subscribers=1", func(b *testing.B) {
		var bus Bus
		defer bus.Close()
		ch := bus.Subscribe(b.Context(), 0)
		go func() {
			for range ch {
			}
		}()
		b.ReportAllocs()
		for b.Loop() {
			bus.Publish(e)
		}
	})
}

// Package events is the Controller's typed event stream: what happened to networks, endpoints,
// sandboxes and hosts, what was repaired, and when the gossip keys rotated, in the order it
// happened. Controller.Events is its entry point; the embedded DNS resolver, the agent's
// /events endpoint and CNI garbage collection follow state through it.
//
// # Model
//
// A [Bus] fans events out to its subscribers. Each published [Event] gets the next number of
// the Bus's sequence (Seq), and every subscriber receives events in that order. The publisher
// fills in Kind and the fields that kind names; Publish sets Seq and Time. The Controller
// publishes the events of one object in the order its operations happened.
//
// # Bounds and loss
//
// Publish never blocks and never waits for a subscriber. Each subscriber has a queue of at most
// the buffer it asked for (default [DefaultBuffer]), besides the one event being handed to its
// channel, so a subscriber that never lets more than buffer events go unreceived loses none.
// When its queue is full the newest events are dropped for it, counted, and reported in-band:
// once it has received the events queued before the loss, it receives one event of kind
// [Dropped] whose Dropped field is the number lost (and whose Seq and Time are those of the
// last one lost), then the events published after room was made. A subscriber that sees
// Dropped has missed state changes: it should read the state again (Controller.Networks,
// Sandboxes, ...) rather than patch what it holds. The channel stays open and usable after a
// loss.
//
// # Lifecycle and goroutines
//
// Subscribe starts one goroutine per subscriber, which hands the queued events to the
// subscriber's channel. It ends, and the channel is closed, when the subscriber's context is
// done or the Bus is closed; Close waits for every one of them. Events published before a
// subscription, or while a Bus has no subscriber, are delivered to no one and cost one atomic
// load. All methods are safe for concurrent use; the zero Bus is ready to use.
package events

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBuffer is how many events a subscriber may have waiting before newer ones are
// dropped for it, when Subscribe is given no buffer.
const DefaultBuffer = 1024

// Kind says what an Event reports, and which of its fields are set.
type Kind uint8

// Kinds of events. Unless a kind says otherwise, the object it names belongs to this host's
// Controller and the event is published once the operation has been committed to the store;
// a failed or rolled-back operation publishes nothing.
const (
	// NetworkCreated: NetworkID and Network. Remote is set for a global network that another
	// host created, once this host has adopted it.
	NetworkCreated Kind = iota + 1
	// NetworkDeleted: NetworkID and Network. Remote is set for a global network that another
	// host deleted, once this host has forgotten it.
	NetworkDeleted
	// EndpointCreated: NetworkID, Network, EndpointID, Endpoint, IPv4, IPv6. An endpoint made
	// by Controller.Connect is created by its join's commit: its EndpointCreated comes right
	// before its EndpointJoined.
	EndpointCreated
	// EndpointJoined: as EndpointCreated, and SandboxID, the sandbox it joined.
	EndpointJoined
	// EndpointLeft: as EndpointCreated, and SandboxID, the sandbox it left (also when the
	// sandbox was deleted with the endpoint joined).
	EndpointLeft
	// EndpointDeleted: as EndpointCreated; its addresses are free again.
	EndpointDeleted
	// SandboxCreated: SandboxID.
	SandboxCreated
	// SandboxDeleted: SandboxID. The endpoints the sandbox was joined to were left and deleted
	// first, each with its own events.
	SandboxDeleted
	// HostJoined: Host, a host that appeared in the global store's registry (this one
	// included, when it registers again after its lease ran out).
	HostJoined
	// HostLeft: Host, a host that is gone from the registry (its lease ran out, or it left).
	HostLeft
	// Repaired: Repair, something the Controller found broken and fixed at run time (a
	// reclaimed endpoint of a departed host, an orphan address or pool, a key left by a write
	// of unknown outcome). Repairs made while New restores are listed by Controller.Repairs.
	Repaired
	// KeyRotated: Key, a step of a gossip key rotation that this host's gossip node adopted,
	// filled from gossip.KeyringStatus (Epoch, Phase, TargetPrimary). Defined ahead of its
	// publisher: the Controller publishes it once its gossip node is wired in.
	KeyRotated
	// Dropped: Dropped, the number of events this subscriber lost because its queue was full;
	// Seq and Time are those of the last event lost. It is never published, only delivered.
	Dropped
)

var kindNames = [...]string{
	NetworkCreated:  "network.created",
	NetworkDeleted:  "network.deleted",
	EndpointCreated: "endpoint.created",
	EndpointJoined:  "endpoint.joined",
	EndpointLeft:    "endpoint.left",
	EndpointDeleted: "endpoint.deleted",
	SandboxCreated:  "sandbox.created",
	SandboxDeleted:  "sandbox.deleted",
	HostJoined:      "host.joined",
	HostLeft:        "host.left",
	Repaired:        "repaired",
	KeyRotated:      "key.rotated",
	Dropped:         "dropped",
}

// String returns the kind's stable name, "object.action" ("endpoint.joined"), or "kind(N)"
// for an unknown kind.
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one thing that happened. Which fields are set depends on Kind (see the kinds);
// the others are zero. An Event is a value: a subscriber may keep and modify it.
type Event struct {
	// Seq is the event's number in its Bus's sequence (1, 2, ...; events published while
	// the Bus has no subscriber are not numbered). A subscriber receives consecutive numbers
	// from its first event on, but where a Dropped event stands for the ones it lost.
	Seq uint64
	// Time is when the event was published.
	Time time.Time
	Kind Kind

	NetworkID string
	Network   string // the network's name
	// Remote marks a network event that another host caused (global scope).
	Remote     bool
	EndpointID string
	Endpoint   string       // the endpoint's name, unique in its network
	IPv4       netip.Prefix // the endpoint's addresses, zero when it has none
	IPv6       netip.Prefix
	SandboxID  string
	Host       string // a host's name in the registry

	Repair Repair
	Key    KeyRotation

	// Dropped is, in an event of kind Dropped, how many events were lost.
	Dropped uint64
}

// Repair is what a Repaired event reports, as drivers.Repair does.
type Repair struct {
	Object string // "endpoint web of host node2", "address 10.0.0.7"
	Action string // "reclaimed", "released", "removed"
	Reason string // "its host left the registry"
}

// KeyRotation is what a KeyRotated event reports: a step of a cluster-wide rotation of the
// gossip keys, as gossip.KeyringStatus describes it. It never holds key material.
type KeyRotation struct {
	Epoch   uint64 // the rotation's number
	Phase   string // "install", "use", "remove" or "done"
	Primary string // the fingerprint (gossip.KeyID) of the key members encrypt with
}

// Bus fans events out to subscribers. Its zero value is ready to use; it must not be copied
// after first use.
type Bus struct {
	nsubs atomic.Int32 // len(subs), for Publish to skip the lock when there is no subscriber
	wg    sync.WaitGroup

	mu     sync.Mutex // guards following
	seq    uint64
	subs   []*subscriber
	closed bool
	done   chan struct{} // closed by Close; made on first use
}

// Subscribe returns a channel that receives the events published from now on, in sequence
// order, with at most buffer of them queued for the receiver (DefaultBuffer when buffer is
// zero or negative) besides the one being handed over: past that, newer events are dropped for this subscriber and reported by a
// Dropped event (see the package doc). The channel is closed when ctx is done or the Bus is
// closed; a Bus already closed returns a closed channel. The receiver should read until the
// channel is closed, or cancel ctx when it stops reading.
func (b *Bus) Subscribe(ctx context.Context, buffer int) <-chan Event {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	out := make(chan Event)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || ctx.Err() != nil {
		close(out)
		return out
	}
	s := &subscriber{out: out, kick: make(chan struct{}, 1), max: buffer}
	b.subs = append(b.subs, s)
	b.nsubs.Store(int32(len(b.subs)))
	b.wg.Add(1)
	go b.run(ctx, s, b.doneLocked())
	return out
}

func (b *Bus) doneLocked() chan struct{} {
	if b.done == nil {
		b.done = make(chan struct{})
	}
	return b.done
}

// Publish numbers ev (Seq), stamps it (Time) and queues it for every subscriber. It never
// blocks on a subscriber and allocates only to grow a subscriber's queue; with no subscriber
// it returns at once. Events published concurrently are numbered in the order Publish takes
// them. Publish on a closed Bus, on a nil Bus, or of an event of kind Dropped (which only the
// Bus makes) does nothing.
func (b *Bus) Publish(ev Event) {
	if b == nil || b.nsubs.Load() == 0 || ev.Kind == Dropped {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || len(b.subs) == 0 {
		return
	}
	b.seq++
	ev.Seq = b.seq
	ev.Time = time.Now()
	for _, s := range b.subs {
		s.pushLocked(&ev)
	}
}

// Close closes every subscriber's channel and waits for their goroutines to end. Events
// queued but not yet received are discarded. Later subscriptions get a closed channel and
// later events go nowhere. Close is idempotent.
func (b *Bus) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.doneLocked())
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// run hands the subscriber's queued events to its channel until ctx or done ends, then
// removes the subscriber and closes its channel.
func (b *Bus) run(ctx context.Context, s *subscriber, done <-chan struct{}) {
	defer b.wg.Done()
	defer close(s.out)
	defer b.remove(s)
	for ctx.Err() == nil {
		b.mu.Lock()
		ev, ok := s.takeLocked()
		b.mu.Unlock()
		if !ok {
			select {
			case <-s.kick:
				continue
			case <-ctx.Done():
				return
			case <-done:
				return
			}
		}
		select {
		case s.out <- ev:
		case <-ctx.Done():
			return
		case <-done:
			return
		}
	}
}

func (b *Bus) remove(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := slices.Index(b.subs, s); i >= 0 {
		b.subs = slices.Delete(b.subs, i, i+1)
	}
	b.nsubs.Store(int32(len(b.subs)))
}

// subscriber is one Subscribe call: a bounded FIFO of events, drained by its goroutine.
type subscriber struct {
	out  chan Event    // unbuffered; closed by run
	kick chan struct{} // capacity 1: the queue was empty and got an event
	max  int           // the queue's bound; the event being handed over is not counted

	// Under Bus.mu:
	queue []slot // a ring, grown up to max
	head  int
	n     int
	lost  loss // events dropped after the last queued one
}

// slot is a queued event and the loss that came just before it.
type slot struct {
	ev   Event
	lost loss
}

// loss counts consecutive events dropped for one subscriber.
type loss struct {
	n    uint64
	seq  uint64 // of the last one dropped
	time time.Time
}

func (l loss) event() Event {
	return Event{Seq: l.seq, Time: l.time, Kind: Dropped, Dropped: l.n}
}

// pushLocked queues ev, or counts it lost when the queue is full.
func (s *subscriber) pushLocked(ev *Event) {
	if s.n == s.max {
		s.lost.n++
		s.lost.seq, s.lost.time = ev.Seq, ev.Time
		return
	}
	if s.n == len(s.queue) {
		s.growLocked()
	}
	s.queue[(s.head+s.n)%len(s.queue)] = slot{ev: *ev, lost: s.lost}
	s.lost = loss{}
	s.n++
	if s.n == 1 {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// growLocked doubles the queue's capacity, up to max.
func (s *subscriber) growLocked() {
	size := min(max(2*len(s.queue), 16), s.max)
	q := make([]slot, size)
	for i := range s.n {
		q[i] = s.queue[(s.head+i)%len(s.queue)]
	}
	s.queue, s.head = q, 0
}

// takeLocked takes the next event to deliver out of the queue: the loss before the queue's
// head, else the head, else the loss after the last queued event. It reports false when there
// is none.
func (s *subscriber) takeLocked() (Event, bool) {
	if s.n > 0 {
		h := &s.queue[s.head]
		if h.lost.n > 0 {
			ev := h.lost.event()
			h.lost = loss{}
			return ev, true
		}
		ev := h.ev
		*h = slot{} // drop its strings
		s.head = (s.head + 1) % len(s.queue)
		s.n--
		return ev, true
	}
	if s.lost.n > 0 {
		ev := s.lost.event()
		s.lost = loss{}
		return ev, true
	}
	return Event{}, false
}

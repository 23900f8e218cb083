package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The cnm messages carried inside memberlist user messages. memberlist encrypts and
// authenticates every one of them (AES-GCM, with the cluster label as additional data); this
// layer only frames them. Every message starts with wireVersion and a msgType byte, so a
// later version can be told apart and a stray or truncated buffer is rejected, never trusted.
//
// Integers are unsigned varints; strings and byte slices are a varint length followed by the
// bytes. Decoding checks every length against the bytes that remain, so a corrupt count never
// allocates more than the buffer it came in.

// wireVersion is the first byte of every cnm gossip message.
const wireVersion = 1

type msgType uint8

const (
	msgNetwork    msgType = 1 // networkEvent: a node joined or left a network (cluster-wide gossip)
	msgRotation   msgType = 2 // rotationState: the key rotation state (cluster-wide gossip)
	msgTableBatch msgType = 3 // []tableEvent: table events for one network (UDP to peers of that network)
	msgBulkSync   msgType = 4 // bulkSync: every entry of one network (TCP, anti-entropy)
	msgState      msgType = 5 // clusterState: memberlist push/pull payload
	msgNodeLeave  msgType = 6 // nodeLeave: a node is leaving the cluster (cluster-wide gossip)
)

// Limits on decoded collections and fields. They are far above what a sane cluster sends and
// keep a forged message from making the decoder allocate without bound.
const (
	maxKeys        = 16      // keys in a rotation state
	maxFieldLen    = 1 << 20 // any string or byte field
	maxWireEntries = 1 << 22 // events in one bulk sync or state message
)

var errMalformed = errors.New("gossip: malformed message")

type encoder struct{ b []byte }

func (e *encoder) u8(v byte)        { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(v []byte)   { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) str(v string)     { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// decoder reads what encoder wrote. The first error sticks: later reads return zero values,
// and err reports it.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errMalformed, what)
	}
	d.b = nil
}

func (d *decoder) u8() byte {
	if len(d.b) < 1 {
		d.fail("short buffer")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bool() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bad bool")
		return false
	}
}

func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxFieldLen || n > uint64(len(d.b)) {
		d.fail("field too long")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// bytes returns a copy: the buffers memberlist hands to delegates must not be retained.
func (d *decoder) bytes() []byte {
	v := d.raw()
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

func (d *decoder) str() string { return string(d.raw()) }

// count reads a collection length. Every element takes at least minSize bytes, so a count
// larger than the rest of the buffer allows is rejected before anything is allocated.
func (d *decoder) count(limit, minSize int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(limit) || n*uint64(minSize) > uint64(len(d.b)) {
		d.fail("count too large")
		return 0
	}
	return int(n)
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

func header(t msgType) encoder {
	e := encoder{b: make([]byte, 0, 64)}
	e.u8(wireVersion)
	e.u8(byte(t))
	return e
}

// msgHeader returns the type of the message in buf and its body.
func msgHeader(buf []byte) (msgType, []byte, error) {
	if len(buf) < 2 {
		return 0, nil, fmt.Errorf("%w: short buffer", errMalformed)
	}
	if buf[0] != wireVersion {
		return 0, nil, fmt.Errorf("%w: unknown version %d", errMalformed, buf[0])
	}
	return msgType(buf[1]), buf[2:], nil
}

// tableEvent is one create, update or delete of a table entry, as gossiped and as bulk-synced.
type tableEvent struct {
	Deleted bool
	LTime   uint64 // the owner's Lamport time of the write
	Owner   string // the node that wrote the entry
	Network NetworkID
	Table   string
	Key     string
	Value   []byte
	// ReapMillis is, for a tombstone, how long it has left before it is reaped.
	ReapMillis uint64
}

func (e *encoder) tableEvent(ev *tableEvent) {
	e.bool(ev.Deleted)
	e.uvarint(ev.LTime)
	e.str(ev.Owner)
	e.str(string(ev.Network))
	e.str(ev.Table)
	e.str(ev.Key)
	e.bytes(ev.Value)
	e.uvarint(ev.ReapMillis)
}

func (d *decoder) tableEvent() tableEvent {
	var ev tableEvent
	ev.Deleted = d.bool()
	ev.LTime = d.uvarint()
	ev.Owner = d.str()
	ev.Network = NetworkID(d.str())
	ev.Table = d.str()
	ev.Key = d.str()
	ev.Value = d.bytes()
	ev.ReapMillis = d.uvarint()
	return ev
}

// minTableEvent is the smallest encoding of a tableEvent (every field empty).
const minTableEvent = 8

// encodedEventSize is the size of ev encoded alone, used to keep entries small enough for one
// UDP packet.
func encodedEventSize(ev *tableEvent) int {
	var e encoder
	e.tableEvent(ev)
	return len(e.b)
}

func encodeTableEvent(ev *tableEvent) []byte {
	var e encoder
	e.tableEvent(ev)
	return e.b
}

// encodeBatch frames already encoded table events (from the broadcast queues) as one message.
func encodeBatch(events [][]byte) []byte {
	e := header(msgTableBatch)
	e.uvarint(uint64(len(events)))
	for _, ev := range events {
		e.bytes(ev)
	}
	return e.b
}

// batchOverhead is the framing encodeBatch adds around each event, the most a varint length
// of a packet-sized event takes.
const batchOverhead = 3

func decodeBatch(body []byte) ([]tableEvent, error) {
	d := decoder{b: body}
	n := d.count(maxWireEntries, 1+minTableEvent)
	evs := make([]tableEvent, 0, n)
	for range n {
		inner := decoder{b: d.raw()}
		ev := inner.tableEvent()
		if err := inner.end(); err != nil {
			return nil, err
		}
		evs = append(evs, ev)
	}
	return evs, d.end()
}

// networkEvent says that Node joined (or, with Leaving, left) Network at LTime.
type networkEvent struct {
	Node    string
	Network NetworkID
	LTime   uint64
	Leaving bool
}

func (e *encoder) networkEvent(ev *networkEvent) {
	e.str(ev.Node)
	e.str(string(ev.Network))
	e.uvarint(ev.LTime)
	e.bool(ev.Leaving)
}

func (d *decoder) networkEvent() networkEvent {
	return networkEvent{Node: d.str(), Network: NetworkID(d.str()), LTime: d.uvarint(), Leaving: d.bool()}
}

func encodeNetworkEvent(ev *networkEvent) []byte {
	e := header(msgNetwork)
	e.networkEvent(ev)
	return e.b
}

func decodeNetworkEvent(body []byte) (networkEvent, error) {
	d := decoder{b: body}
	ev := d.networkEvent()
	return ev, d.end()
}

func (e *encoder) rotation(s *rotationState) {
	e.uvarint(s.Epoch)
	e.u8(byte(s.Phase))
	e.uvarint(uint64(s.Primary))
	e.uvarint(uint64(len(s.Keys)))
	for _, k := range s.Keys {
		e.bytes(k)
	}
	e.varint(s.Next)
}

func (d *decoder) rotation() *rotationState {
	s := &rotationState{}
	s.Epoch = d.uvarint()
	s.Phase = rotationPhase(d.u8())
	s.Primary = int(min(d.uvarint(), maxKeys))
	n := d.count(maxKeys, 17)
	for range n {
		s.Keys = append(s.Keys, d.bytes())
	}
	s.Next = d.varint()
	if d.err == nil {
		if err := s.validate(); err != nil {
			d.fail(err.Error())
		}
	}
	return s
}

func encodeRotation(s *rotationState) []byte {
	e := header(msgRotation)
	e.rotation(s)
	return e.b
}

func decodeRotation(body []byte) (*rotationState, error) {
	d := decoder{b: body}
	s := d.rotation()
	if err := d.end(); err != nil {
		return nil, err
	}
	return s, nil
}

// bulkSync carries every entry of one network (tombstones included) from Sender. A sync that is
// not a Response asks the receiver to answer with its own entries of that network.
type bulkSync struct {
	Network  NetworkID
	Sender   string
	Response bool
	Events   []tableEvent
}

func encodeBulkSync(s *bulkSync) []byte {
	e := header(msgBulkSync)
	e.str(string(s.Network))
	e.str(s.Sender)
	e.bool(s.Response)
	e.uvarint(uint64(len(s.Events)))
	for i := range s.Events {
		e.tableEvent(&s.Events[i])
	}
	return e.b
}

func decodeBulkSync(body []byte) (*bulkSync, error) {
	d := decoder{b: body}
	s := &bulkSync{Network: NetworkID(d.str()), Sender: d.str(), Response: d.bool()}
	n := d.count(maxWireEntries, minTableEvent)
	s.Events = make([]tableEvent, 0, n)
	for range n {
		s.Events = append(s.Events, d.tableEvent())
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return s, nil
}

// clusterState is this node's part of a memberlist push/pull: the rotation state and every
// network attachment it knows, its own and its peers'.
type clusterState struct {
	Rotation *rotationState
	Networks []networkEvent
}

func encodeClusterState(s *clusterState) []byte {
	e := header(msgState)
	e.bool(s.Rotation != nil)
	if s.Rotation != nil {
		e.rotation(s.Rotation)
	}
	e.uvarint(uint64(len(s.Networks)))
	for i := range s.Networks {
		e.networkEvent(&s.Networks[i])
	}
	return e.b
}

func decodeClusterState(body []byte) (*clusterState, error) {
	d := decoder{b: body}
	s := &clusterState{}
	if d.bool() {
		s.Rotation = d.rotation()
	}
	n := d.count(maxWireEntries, 4)
	s.Networks = make([]networkEvent, 0, n)
	for range n {
		s.Networks = append(s.Networks, d.networkEvent())
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return s, nil
}

// nodeMeta is what a node advertises in its memberlist meta data: when it booted (in its own
// Lamport time base, so entries from an earlier incarnation can be told apart) and which keys
// it holds, by KeyID. The rotation driver reads the key IDs of every member as its
// acknowledgements.
type nodeMeta struct {
	Boot    uint64
	Primary string   // KeyID of the primary key
	Keys    []string // KeyIDs of every installed key, primary included
}

const metaVersion = 1

func encodeMeta(m *nodeMeta) []byte {
	var e encoder
	e.u8(metaVersion)
	e.uvarint(m.Boot)
	e.str(m.Primary)
	e.uvarint(uint64(len(m.Keys)))
	for _, k := range m.Keys {
		e.str(k)
	}
	return e.b
}

func decodeMeta(b []byte) (*nodeMeta, error) {
	d := decoder{b: b}
	if v := d.u8(); d.err == nil && v != metaVersion {
		return nil, fmt.Errorf("%w: unknown meta version %d", errMalformed, v)
	}
	m := &nodeMeta{Boot: d.uvarint(), Primary: d.str()}
	n := d.count(maxKeys*2, 1)
	for range n {
		m.Keys = append(m.Keys, d.str())
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return m, nil
}

// nodeLeave announces that Node (the incarnation that booted at Boot) is leaving gracefully,
// so that its peers treat the dead message memberlist sends next as a leave, not a failure
// (memberlist's event delegate cannot tell them apart).
type nodeLeave struct {
	Node string
	Boot uint64
}

func encodeNodeLeave(l *nodeLeave) []byte {
	e := header(msgNodeLeave)
	e.str(l.Node)
	e.uvarint(l.Boot)
	return e.b
}

func decodeNodeLeave(body []byte) (nodeLeave, error) {
	d := decoder{b: body}
	l := nodeLeave{Node: d.str(), Boot: d.uvarint()}
	return l, d.end()
}

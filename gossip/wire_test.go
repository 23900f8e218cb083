package gossip

import (
	"reflect"
	"testing"
	"time"
)

func sampleEvents() []tableEvent {
	return []tableEvent{
		{LTime: 1, Owner: "a", Network: "n", Table: "t", Key: "k", Value: []byte("v")},
		{Deleted: true, LTime: 1 << 60, Owner: "node-09", Network: "net", Table: "endpoints", Key: "ep", ReapMillis: 1800000},
	}
}

func sampleRotation() *rotationState {
	return &rotationState{Epoch: 7, Phase: phaseUse, Keys: [][]byte{testKey(1), testKey(2), testKey(3)}, Primary: 1, Next: time.Now().UnixNano()}
}

// TestWireRoundTrip: every message decodes to what was encoded.
func TestWireRoundTrip(t *testing.T) {
	evs := sampleEvents()
	var raw [][]byte
	for i := range evs {
		raw = append(raw, encodeTableEvent(&evs[i]))
	}
	typ, body, err := msgHeader(encodeBatch(raw))
	if err != nil || typ != msgTableBatch {
		t.Fatal(typ, err)
	}
	got, err := decodeBatch(body)
	if err != nil || !reflect.DeepEqual(got, evs) {
		t.Errorf("batch: %+v, %v", got, err)
	}

	bs := &bulkSync{Network: "n", Sender: "s", Response: true, Events: evs}
	_, body, _ = msgHeader(encodeBulkSync(bs))
	if got, err := decodeBulkSync(body); err != nil || !reflect.DeepEqual(got, bs) {
		t.Errorf("bulk sync: %+v, %v", got, err)
	}

	rot := sampleRotation()
	_, body, _ = msgHeader(encodeRotation(rot))
	if got, err := decodeRotation(body); err != nil || !reflect.DeepEqual(got, rot) {
		t.Errorf("rotation: %+v, %v", got, err)
	}

	cs := &clusterState{Rotation: rot, Networks: []networkEvent{{Node: "a", Network: "n", LTime: 5}, {Node: "b", Network: "m", LTime: 6, Leaving: true}}}
	_, body, _ = msgHeader(encodeClusterState(cs))
	if got, err := decodeClusterState(body); err != nil || !reflect.DeepEqual(got, cs) {
		t.Errorf("cluster state: %+v, %v", got, err)
	}

	m := &nodeMeta{Boot: 123, Primary: "p", Keys: []string{"p", "q"}}
	if got, err := decodeMeta(encodeMeta(m)); err != nil || !reflect.DeepEqual(got, m) {
		t.Errorf("meta: %+v, %v", got, err)
	}
}

// FuzzDecode: no input makes a decoder panic, allocate without bound, or accept a rotation
// state with a bad key; what decodes re-encodes to bytes that decode to the same value.
func FuzzDecode(f *testing.F) {
	evs := sampleEvents()
	var raw [][]byte
	for i := range evs {
		raw = append(raw, encodeTableEvent(&evs[i]))
	}
	f.Add(encodeBatch(raw))
	f.Add(encodeBulkSync(&bulkSync{Network: "n", Sender: "s", Events: evs}))
	f.Add(encodeRotation(sampleRotation()))
	f.Add(encodeClusterState(&clusterState{Rotation: sampleRotation(), Networks: []networkEvent{{Node: "a", Network: "n", LTime: 5}}}))
	f.Add(encodeNetworkEvent(&networkEvent{Node: "a", Network: "n", LTime: 9}))
	f.Add(encodeNodeLeave(&nodeLeave{Node: "a", Boot: 3}))
	f.Add(append([]byte{0}, encodeMeta(&nodeMeta{Boot: 1, Primary: "x", Keys: []string{"x"}})...))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 0 && b[0] == 0 {
			if m, err := decodeMeta(b[1:]); err == nil {
				if m2, err := decodeMeta(encodeMeta(m)); err != nil || !reflect.DeepEqual(m, m2) {
					t.Errorf("meta does not round-trip: %+v %+v %v", m, m2, err)
				}
			}
			return
		}
		typ, body, err := msgHeader(b)
		if err != nil {
			return
		}
		switch typ {
		case msgTableBatch:
			_, _ = decodeBatch(body)
		case msgBulkSync:
			if s, err := decodeBulkSync(body); err == nil {
				_, body2, _ := msgHeader(encodeBulkSync(s))
				if s2, err := decodeBulkSync(body2); err != nil || !reflect.DeepEqual(s, s2) {
					t.Errorf("bulk sync does not round-trip")
				}
			}
		case msgRotation:
			if s, err := decodeRotation(body); err == nil {
				if s.validate() != nil {
					t.Errorf("accepted an invalid rotation state")
				}
				for _, k := range s.Keys {
					if ValidateKey(k) != nil {
						t.Errorf("accepted a bad key")
					}
				}
			}
		case msgState:
			_, _ = decodeClusterState(body)
		case msgNetwork:
			if ev, err := decodeNetworkEvent(body); err == nil {
				_, body2, _ := msgHeader(encodeNetworkEvent(&ev))
				if ev2, err := decodeNetworkEvent(body2); err != nil || ev != ev2 {
					t.Errorf("network event does not round-trip")
				}
			}
		case msgNodeLeave:
			_, _ = decodeNodeLeave(body)
		}
	})
}

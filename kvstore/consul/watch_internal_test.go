package consul

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/kvstore"
)

// fmtEvents renders events as "put k=v@rev" and "delete k@rev", one a line.
func fmtEvents(events []kvstore.Event) string {
	var b strings.Builder
	for _, ev := range events {
		if ev.Type == kvstore.EventPut {
			fmt.Fprintf(&b, "put %s=%s@%d\n", ev.Pair.Key, ev.Pair.Value, ev.Pair.Revision)
		} else {
			fmt.Fprintf(&b, "delete %s@%d value=%v", ev.Pair.Key, ev.Pair.Revision, ev.Pair.Value)
			if ev.Inferred {
				b.WriteString(" inferred")
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func TestDiff(t *testing.T) {
	for _, tt := range []struct {
		name       string
		prev       map[string]entry
		snap       snapshot
		last       uint64
		synthesize bool
		want       string
	}{{
		name: "puts above the last index, in revision order",
		prev: map[string]entry{"a": {10, []byte("1")}},
		snap: snapshot{index: 14, data: map[string]entry{
			"a": {10, []byte("1")}, "b": {14, []byte("2")}, "c": {12, []byte("3")},
		}},
		last: 10, synthesize: true,
		want: "put c=3@12\nput b=2@14\n",
	}, {
		name: "a put and its delete between two snapshots: both, from the tombstone",
		prev: map[string]entry{},
		snap: snapshot{index: 13, tombs: map[string]tombstone{"a": {rev: 13, prevRev: 12, prevValue: []byte("v")}}},
		last: 11, synthesize: true,
		want: "put a=v@12\ndelete a@13 value=[]\n",
	}, {
		name: "the put before the delete was seen: the delete only",
		prev: map[string]entry{"a": {12, []byte("v")}},
		snap: snapshot{index: 13, tombs: map[string]tombstone{"a": {rev: 13, prevRev: 12, prevValue: []byte("v")}}},
		last: 12, synthesize: true,
		want: "delete a@13 value=[]\n",
	}, {
		name: "deleted and created again: delete then put",
		prev: map[string]entry{"a": {5, []byte("old")}},
		snap: snapshot{index: 9,
			data:  map[string]entry{"a": {9, []byte("new")}},
			tombs: map[string]tombstone{"a": {rev: 7, prevRev: 5, prevValue: []byte("old")}}},
		last: 6, synthesize: true,
		want: "delete a@7 value=[]\nput a=new@9\n",
	}, {
		name: "gone without a tombstone (lease expired): delete at the snapshot's index",
		prev: map[string]entry{"a": {5, []byte("1")}, "b": {6, []byte("2")}},
		snap: snapshot{index: 20,
			data:  map[string]entry{"b": {6, []byte("2")}},
			tombs: map[string]tombstone{"a": {rev: 3, prevRev: 2}}}, // an older delete of a
		last: 6, synthesize: true,
		want: "delete a@20 value=[] inferred\n",
	}, {
		name: "replay from a revision: no synthesized deletes",
		prev: nil,
		snap: snapshot{index: 20,
			data:  map[string]entry{"a": {15, []byte("1")}, "old": {2, []byte("x")}},
			tombs: map[string]tombstone{"b": {rev: 12, prevRev: 4, prevValue: []byte("y")}, "c": {rev: 3, prevRev: 1}}},
		last: 10, synthesize: false,
		want: "delete b@12 value=[]\nput a=1@15\n",
	}, {
		name: "one transaction: by key",
		prev: map[string]entry{"z": {3, []byte("1")}},
		snap: snapshot{index: 8,
			data:  map[string]entry{"y": {8, []byte("2")}, "x": {8, []byte("3")}},
			tombs: map[string]tombstone{"z": {rev: 8, prevRev: 3}}},
		last: 3, synthesize: true,
		want: "put x=3@8\nput y=2@8\ndelete z@8 value=[]\n",
	}} {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmtEvents(diff(tt.prev, &tt.snap, tt.last, tt.synthesize)); got != tt.want {
				t.Errorf("diff =\n%swant\n%s", got, tt.want)
			}
		})
	}
}

func TestResync(t *testing.T) {
	prev := map[string]entry{"a": {100, []byte("1")}, "b": {101, []byte("2")}, "c": {102, []byte("3")}}
	snap := &snapshot{index: 9, data: map[string]entry{
		"a": {100, []byte("1")}, // same: nothing
		"b": {7, []byte("2")},   // another revision: put
		"d": {5, []byte("4")},   // new: put
	}}
	want := "put d=4@5\nput b=2@7\ndelete c@9 value=[] inferred\n"
	if got := fmtEvents(resync(prev, snap)); got != want {
		t.Errorf("resync =\n%swant\n%s", got, want)
	}
}

func TestTombstoneEncoding(t *testing.T) {
	b := encodeTombstone(42, []byte("value"))
	rev, v, ok := decodeTombstone(b)
	if !ok || rev != 42 || string(v) != "value" {
		t.Errorf("decodeTombstone(encodeTombstone(42, value)) = %d, %q, %v", rev, v, ok)
	}
	for _, bad := range [][]byte{nil, {1, 2}, append([]byte{9}, make([]byte, 8)...)} {
		if _, _, ok := decodeTombstone(bad); ok {
			t.Errorf("decodeTombstone(%v) ok, want not", bad)
		}
	}
}

func TestCheckFailures(t *testing.T) {
	for _, tt := range []struct {
		what string
		want bool
	}{
		{`failed to set key "cnm/_kv/a", index is stale`, true},
		{`key "cnm/_kv/a" exists`, true},
		{`failed index check for key "cnm/_kv/a", current modify index 5 != 4`, true},
		{`failed to lock key "cnm/_lock/a", lock is already held`, true},
		{`invalid session "1234"`, false},
		// A key that looks like a failed check does not make a refusal one.
		{`Permission denied: token lacks permission 'key:write' on "cnm/_kv/index is stale exists"`, false},
	} {
		r := &txnResult{}
		r.Errors = append(r.Errors, &api.TxnError{OpIndex: 0, What: tt.what})
		if got := r.failedCheck(); got != tt.want {
			t.Errorf("failedCheck(%q) = %v, want %v", tt.what, got, tt.want)
		}
	}
}

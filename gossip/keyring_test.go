package gossip

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
)

func ids(keys [][]byte) []string {
	var out []string
	for _, k := range keys {
		out = append(out, KeyID(k))
	}
	return out
}

// TestRotationSequence walks rotations on one keyring the way every member applies them and
// checks the invariants: the primary is always held by everyone before use (it was staged a
// rotation earlier, or installed in the same rotation's first phase), the previous primary
// stays, and the memberlist keyring keeps the order [primary, previous, next].
func TestRotationSequence(t *testing.T) {
	now := time.Now()
	st := initialRotation([][]byte{testKey(1)}, now)
	ring, err := memberlist.NewKeyring(nil, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	apply := func(st *rotationState) {
		t.Helper()
		for _, k := range st.Keys {
			if err := ring.AddKey(k); err != nil {
				t.Fatal(err)
			}
		}
		if err := ring.UseKey(st.wantPrimary()); err != nil {
			t.Fatal(err)
		}
		if st.Phase >= phaseRemove {
			prev := st.Keys[max(st.Primary-1, 0)]
			if _, err := ringRemove(ring, func(k []byte) bool { return !st.has(k) },
				func(k []byte) bool { return bytes.Equal(k, st.wantPrimary()) || bytes.Equal(k, prev) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	var prevPrimary []byte = testKey(1)
	var staged []byte
	for epoch := 1; epoch <= 5; epoch++ {
		next, err := st.advance(now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if next.Epoch != uint64(epoch) || next.Phase != phaseInstall || len(next.Keys) != 3 || next.Primary != 1 {
			t.Fatalf("epoch %d: %+v", epoch, next)
		}
		if !bytes.Equal(next.Keys[0], prevPrimary) {
			t.Errorf("epoch %d: previous primary not kept", epoch)
		}
		if staged != nil && !bytes.Equal(next.Keys[1], staged) {
			t.Errorf("epoch %d: the new primary is not the key staged by the last rotation", epoch)
		}
		if next.compare(st) <= 0 {
			t.Errorf("epoch %d: new state does not supersede the old", epoch)
		}
		for _, ph := range []rotationPhase{phaseInstall, phaseUse, phaseRemove, phaseDone} {
			s := next.clone()
			s.Phase = ph
			apply(s)
			if ph == phaseInstall && !bytes.Equal(ring.GetPrimaryKey(), prevPrimary) {
				t.Errorf("epoch %d: primary switched during install", epoch)
			}
		}
		want := []string{KeyID(next.Keys[1]), KeyID(next.Keys[0]), KeyID(next.Keys[2])}
		if got := ids(ring.GetKeys()); !slices.Equal(got, want) {
			t.Errorf("epoch %d: ring %v, want [primary previous next] %v", epoch, got, want)
		}
		prevPrimary, staged, st = next.Keys[1], next.Keys[2], next
	}
	if !time.Unix(0, st.Next).After(now) {
		t.Error("schedule not in the future")
	}
}

// TestRingRemoveNeverCompactsInPlace: removing a middle key must not write over the slice a
// concurrent decryption got from GetKeys.
func TestRingRemoveNeverCompactsInPlace(t *testing.T) {
	ring, _ := memberlist.NewKeyring([][]byte{testKey(2), testKey(3), testKey(4)}, testKey(1))
	before := ring.GetKeys() // what a concurrent decryption holds
	snapshot := ids(before)
	changed, err := ringRemove(ring, func(k []byte) bool { return bytes.Equal(k, testKey(3)) },
		func(k []byte) bool { return bytes.Equal(k, testKey(1)) || bytes.Equal(k, testKey(2)) })
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	if got := ids(before); !slices.Equal(got, snapshot) {
		t.Errorf("the old slice changed under a reader: %v, was %v", got, snapshot)
	}
	if got, want := ids(ring.GetKeys()), ids([][]byte{testKey(1), testKey(2), testKey(4)}); !slices.Equal(got, want) {
		t.Errorf("ring %v, want %v", got, want)
	}
	if _, err := ringRemove(ring, func(k []byte) bool { return bytes.Equal(k, testKey(1)) }, func([]byte) bool { return false }); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("removing the primary: %v", err)
	}
}

// TestRotationCompare: a later epoch wins, then a later phase; two drivers' states of the same
// step are ordered the same way everywhere.
func TestRotationCompare(t *testing.T) {
	a := sampleRotation()
	b := a.clone()
	b.Phase = phaseRemove
	c := a.clone()
	c.Epoch++
	c.Phase = phaseInstall
	d := a.clone()
	d.Keys[2] = testKey(9)
	if a.compare(b) >= 0 || b.compare(c) >= 0 || a.compare(a.clone()) != 0 {
		t.Error("bad order")
	}
	if a.compare(d) == 0 || a.compare(d) != -d.compare(a) {
		t.Error("concurrent states not totally ordered")
	}
}

// TestKeyringFile: the file round-trips, is 0600, and bad files are invalid-parameter errors.
func TestKeyringFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kr")
	rot := sampleRotation()
	keys := [][]byte{testKey(2), testKey(1)}
	if err := saveKeyringFile(path, keys, rot); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	gotKeys, gotRot, err := loadKeyringFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(gotKeys, keys, bytes.Equal) || gotRot.compare(rot) != 0 || gotRot.Next != rot.Next {
		t.Errorf("round trip: %v %+v", ids(gotKeys), gotRot)
	}
	if k, r, err := loadKeyringFile(filepath.Join(dir, "missing")); k != nil || r != nil || err != nil {
		t.Errorf("missing file: %v %v %v", k, r, err)
	}
	for name, content := range map[string]string{
		"garbage":  "not json",
		"version":  `{"version": 2, "keys": ["AAAAAAAAAAAAAAAAAAAAAA=="]}`,
		"no keys":  `{"version": 1, "keys": []}`,
		"bad key":  `{"version": 1, "keys": ["AAAA"]}`,
		"bad rota": `{"version": 1, "keys": ["AAAAAAAAAAAAAAAAAAAAAA=="], "rotation": {"phase": 9, "keys": [], "next": "x"}}`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := loadKeyringFile(p); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("%s: %v", name, err)
		}
		cfg := testConfig("n", testKey(1))
		cfg.KeyringFile = p
		if nd, err := New(cfg); err == nil {
			nd.Close()
			t.Errorf("%s: New accepted the file", name)
		}
	}
}

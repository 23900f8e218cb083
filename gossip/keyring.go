package gossip

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
)

// DefaultKeyLen is the length of the keys a rotation generates: 16 bytes, AES-128-GCM, as
// Docker swarm uses for its gossip keys.
const DefaultKeyLen = 16

// ValidateKey reports whether key can be a gossip key: 16, 24 or 32 bytes (AES-128, -192 or
// -256 in GCM mode). The error is an [errclass.InvalidParameterError] that names the length,
// never the key.
func ValidateKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return errclass.Invalid("key", strconv.Itoa(len(key))+" bytes", "a gossip key is 16, 24 or 32 bytes")
}

// KeyID returns a short fingerprint of key: the first 8 bytes of its SHA-256, in hex. It is what
// logs, errors, [KeyringStatus] and the node meta data show instead of a key.
func KeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// NewKey returns a fresh random key of [DefaultKeyLen] bytes.
func NewKey() ([]byte, error) {
	k := make([]byte, DefaultKeyLen)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("gossip: new key: %w", err)
	}
	return k, nil
}

// rotationPhase is the step a key rotation is at. The order matters: a later phase of the same
// epoch supersedes an earlier one.
type rotationPhase uint8

const (
	phaseInstall rotationPhase = 1 // the target keys are being installed everywhere
	phaseUse     rotationPhase = 2 // every member has them; the new primary is being switched to
	phaseRemove  rotationPhase = 3 // every member encrypts with the new primary; old keys go
	phaseDone    rotationPhase = 4 // every member holds exactly the target keys
)

func (p rotationPhase) String() string {
	switch p {
	case phaseInstall:
		return "install"
	case phaseUse:
		return "use"
	case phaseRemove:
		return "remove"
	case phaseDone:
		return "done"
	}
	return "phase(" + strconv.Itoa(int(p)) + ")"
}

// rotationState is the cluster-wide key rotation state: the target keyring of rotation Epoch
// and how far it has got. Every member holds a copy (gossiped, pushed and pulled, and persisted
// in the keyring file), so whichever member drives the next step finds it where the last
// driver left it.
//
// Keys is ordered oldest to newest. After a rotation it is [previous, primary, next]: the
// previous primary stays for decryption for a whole interval (a member that was away and still
// encrypts with it is understood), and the next primary is installed a whole interval before it
// is used (a member that missed one rotation already holds the key the others now use).
type rotationState struct {
	Epoch   uint64
	Phase   rotationPhase
	Keys    [][]byte
	Primary int   // index in Keys of the primary once the rotation is through phaseUse
	Next    int64 // Unix nanoseconds at which the next rotation is due
}

func (s *rotationState) validate() error {
	if s.Phase < phaseInstall || s.Phase > phaseDone {
		return fmt.Errorf("bad phase %d", s.Phase)
	}
	if len(s.Keys) == 0 || len(s.Keys) > maxKeys {
		return fmt.Errorf("bad key count %d", len(s.Keys))
	}
	for _, k := range s.Keys {
		if ValidateKey(k) != nil {
			return errors.New("bad key length")
		}
	}
	if s.Primary < 0 || s.Primary >= len(s.Keys) || (s.Phase == phaseInstall && s.Primary == 0) {
		return fmt.Errorf("bad primary index %d", s.Primary)
	}
	return nil
}

func (s *rotationState) clone() *rotationState {
	c := *s
	c.Keys = make([][]byte, len(s.Keys))
	for i, k := range s.Keys {
		c.Keys[i] = bytes.Clone(k)
	}
	return &c
}

// wantPrimary is the key every member should encrypt with at this phase: the previous
// primary while the new keys are being installed, the target primary from phaseUse on.
func (s *rotationState) wantPrimary() []byte {
	if s.Phase == phaseInstall {
		return s.Keys[s.Primary-1]
	}
	return s.Keys[s.Primary]
}

func (s *rotationState) has(key []byte) bool {
	return slices.ContainsFunc(s.Keys, func(k []byte) bool { return bytes.Equal(k, key) })
}

// digest orders two states of the same epoch and phase that two drivers made at once.
func (s *rotationState) digest() []byte {
	h := sha256.New()
	for _, k := range s.Keys {
		h.Write(k)
	}
	h.Write([]byte{byte(s.Primary)})
	return h.Sum(nil)
}

// compare orders rotation states: a later epoch wins, then a later phase. Two drivers that
// start the same epoch at once (a change of driver) make states that differ in their fresh
// key; the larger digest wins everywhere, and the loser's key is never made primary because
// the use phase needs every member to hold the winner's keys first. The last resort, equal
// keys with another schedule, keeps the earlier Next.
func (s *rotationState) compare(o *rotationState) int {
	if c := cmpUint(s.Epoch, o.Epoch); c != 0 {
		return c
	}
	if c := cmpUint(uint64(s.Phase), uint64(o.Phase)); c != 0 {
		return c
	}
	if c := bytes.Compare(s.digest(), o.digest()); c != 0 {
		return c
	}
	return -cmpUint(uint64(s.Next), uint64(o.Next))
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// advance returns the state that starts the next rotation: the staged next key becomes the
// primary, the current primary stays as the previous key, a fresh key is staged, and anything
// older goes. A keyring with no staged key (a fresh cluster) gets two fresh keys: one to use
// now, one staged for the rotation after.
func (s *rotationState) advance(now time.Time, interval time.Duration) (*rotationState, error) {
	cur := s.Keys[s.Primary]
	keys := [][]byte{bytes.Clone(cur)}
	if s.Primary+1 < len(s.Keys) {
		for _, k := range s.Keys[s.Primary+1:] {
			keys = append(keys, bytes.Clone(k))
		}
	} else {
		k, err := NewKey()
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	keys = append(keys, k)
	if len(keys) > maxKeys {
		keys = append(keys[:2:2], keys[len(keys)-(maxKeys-2):]...)
	}
	next := time.Unix(0, s.Next).Add(interval)
	if !next.After(now) {
		next = now.Add(interval)
	}
	return &rotationState{Epoch: s.Epoch + 1, Phase: phaseInstall, Keys: keys, Primary: 1, Next: next.UnixNano()}, nil
}

// initialRotation is the state of a cluster that has never rotated, from Config.Keys (primary
// first): the other keys are older ones kept for decryption until the first rotation.
func initialRotation(keys [][]byte, next time.Time) *rotationState {
	ordered := make([][]byte, 0, len(keys))
	for _, k := range keys[1:] {
		ordered = append(ordered, bytes.Clone(k))
	}
	ordered = append(ordered, bytes.Clone(keys[0]))
	return &rotationState{Epoch: 0, Phase: phaseDone, Keys: ordered, Primary: len(ordered) - 1, Next: next.UnixNano()}
}

// ringIDs returns the KeyIDs of the keys in ring and of its primary.
func ringIDs(ring *memberlist.Keyring) (primary string, ids []string) {
	keys := ring.GetKeys()
	for i, k := range keys {
		id := KeyID(k)
		if i == 0 {
			primary = id
		}
		ids = append(ids, id)
	}
	return primary, ids
}

// ringKeys returns a copy of the keys in ring, primary first.
func ringKeys(ring *memberlist.Keyring) [][]byte {
	keys := ring.GetKeys()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = bytes.Clone(k)
	}
	return out
}

// ringRemove removes the keys for which drop reports true from ring, without ever writing over
// a key that a concurrent decryption may be reading.
//
// memberlist's Keyring.RemoveKey compacts its slice in place, and GetKeys hands that same slice
// to every decryption running at the moment, so removing a key from the middle races with
// them. Removing the last key writes nothing. So ringRemove pops keys off the end down to the
// first one to drop and adds back the keepers it popped. A popped keeper is missing for a few
// microseconds; that is safe only for keys nobody encrypts with, so if a key in hot (the
// primary, the previous primary) would have to be popped, it falls back to RemoveKey.
func ringRemove(ring *memberlist.Keyring, drop func([]byte) bool, hot func([]byte) bool) (changed bool, err error) {
	keys := ringKeys(ring)
	first := slices.IndexFunc(keys, drop)
	if first < 0 {
		return false, nil
	}
	if first == 0 {
		return false, &errclass.ConflictError{Kind: "key", Name: KeyID(keys[0]), Reason: "is the primary key"}
	}
	if slices.ContainsFunc(keys[first:], func(k []byte) bool { return !drop(k) && hot(k) }) {
		for _, k := range keys[first:] {
			if drop(k) {
				if err := ring.RemoveKey(k); err != nil {
					return true, err
				}
			}
		}
		return true, nil
	}
	for i := len(keys) - 1; i >= first; i-- {
		if err := ring.RemoveKey(keys[i]); err != nil {
			return true, err
		}
	}
	for _, k := range keys[first:] {
		if !drop(k) {
			if err := ring.AddKey(k); err != nil {
				return true, err
			}
		}
	}
	return true, nil
}

// keyringFile is the persisted keyring: the keys this node holds (primary first) and the last
// rotation state it knew, so a restart neither loses the keys nor resets the schedule.
type keyringFile struct {
	Version  int              `json:"version"`
	Keys     [][]byte         `json:"keys"` // primary first
	Rotation *rotationFileRec `json:"rotation,omitempty"`
}

type rotationFileRec struct {
	Epoch   uint64   `json:"epoch"`
	Phase   uint8    `json:"phase"`
	Keys    [][]byte `json:"keys"` // oldest first
	Primary int      `json:"primary"`
	Next    string   `json:"next"` // RFC 3339
}

const keyringFileVersion = 1

// fileRec returns st as persisted in the keyring file and the store.
func fileRec(st *rotationState) rotationFileRec {
	return rotationFileRec{Epoch: st.Epoch, Phase: uint8(st.Phase), Keys: st.Keys, Primary: st.Primary,
		Next: time.Unix(0, st.Next).UTC().Format(time.RFC3339Nano)}
}

// state returns the rotation state r holds, validated.
func (r *rotationFileRec) state() (*rotationState, error) {
	next, err := time.Parse(time.RFC3339Nano, r.Next)
	if err != nil {
		return nil, errors.New("bad rotation time")
	}
	st := &rotationState{Epoch: r.Epoch, Phase: rotationPhase(r.Phase), Keys: r.Keys, Primary: r.Primary, Next: next.UnixNano()}
	if err := st.validate(); err != nil {
		return nil, err
	}
	return st, nil
}

// loadKeyringFile reads path. A missing file returns (nil, nil).
func loadKeyringFile(path string) (keys [][]byte, rot *rotationState, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("gossip: read keyring file %q: %w", path, err)
	}
	var f keyringFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, &errclass.InvalidParameterError{Field: "KeyringFile", Value: path, Reason: "not a keyring file", Err: err}
	}
	if f.Version != keyringFileVersion {
		return nil, nil, errclass.Invalid("KeyringFile", path, fmt.Sprintf("unknown version %d", f.Version))
	}
	if len(f.Keys) == 0 || len(f.Keys) > maxKeys {
		return nil, nil, errclass.Invalid("KeyringFile", path, fmt.Sprintf("holds %d keys", len(f.Keys)))
	}
	for _, k := range f.Keys {
		if err := ValidateKey(k); err != nil {
			return nil, nil, &errclass.InvalidParameterError{Field: "KeyringFile", Value: path, Reason: "bad key", Err: err}
		}
	}
	if r := f.Rotation; r != nil {
		rot, err = r.state()
		if err != nil {
			return nil, nil, &errclass.InvalidParameterError{Field: "KeyringFile", Value: path, Reason: "bad rotation state", Err: err}
		}
	}
	return f.Keys, rot, nil
}

// saveKeyringFile writes the keyring to path atomically (a temporary file in the same
// directory, synced, then renamed), readable by its owner only.
func saveKeyringFile(path string, keys [][]byte, rot *rotationState) error {
	f := keyringFile{Version: keyringFileVersion, Keys: keys}
	if rot != nil {
		r := fileRec(rot)
		f.Rotation = &r
	}
	b, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".keyring-*")
	if err != nil {
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("gossip: write keyring file: %w", err)
	}
	return nil
}

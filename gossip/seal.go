package gossip

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/cnmkit/cnm/internal/errclass"
)

// KEKLen is the length of a key-encryption key (Config.StoreKEK): 32 bytes, for
// XChaCha20-Poly1305.
const KEKLen = chacha20poly1305.KeySize

// The Argon2id parameters that turn Config.StorePassphrase into a key-encryption key: RFC 9106's
// second recommended option (3 passes over 64 MiB, 4 lanes). They are written into each sealed
// record, so a later version may change them without losing the records already written.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	argonSaltLen = 16
)

// ErrKEK is matched (errors.Is) by the errors of a keyring record in the store that cannot be
// opened: it is sealed and no key-encryption key is configured, or the configured one (or
// passphrase) is not the one that sealed it. Such an error also matches
// errclass.ErrInvalidParameter and names Config.StoreKEK, never a key.
var ErrKEK = errors.New("gossip: wrong or missing key-encryption key for the keyring record")

// sealedRecordVersion is the version of a sealed keyring record: JSON with the version and the
// envelope; the envelope's plaintext is the clear record (version 1).
const sealedRecordVersion = 2

type sealedRecord struct {
	Version int      `json:"version"`
	Sealed  envelope `json:"sealed"`
}

// envelope is a record sealed with XChaCha20-Poly1305 under the key-encryption key; the store
// key of the record is the additional data, so a record copied to another prefix does not open.
type envelope struct {
	// KDF is "" for a key given as is (Config.StoreKEK), "argon2id" for a passphrase.
	KDF     string `json:"kdf,omitempty"`
	Salt    []byte `json:"salt,omitempty"`
	Time    uint32 `json:"time,omitempty"`
	Memory  uint32 `json:"memory,omitempty"`
	Threads uint8  `json:"threads,omitempty"`
	Nonce   []byte `json:"nonce"`
	Box     []byte `json:"box"`
}

// sealer seals and opens keyring records with the key-encryption key of Config.StoreKEK or
// Config.StorePassphrase. The zero passphrase and key mean none is configured.
type sealer struct {
	kek        []byte
	passphrase []byte

	mu      sync.Mutex // guards following
	salt    []byte     // of the passphrase's derived key below
	derived []byte
	params  [3]uint32
}

func newSealer(c Config) *sealer {
	if len(c.StoreKEK) == 0 && c.StorePassphrase == "" {
		return nil
	}
	return &sealer{kek: append([]byte(nil), c.StoreKEK...), passphrase: []byte(c.StorePassphrase)}
}

// key returns the key-encryption key for a record with envelope e (zero e: for a new record).
func (s *sealer) key(e *envelope) ([]byte, error) {
	if s.kek != nil {
		if e.KDF != "" {
			return nil, errors.New("the record is sealed with a passphrase, and a key is configured")
		}
		return s.kek, nil
	}
	if e.KDF == "" && e.Nonce != nil {
		return nil, errors.New("the record is sealed with a key, and a passphrase is configured")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Salt == nil { // a new record: the derived key of the last record read, or a fresh one
		if s.derived == nil {
			salt := make([]byte, argonSaltLen)
			if _, err := rand.Read(salt); err != nil {
				return nil, err
			}
			s.salt, s.params = salt, [3]uint32{argonTime, argonMemory, argonThreads}
			s.derived = argon2.IDKey(s.passphrase, salt, argonTime, argonMemory, argonThreads, KEKLen)
		}
		e.KDF, e.Salt, e.Time, e.Memory, e.Threads = "argon2id", s.salt, s.params[0], s.params[1], uint8(s.params[2])
		return s.derived, nil
	}
	if e.KDF != "argon2id" || e.Time == 0 || e.Time > 16 || e.Memory == 0 || e.Memory > 1<<21 || e.Threads == 0 {
		return nil, fmt.Errorf("unknown key derivation %q (time %d, memory %d KiB, threads %d)", e.KDF, e.Time, e.Memory, e.Threads)
	}
	p := [3]uint32{e.Time, e.Memory, uint32(e.Threads)}
	if s.derived != nil && string(s.salt) == string(e.Salt) && s.params == p {
		return s.derived, nil
	}
	k := argon2.IDKey(s.passphrase, e.Salt, e.Time, e.Memory, e.Threads, KEKLen)
	s.salt, s.params, s.derived = append([]byte(nil), e.Salt...), p, k
	return k, nil
}

// seal returns the sealed record of clear record b, stored at key.
func (s *sealer) seal(key string, b []byte) ([]byte, error) {
	var e envelope
	k, err := s.key(&e)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		return nil, err
	}
	e.Nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(e.Nonce); err != nil {
		return nil, err
	}
	e.Box = aead.Seal(nil, e.Nonce, b, []byte(key))
	return json.Marshal(sealedRecord{Version: sealedRecordVersion, Sealed: e})
}

// unsealStoreRecord returns the clear record of the record b read at key, and whether it was
// sealed. A sealed record without a sealer, or one the sealer cannot open, is an error matching
// ErrKEK; a clear record is returned as is.
func unsealStoreRecord(s *sealer, key string, b []byte) ([]byte, bool, error) {
	var rec sealedRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Version != sealedRecordVersion {
		return b, false, nil // clear, or not a record: decodeStoreRecord says which
	}
	kekErr := func(reason string) error {
		return &errclass.InvalidParameterError{Field: "StoreKEK", Value: key, Reason: reason, Err: ErrKEK}
	}
	if s == nil {
		return nil, true, kekErr("the keyring record is sealed: Config.StoreKEK or StorePassphrase is required")
	}
	k, err := s.key(&rec.Sealed)
	if err != nil {
		return nil, true, kekErr(err.Error())
	}
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		return nil, true, err
	}
	if len(rec.Sealed.Nonce) != aead.NonceSize() {
		return nil, true, kekErr("bad nonce")
	}
	out, err := aead.Open(nil, rec.Sealed.Nonce, rec.Sealed.Box, []byte(key))
	if err != nil {
		return nil, true, kekErr("does not open the keyring record: wrong key-encryption key or passphrase, or a record sealed for another prefix")
	}
	return out, true, nil
}

package gossip

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// rawRecord returns the keyring record as the store holds it.
func rawRecord(t *testing.T, s kvstore.Store) []byte {
	t.Helper()
	kv, err := s.Get(t.Context(), DefaultStorePrefixBase+DefaultClusterLabel+storeKeyring)
	if err != nil {
		t.Fatal(err)
	}
	return kv.Value
}

// holdsKey reports whether b shows key in any usual encoding.
func holdsKey(b, key []byte) bool {
	return bytes.Contains(b, key) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(key))) ||
		bytes.Contains(b, []byte(base64.RawStdEncoding.EncodeToString(key)))
}

// TestStoreSealed: with a key-encryption key the keyring record in the store is sealed (neither
// the key nor anything readable of it in the record); a node without the KEK, or with another,
// fails New with ErrKEK even with Config.Keys to fall back on; with the right one a node
// given nothing but the store starts with the cluster's keys. The same with a passphrase
// (Argon2id), and a clear record left by a node without a KEK is sealed by the first node with
// one.
func TestStoreSealed(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, KEKLen)
	other := bytes.Repeat([]byte{8}, KEKLen)
	for _, tc := range []struct {
		name        string
		right       func(*Config)
		wrong       []func(*Config)
		clearBefore bool
	}{
		{name: "kek", right: func(c *Config) { c.StoreKEK = kek },
			wrong: []func(*Config){func(c *Config) {}, func(c *Config) { c.StoreKEK = other }, func(c *Config) { c.StorePassphrase = "correct horse" }}},
		{name: "passphrase", right: func(c *Config) { c.StorePassphrase = "correct horse battery" },
			wrong: []func(*Config){func(c *Config) {}, func(c *Config) { c.StorePassphrase = "correct horse battery!" }, func(c *Config) { c.StoreKEK = kek }}},
		{name: "migration", right: func(c *Config) { c.StoreKEK = kek }, clearBefore: true,
			wrong: []func(*Config){func(c *Config) {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := openBolt(t)
			key := testKey(3)
			first := testConfig("node-00", key)
			first.Store = store
			if !tc.clearBefore {
				tc.right(&first)
			}
			nd, err := New(first)
			if err != nil {
				t.Fatal(err)
			}
			if err := nd.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.clearBefore {
				if rec := rawRecord(t, store); !holdsKey(rec, key) {
					t.Fatal("the clear record does not hold the key: the test shows nothing")
				}
				second := testConfig("node-01", nil)
				second.Keys, second.Store = nil, store
				tc.right(&second)
				nd, err := New(second)
				if err != nil {
					t.Fatal(err)
				}
				if err := nd.Close(); err != nil {
					t.Fatal(err)
				}
			}
			rec := rawRecord(t, store)
			if holdsKey(rec, key) || !bytes.Contains(rec, []byte(`"sealed"`)) {
				t.Fatalf("the record in the store is not sealed: %.80s", rec)
			}
			if _, _, err := decodeStoreRecord("k", rec); err == nil {
				t.Fatal("a sealed record decodes as a clear one")
			}
			for i, wrong := range tc.wrong {
				cfg := testConfig("node-02", testKey(5)) // Config.Keys is no way around the KEK
				cfg.Store = store
				wrong(&cfg)
				nd, err := New(cfg)
				if err == nil {
					nd.Close()
					t.Fatalf("wrong KEK %d: New succeeded", i)
				}
				if !errors.Is(err, ErrKEK) || !errors.Is(err, errclass.ErrInvalidParameter) || !strings.Contains(err.Error(), "StoreKEK") {
					t.Fatalf("wrong KEK %d: %v, want ErrKEK naming StoreKEK", i, err)
				}
			}
			cfg := testConfig("node-03", nil)
			cfg.Keys, cfg.Store = nil, store
			tc.right(&cfg)
			nd, err = New(cfg)
			if err != nil {
				t.Fatalf("the right KEK: %v", err)
			}
			defer nd.Close()
			if keys := nd.Keys(); len(keys) != 1 || !bytes.Equal(keys[0], key) {
				t.Fatalf("node with the right KEK has %d keys, want the cluster's one", len(keys))
			}
		})
	}
}

func TestStoreKEKConfig(t *testing.T) {
	store := openBolt(t)
	for name, f := range map[string]func(*Config){
		"short KEK":         func(c *Config) { c.Store = store; c.StoreKEK = make([]byte, 16) },
		"both":              func(c *Config) { c.Store = store; c.StoreKEK = make([]byte, KEKLen); c.StorePassphrase = "long enough" },
		"short passphrase":  func(c *Config) { c.Store = store; c.StorePassphrase = "short" },
		"KEK without store": func(c *Config) { c.StoreKEK = make([]byte, KEKLen) },
	} {
		cfg := testConfig("node-00", testKey(1))
		f(&cfg)
		nd, err := New(cfg)
		if err == nil {
			nd.Close()
		}
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("%s: %v, want ErrInvalidParameter", name, err)
		}
	}
}

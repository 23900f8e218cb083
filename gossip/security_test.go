package gossip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// TestEavesdropper: everything the cluster sends is ciphertext (no value, network, table or
// node name in clear); a node with another key cannot join, is not listed by anyone, and
// learns nothing from the cluster's packets replayed to it: each is a counted rejection.
func TestEavesdropper(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.filter.mu.Lock()
	c.filter.tap = true
	c.filter.mu.Unlock()
	c.joinNetwork("secret-net")
	const marker = "value-only-members-may-read"
	if err := c.nodes[0].CreateEntry("secret-net", "endpoints", "ep1", []byte(marker)); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("secret-net", 1, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	c.filter.mu.Lock()
	c.filter.tap = false
	tapped := c.filter.tapped
	c.filter.mu.Unlock()
	if len(tapped) == 0 {
		t.Fatal("tapped no packet")
	}
	for _, p := range tapped {
		for _, clear := range []string{marker, "secret-net", "endpoints", "node-01"} {
			if bytes.Contains(p, []byte(clear)) {
				t.Fatalf("a packet on the wire holds %q in clear", clear)
			}
		}
	}

	eveCfg := testConfig("eve", testKey(99))
	eve, err := New(eveCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer eve.Close()
	if err := eve.JoinNetwork("secret-net"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := eve.Join(ctx, []string{c.nodes[0].LocalAddr().String()}); err == nil {
		t.Fatal("a node with another key joined")
	}
	waitFor(t, 5*time.Second, func() error {
		if c.nodes[0].Stats().DecryptFailures == 0 {
			return errors.New("the cluster did not count the eavesdropper's join")
		}
		return nil
	})

	// Replay everything the cluster sent to eve.
	conn, err := net.Dial("udp", eve.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := 0
	for _, p := range tapped {
		if _, err := conn.Write(p); err == nil {
			sent++
		}
		if sent%50 == 0 {
			time.Sleep(5 * time.Millisecond) // do not overrun eve's socket buffer
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if got := eve.Stats().DecryptFailures; got < uint64(sent) {
			return fmt.Errorf("eve rejected %d of %d replayed packets", got, sent)
		}
		return nil
	})
	if got := eve.Members(); len(got) != 1 {
		t.Errorf("eve learnt members %v", got)
	}
	if got := eve.Entries("secret-net", ""); len(got) != 0 {
		t.Errorf("eve learnt entries %v", got)
	}
	for _, nd := range c.nodes {
		for _, m := range nd.Members() {
			if m.Name == "eve" {
				t.Errorf("%s lists eve", nd.Name())
			}
		}
	}
}

// TestWrongLabel: the right key with another cluster label cannot join either.
func TestWrongLabel(t *testing.T) {
	c := newCluster(t, 2, nil)
	cfg := testConfig("other", testKey(1))
	cfg.ClusterLabel = "another-cluster"
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := o.Join(ctx, []string{c.nodes[0].LocalAddr().String()}); err == nil {
		t.Fatal("a node with another label joined")
	}
	waitFor(t, 5*time.Second, func() error {
		if c.nodes[0].Stats().LabelRejects == 0 {
			return errors.New("label rejection not counted")
		}
		return nil
	})
}

// TestGarbagePackets: garbage, truncated and forged packets and streams sent to a node's port
// are rejected and counted; the node keeps working.
func TestGarbagePackets(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.joinNetwork("net1")
	target := c.nodes[0]
	addr := target.LocalAddr().String()
	label := []byte{244, byte(len(DefaultClusterLabel))}
	label = append(label, DefaultClusterLabel...)
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	packets := [][]byte{
		random(1), random(7), random(64), random(1400), random(9000),
		{244},                                    // label header cut short
		{244, 40, 'c', 'n'},                      // label longer than the packet
		{244, 0},                                 // empty label
		append([]byte{244, 3}, "xyz"...),         // another label
		append(bytes.Clone(label), random(3)...), // right label, too short for AES-GCM
		append(bytes.Clone(label), random(100)...),           // right label, forged ciphertext
		append(append(bytes.Clone(label), 1), random(60)...), // right label and version byte
		{0}, // a bare message type
	}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, p := range packets {
		if _, err := conn.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	streams := [][]byte{
		random(200),
		append(bytes.Clone(label), random(200)...),
		{244},
		append(bytes.Clone(label), 1, 0, 0, 0, 0),
	}
	for _, s := range streams {
		tc, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = tc.Write(s)
		_ = tc.Close()
	}
	want := uint64(len(packets) + len(streams))
	waitFor(t, 10*time.Second, func() error {
		s := target.Stats()
		if s.Rejected()+s.OtherErrors < want {
			return fmt.Errorf("counted %d rejections (%+v), want >= %d", s.Rejected()+s.OtherErrors, s, want)
		}
		return nil
	})
	t.Logf("stats after garbage: %+v", target.Stats())
	if err := c.nodes[1].CreateEntry("net1", "t", "after-garbage", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	c.waitTablesAgree("net1", 1, 10*time.Second)
}

// TestMalformedMessages: cnm messages that arrive intact through memberlist but do not decode
// are rejected and counted, never applied.
func TestMalformedMessages(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.nodes[0], c.nodes[1]
	bad := [][]byte{ // (memberlist does not deliver an empty user message at all)
		{wireVersion}, {9, 1}, {wireVersion, 99},
		{wireVersion, byte(msgTableBatch), 0xff, 0xff, 0xff, 0xff, 0x0f},
		{wireVersion, byte(msgRotation), 1, 1, 1, 1, 5, 1, 2},
		{wireVersion, byte(msgBulkSync), 200},
	}
	peer := a.aliveNodes()[b.Name()]
	for _, m := range bad {
		if err := a.ml.SendReliable(peer, m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() error {
		if got := b.Stats().MalformedMessages; got < uint64(len(bad)) {
			return fmt.Errorf("%d malformed messages counted, want %d", got, len(bad))
		}
		return nil
	})
}

// TestBadKeys: every bad key input is a typed error; no key material in any message.
func TestBadKeys(t *testing.T) {
	good := testKey(1)
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
	}{
		{"no keys", func(c *Config) { c.Keys = nil }},
		{"short key", func(c *Config) { c.Keys = [][]byte{make([]byte, 15)} }},
		{"long key", func(c *Config) { c.Keys = [][]byte{good, make([]byte, 33)} }},
		{"no name", func(c *Config) { c.NodeName = "" }},
		{"unspecified advertise address", func(c *Config) { c.AdvertiseAddr = netip.IPv4Unspecified() }},
		{"zoned bind address", func(c *Config) { c.BindAddr = netip.MustParseAddr("fe80::1%eth0") }},
		{"bad port", func(c *Config) { c.BindPort = 70000 }},
		{"negative interval", func(c *Config) { c.GossipInterval = -time.Second }},
		{"probe timeout above interval", func(c *Config) { c.ProbeTimeout = 2 * c.ProbeInterval }},
		{"long label", func(c *Config) { c.ClusterLabel = string(make([]byte, 256)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("n", good)
			tc.cfg(&cfg)
			nd, err := New(cfg)
			if err == nil {
				nd.Close()
				t.Fatal("New accepted a bad config")
			}
			if !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Errorf("error %v is not an invalid parameter", err)
			}
			var ipe *errclass.InvalidParameterError
			if !errors.As(err, &ipe) || ipe.Field == "" {
				t.Errorf("error %v names no field", err)
			}
		})
	}

	nd, err := New(testConfig("n", good))
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	secret := testKey(42)
	errs := map[string]struct {
		err   error
		class error
	}{
		"AddKey 15 bytes":   {nd.AddKey(secret[:15]), errclass.ErrInvalidParameter},
		"UseKey unknown":    {nd.UseKey(secret), errclass.ErrNotFound},
		"RemoveKey unknown": {nd.RemoveKey(secret), errclass.ErrNotFound},
		"RemoveKey primary": {nd.RemoveKey(good), errclass.ErrConflict},
	}
	for name, e := range errs {
		if !errors.Is(e.err, e.class) {
			t.Errorf("%s: %v, want class %v", name, e.err, e.class)
		}
		if e.err != nil && (bytes.Contains([]byte(e.err.Error()), secret) || bytes.Contains([]byte(e.err.Error()), good)) {
			t.Errorf("%s: error shows key material", name)
		}
	}
	// add, use, remove by hand.
	if err := nd.AddKey(secret); err != nil {
		t.Fatal(err)
	}
	if err := nd.UseKey(secret); err != nil {
		t.Fatal(err)
	}
	if err := nd.RemoveKey(good); err != nil {
		t.Fatal(err)
	}
	if got := nd.KeyringStatus(); got.Primary != KeyID(secret) || len(got.Keys) != 1 {
		t.Errorf("after add/use/remove: %+v", got)
	}
	if err := nd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := nd.AddKey(secret); !errors.Is(err, ErrClosed) {
		t.Errorf("AddKey after Close: %v", err)
	}
	if _, err := nd.Join(t.Context(), []string{"127.0.0.1:1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of many nodes' loggers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// TestKeysNeverLogged: through a rotation, a key added by hand and a bad key, every log line
// of every node at debug level (memberlist's included) shows no key, raw, hex or base64.
func TestKeysNeverLogged(t *testing.T) {
	var logs syncBuffer
	var budget rotationBudget
	budget.allow(1)
	c := newCluster(t, 3, func(i int, cfg *Config) {
		cfg.RotationInterval = time.Second
		cfg.testAdvance = budget.hook
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	waitFor(t, 30*time.Second, func() error { return keysAgree(c.nodes, 1) })
	manual := testKey(77)
	if err := c.nodes[0].AddKey(manual); err != nil {
		t.Fatal(err)
	}
	_ = c.nodes[0].AddKey(manual[:5])
	keys := append(c.nodes[0].Keys(), testKey(1), manual)
	out := logs.Bytes()
	if len(out) == 0 {
		t.Fatal("nothing logged")
	}
	for _, k := range keys {
		for _, form := range [][]byte{k, []byte(hex.EncodeToString(k)), []byte(base64.StdEncoding.EncodeToString(k)),
			[]byte(base64.RawStdEncoding.EncodeToString(k)), []byte(fmt.Sprint(k))} {
			if bytes.Contains(out, form) {
				t.Fatalf("key %s appears in the logs", KeyID(k))
			}
		}
	}
}

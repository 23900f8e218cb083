package cnm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/internal/wgtun"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
	"golang.org/x/sys/unix"
)

// encHost is a host of the encrypted overlay tests: a namespace on the lab's underlay and its
// Controller.
type encHost struct {
	name            string
	vtep            netip.Prefix
	ns              *netns.NS
	c               *cnm.Controller
	dataDir, runDir string
}

// encLab is a cluster of encrypted overlay tests: etcd, the gossip key and the
// key-encryption key that seals the gossip keyring record in etcd.
type encLab struct {
	lab    *ovLab
	gs     kvstore.Store
	key    []byte
	kek    []byte
	rotate time.Duration
	hosts  []*encHost // the started ones
	made   int        // hosts made, started or not
}

// encCluster starts n hosts (192.0.2.21, .22, ...) sharing etcd and a gossip cluster whose key
// rotates every rotate (0: never during the test) and whose keyring record is sealed.
func encCluster(t *testing.T, lab *ovLab, n int, rotate time.Duration) *encLab {
	t.Helper()
	ec := storetest.StartEtcd(t)
	l := &encLab{lab: lab, gs: openEtcd(t, ec.Endpoints(), "enc"), rotate: rotate, kek: make([]byte, gossip.KEKLen)}
	var err error
	if l.key, err = gossip.NewKey(); err != nil {
		t.Fatal(err)
	}
	rand.Read(l.kek)
	if l.rotate == 0 {
		l.rotate = time.Hour
	}
	for range n {
		h, err := l.start(t, l.kek)
		if err != nil {
			t.Fatalf("cnm.New %s: %v", h.name, err)
		}
	}
	return l
}

// start starts the next host, whose gossip plane opens the keyring record with kek.
func (l *encLab) start(t *testing.T, kek []byte) (*encHost, error) {
	t.Helper()
	i := l.made
	l.made++
	h := &encHost{name: fmt.Sprintf("host-%c", 'a'+i), vtep: netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/24", 21+i)),
		dataDir: t.TempDir(), runDir: t.TempDir()}
	h.ns = l.lab.host(t, h.name, h.vtep)
	var peers []string
	if i > 0 {
		peers = []string{l.hosts[0].c.GossipNode().LocalAddr().String()}
	}
	if err := l.open(t, h, kek, peers); err != nil {
		return h, err
	}
	l.hosts = append(l.hosts, h)
	return h, nil
}

// open starts host h's Controller (again, after a Close: same data and run directories).
func (l *encLab) open(t *testing.T, h *encHost, kek []byte, peers []string) error {
	t.Helper()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: h.dataDir, RunDir: h.runDir, HostNetns: h.ns.Path(),
		GlobalStore: l.gs, Hostname: h.name, StoreTimeout: 2 * time.Second,
		Gossip: &gossip.Config{BindAddr: netip.MustParseAddr("127.0.0.1"), Keys: [][]byte{l.key}, RotationInterval: l.rotate, StoreKEK: kek,
			ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, GossipInterval: 50 * time.Millisecond},
		GossipPeers: peers,
		Overlay:     overlay.Config{VTEP: h.vtep.Addr()},
	})
	if err != nil {
		return err
	}
	h.c = c
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	return nil
}

// udpSeen captures the frames on host's underlay port while during runs and returns the UDP
// packets seen: destination port and payload.
func (l *ovLab) udpSeen(t *testing.T, host string, d time.Duration, during func()) (ports map[uint16]int, payloads [][]byte) {
	t.Helper()
	port, err := nlHandle(t, l.lab).LinkByName("ul-" + host)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := l.lab.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: port.Attrs().Index})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); during() }()
	defer func() { <-done }()
	ports = map[uint16]int{}
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n < 14+20+8 {
			continue
		}
		f := buf[:n]
		if f[12] != 0x08 || f[13] != 0x00 { // IPv4
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8 { // UDP
			continue
		}
		udp := ip[ihl:]
		ports[binary.BigEndian.Uint16(udp[2:4])]++
		payloads = append(payloads, slices.Clone(udp[8:]))
	}
	return ports, payloads
}

// bulk sends size random bytes over TCP from the namespace at fromPath to ln (listening in
// another) and checks they arrive intact.
func bulk(fromPath string, to netip.AddrPort, ln net.Listener, size int) error {
	from, err := netns.Open(fromPath)
	if err != nil {
		return err
	}
	defer from.Close()
	data := make([]byte, size)
	rand.Read(data)
	got := make(chan []byte, 1)
	go func() {
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		s, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(s)
		got <- b
	}()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", to.String(), 2*time.Second)
		return err
	}); err != nil {
		<-got
		return err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, werr := c.Write(data)
	c.Close()
	b := <-got
	if werr != nil {
		return werr
	}
	if !bytes.Equal(b, data) {
		return fmt.Errorf("received %d bytes, want the %d sent", len(b), len(data))
	}
	return nil
}

// TestPrivilegedOverlayEncrypted: two hosts with an encrypted overlay network and a plain one
// beside it. Containers on the two hosts ping and exchange TCP on both; on the underlay the
// encrypted network's traffic is WireGuard only (UDP to the WireGuard port, no VXLAN port, the
// inner addresses nowhere in clear) while the plain one's is VXLAN; the MTU accounts for both
// overheads; the hosts' keys travel in the network's gossip table; the tunnel goes with the
// last encrypted endpoint.
func TestPrivilegedOverlayEncrypted(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	lab := newOvLab(t)
	el := encCluster(t, lab, 3, 0)
	a, b, c := el.hosts[0], el.hosts[1], el.hosts[2]
	enc, err := a.c.NewNetwork(ctx, "enc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.81.0.0/24")),
		network.WithDriverLabels(map[string]string{overlay.LabelEncrypted: ""}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.NewNetwork(ctx, "plain", "overlay", network.WithSubnet(netip.MustParsePrefix("10.82.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts both networks", func() bool { return hasNetwork(b.c, "enc") && hasNetwork(b.c, "plain") })
	c1 := mustSandbox(t, a.c, "c1")
	c2 := mustSandbox(t, b.c, "c2")
	e1 := mustConnect(t, a.c, "enc", "c1")
	e2 := mustConnect(t, b.c, "enc", "c2")
	mustConnect(t, a.c, "plain", "c1")
	p2 := mustConnect(t, b.c, "plain", "c2")
	ip1, ip2 := e1.Info().IPv4.Addr(), e2.Info().IPv4.Addr()

	waitFor(t, 15*time.Second, "c1 reaches c2 on the encrypted network", func() bool {
		_, ok := nstest.Ping(c1.Key(), ip2.String(), 1)
		return ok
	})
	if _, ok := nstest.Ping(c2.Key(), ip1.String(), 3); !ok {
		t.Fatal("c2 does not reach c1 on the encrypted network")
	}
	// TCP, a few megabytes: full-size segments cross at the network's MTU.
	ln := listenIn(t, c2.Key(), netip.AddrPortFrom(ip2, 8080).String())
	if err := bulk(c1.Key(), netip.AddrPortFrom(ip2, 8080), ln, 4<<20); err != nil {
		t.Fatalf("TCP over the encrypted network: %v", err)
	}
	// The MTU: the underlay's 1500 less WireGuard's 60 and VXLAN-over-IPv6's 70.
	if out, err := nstest.ExecContext(ctx, c1.Key(), "ip", "-o", "link", "show", e1.Info().IfName); err != nil || !strings.Contains(out, "mtu 1370 ") {
		t.Fatalf("c1's encrypted interface: %s (%v), want mtu 1370", out, err)
	}

	// On the underlay: WireGuard (UDP 51820) only, while c1 pings c2 on the encrypted network.
	ports, payloads := lab.udpSeen(t, "host-a", 2*time.Second, func() { nstest.Ping(c1.Key(), ip2.String(), 3) })
	if ports[overlay.DefaultWireGuardPort] < 3 || ports[overlay.DefaultPort] != 0 {
		t.Fatalf("UDP packets on the underlay by destination port: %v, want WireGuard's (%d) and no VXLAN (%d)", ports, overlay.DefaultWireGuardPort, overlay.DefaultPort)
	}
	for _, p := range payloads {
		if bytes.Contains(p, ip1.AsSlice()) || bytes.Contains(p, ip2.AsSlice()) || p[0] != 4 && p[0] != 1 && p[0] != 2 && p[0] != 3 {
			t.Fatalf("an underlay packet shows an inner address or is no WireGuard message: % x", p[:min(len(p), 64)])
		}
	}
	// The plain network beside it is VXLAN with its VNI.
	plain, err := b.c.Network("plain")
	if err != nil {
		t.Fatal(err)
	}
	var v uint32
	if _, err := fmt.Sscan(plain.Inspect().Options[overlay.LabelVNI], &v); err != nil {
		t.Fatal(err)
	}
	if !lab.vxlanSeen(t, "host-a", 3*time.Second, v, func() { nstest.Ping(c1.Key(), p2.Info().IPv4.Addr().String(), 3) }, false) {
		t.Fatalf("no VXLAN packet with VNI %d seen on the underlay while c1 pinged c2 on the plain network", v)
	}

	// Each host's key is in the network's tunnel table, and the tunnel devices peer.
	nid := gossip.NetworkID(enc.ID())
	waitFor(t, 5*time.Second, "both hosts' keys in the tunnel table", func() bool {
		return len(a.c.GossipNode().Entries(nid, "tunnel")) == 2
	})
	if out, err := nstest.Exec(a.ns, "ip", "-6", "route", "show", "dev", "cnmwg0"); err != nil || !strings.Contains(out, "fdc7:6e6d:7767::c000:216") {
		t.Fatalf("host-a's routes through the tunnel: %s (%v), want host-b's tunnel address", out, err)
	}

	// host-c joins the network: every host peers with it, without a restart; it leaves:
	// every host forgets it.
	waitFor(t, 10*time.Second, "host-c adopts enc", func() bool { return hasNetwork(c.c, "enc") })
	c3 := mustSandbox(t, c.c, "c3")
	e3 := mustConnect(t, c.c, "enc", "c3")
	waitFor(t, 15*time.Second, "c1 reaches c3 on the encrypted network", func() bool {
		_, ok := nstest.Ping(c1.Key(), e3.Info().IPv4.Addr().String(), 1)
		return ok
	})
	if _, ok := nstest.Ping(c3.Key(), ip2.String(), 2); !ok {
		t.Fatal("c3 does not reach c2 on the encrypted network")
	}
	const tunC = "fdc7:6e6d:7767::c000:217"
	for _, h := range []*encHost{a, b} {
		if out, err := nstest.Exec(h.ns, "ip", "-6", "route", "show", "dev", "cnmwg0"); err != nil || !strings.Contains(out, tunC) {
			t.Fatalf("%s's routes through the tunnel: %s (%v), want host-c's tunnel address", h.name, out, err)
		}
	}
	if err := c.c.Disconnect(ctx, "enc", "c3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-a and host-b forget host-c", func() bool {
		for _, h := range []*encHost{a, b} {
			if out, err := nstest.Exec(h.ns, "ip", "-6", "route", "show", "dev", "cnmwg0"); err != nil || strings.Contains(out, tunC) {
				return false
			}
		}
		return true
	})
	if _, ok := nstest.Ping(c1.Key(), ip2.String(), 1); !ok {
		t.Fatal("c1 no longer reaches c2 after host-c left")
	}

	// The gossip keyring record in etcd is sealed: no key in it; a host with another
	// key-encryption key, or none, fails to start, and says why.
	kv, err := el.gs.Get(ctx, gossip.DefaultStorePrefixBase+gossip.DefaultClusterLabel+"/keyring")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range a.c.GossipNode().Keys() {
		if bytes.Contains(kv.Value, []byte(base64.StdEncoding.EncodeToString(k))) || bytes.Contains(kv.Value, k) {
			t.Fatal("the keyring record in etcd shows a gossip key")
		}
	}
	if !bytes.Contains(kv.Value, []byte(`"sealed"`)) {
		t.Fatalf("the keyring record in etcd is not sealed: %.60s", kv.Value)
	}
	wrong := make([]byte, gossip.KEKLen)
	for _, kek := range [][]byte{wrong, nil} {
		if h, err := el.start(t, kek); !errors.Is(err, gossip.ErrKEK) || !strings.Contains(err.Error(), "StoreKEK") {
			t.Fatalf("%s with a wrong or missing key-encryption key: %v, want gossip.ErrKEK naming StoreKEK", h.name, err)
		}
	}

	// The last encrypted endpoint goes: the tunnel goes with it; the plain network stays.
	if err := a.c.Disconnect(ctx, "enc", "c1"); err != nil {
		t.Fatal(err)
	}
	if out, _ := nstest.Exec(a.ns, "ip", "link", "show", "cnmwg0"); !strings.Contains(out, "does not exist") {
		t.Fatalf("host-a's tunnel after its last encrypted endpoint left: %s", out)
	}
	if _, ok := nstest.Ping(c1.Key(), p2.Info().IPv4.Addr().String(), 1); !ok {
		t.Fatal("the plain network stopped with the tunnel")
	}
}

// tunnelKeys returns the public keys host owner publishes in network nid's tunnel table, as
// host from sees them.
func tunnelKeys(t *testing.T, from *encHost, nid gossip.NetworkID, owner string) []string {
	t.Helper()
	for _, e := range from.c.GossipNode().Entries(nid, "tunnel") {
		if e.Owner != owner {
			continue
		}
		var te struct {
			Keys []struct {
				Public string `json:"public"`
			} `json:"keys"`
		}
		if err := json.Unmarshal(e.Value, &te); err != nil {
			t.Fatalf("tunnel entry of %s: %v", owner, err)
		}
		var out []string
		for _, k := range te.Keys {
			out = append(out, k.Public)
		}
		return out
	}
	return nil
}

// udpIn opens a UDP socket in the namespace at path: bound to laddr, or connected to raddr.
func udpIn(t *testing.T, path string, laddr, raddr netip.AddrPort) *net.UDPConn {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		if raddr.IsValid() {
			c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(raddr))
		} else {
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpStream is a numbered UDP stream from one container to another.
type udpStream struct {
	tx   *net.UDPConn
	got  map[uint32]int
	done chan struct{} // closed when the receiver has had nothing for 2 s
	sent uint32
}

func newUDPStream(t *testing.T, from, to string, dst netip.AddrPort) *udpStream {
	t.Helper()
	rx := udpIn(t, to, dst, netip.AddrPort{})
	_ = rx.SetReadBuffer(4 << 20)
	s := &udpStream{tx: udpIn(t, from, netip.AddrPort{}, dst), got: map[uint32]int{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 64)
		for {
			_ = rx.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := rx.Read(buf)
			if err != nil {
				return
			}
			if n == 4 {
				s.got[binary.BigEndian.Uint32(buf)]++
			}
		}
	}()
	return s
}

func (s *udpStream) send() error {
	_, err := s.tx.Write(binary.BigEndian.AppendUint32(nil, s.sent))
	s.sent++
	return err
}

// lost waits for the receiver to end and returns the datagrams not received exactly once.
func (s *udpStream) lost() []uint32 {
	<-s.done
	var lost []uint32
	for i := range s.sent {
		if s.got[i] != 1 {
			lost = append(lost, i)
		}
	}
	return lost
}

// TestPrivilegedOverlayEncryptedRotation: the gossip key rotates every few seconds, and with
// it each host's WireGuard key (a second device, peers switched one by one once their
// handshake on it succeeded, the older device closed once every peer sends on the newer),
// while numbered UDP streams run between three hosts (c1 to c2, c2 to c1, c3 to c1): every
// datagram arrives, exactly once.
func TestPrivilegedOverlayEncryptedRotation(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	lab := newOvLab(t)
	el := encCluster(t, lab, 3, 3*time.Second)
	a, b, c := el.hosts[0], el.hosts[1], el.hosts[2]
	enc, err := a.c.NewNetwork(ctx, "enc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.83.0.0/24")),
		network.WithDriverLabels(map[string]string{overlay.LabelEncrypted: "true"}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b and host-c adopt enc", func() bool { return hasNetwork(b.c, "enc") && hasNetwork(c.c, "enc") })
	c1 := mustSandbox(t, a.c, "c1")
	c2 := mustSandbox(t, b.c, "c2")
	c3 := mustSandbox(t, c.c, "c3")
	ip1 := mustConnect(t, a.c, "enc", "c1").Info().IPv4.Addr()
	ip2 := mustConnect(t, b.c, "enc", "c2").Info().IPv4.Addr()
	mustConnect(t, c.c, "enc", "c3")
	waitFor(t, 15*time.Second, "c1 reaches c2, c2 and c3 reach c1", func() bool {
		_, ok1 := nstest.Ping(c1.Key(), ip2.String(), 1)
		_, ok2 := nstest.Ping(c2.Key(), ip1.String(), 1)
		_, ok3 := nstest.Ping(c3.Key(), ip1.String(), 1)
		return ok1 && ok2 && ok3
	})
	nid := gossip.NetworkID(enc.ID())
	streams := map[string]*udpStream{
		"c1→c2": newUDPStream(t, c1.Key(), c2.Key(), netip.AddrPortFrom(ip2, 9000)),
		"c2→c1": newUDPStream(t, c2.Key(), c1.Key(), netip.AddrPortFrom(ip1, 9000)),
		"c3→c1": newUDPStream(t, c3.Key(), c1.Key(), netip.AddrPortFrom(ip1, 9001)),
	}
	// Send every 2 ms on each stream until each host has been seen with three keys (two
	// rotations).
	seen := map[string]map[string]bool{a.name: {}, b.name: {}, c.name: {}}
	rotated := func() bool {
		for _, ks := range seen {
			if len(ks) < 3 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; !rotated(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s, the hosts were seen with keys %v; want three each (two rotations)", seen)
		}
		for name, s := range streams {
			if err := s.send(); err != nil {
				t.Fatalf("%s: send %d: %v", name, s.sent, err)
			}
		}
		if i%25 == 0 {
			for owner, ks := range seen {
				from := a
				if owner == a.name {
					from = b
				}
				for _, k := range tunnelKeys(t, from, nid, owner) {
					ks[k] = true
				}
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	for name, s := range streams {
		if lost := s.lost(); len(lost) > 0 {
			t.Errorf("%s: %d of %d datagrams lost or duplicated across two key rotations: %v", name, len(lost), s.sent, lost[:min(len(lost), 20)])
		} else {
			t.Logf("%s: %d datagrams, all delivered once, across two key rotations", name, s.sent)
		}
	}
	// Each rotation ends: each host, as another host sees it, closes the oldest device it had
	// when the streams stopped, or is seen with one device. The gossip key keeps rotating every
	// 3 s and a host starts its next rotation as soon as one ends, so under load another host
	// may never see the short time with one device (both changes of the entry can go in one
	// gossip round); the oldest device's going shows the same end.
	for _, owner := range []string{a.name, b.name, c.name} {
		from := a
		if owner == a.name {
			from = b
		}
		keys := tunnelKeys(t, from, nid, owner)
		if len(keys) == 0 {
			t.Fatalf("%s has no tunnel entry as %s sees it", owner, from.name)
		}
		oldest := keys[0]
		waitFor(t, 30*time.Second, owner+" closes its oldest device ("+oldest+") or is back to one", func() bool {
			keys := tunnelKeys(t, from, nid, owner)
			return len(keys) == 1 || !slices.Contains(keys, oldest)
		})
	}
}

// TestPrivilegedOverlayEncryptedImpostor: a host on the underlay that knows host-a's public
// key and claims host-b's tunnel address, with a key of its own, gets no handshake and no
// packet through: host-a peers only with the keys published in the gossip table.
func TestPrivilegedOverlayEncryptedImpostor(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	lab := newOvLab(t)
	el := encCluster(t, lab, 2, 0)
	a, b := el.hosts[0], el.hosts[1]
	enc, err := a.c.NewNetwork(ctx, "enc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.84.0.0/24")),
		network.WithDriverLabels(map[string]string{overlay.LabelEncrypted: ""}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts enc", func() bool { return hasNetwork(b.c, "enc") })
	mustSandbox(t, a.c, "c1")
	c2 := mustSandbox(t, b.c, "c2")
	e1 := mustConnect(t, a.c, "enc", "c1")
	mustConnect(t, b.c, "enc", "c2")
	waitFor(t, 15*time.Second, "c2 reaches c1", func() bool {
		_, ok := nstest.Ping(c2.Key(), e1.Info().IPv4.Addr().String(), 1)
		return ok
	})
	nid := gossip.NetworkID(enc.ID())
	pubA, err := wgtun.ParseKey(tunnelKeys(t, b, nid, a.name)[0])
	if err != nil {
		t.Fatal(err)
	}
	evil := lab.host(t, "evil", netip.MustParsePrefix("192.0.2.29/24"))
	key, err := wgtun.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	tunA, tunB := netip.MustParsePrefix("fdc7:6e6d:7767::c000:215/128"), netip.MustParsePrefix("fdc7:6e6d:7767::c000:216/128")
	dev, err := wgtun.Open(wgtun.Config{Name: "wg0", Netns: evil.Path(), PrivateKey: key, Port: overlay.DefaultWireGuardPort, Addr: tunB, MTU: 1420})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := dev.SetPeers([]wgtun.Peer{{PublicKey: pubA, Endpoint: netip.MustParseAddrPort("192.0.2.21:51820"), AllowedIPs: []netip.Prefix{tunA}, Keepalive: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Route(tunA); err != nil {
		t.Fatal(err)
	}
	if out, ok := nstest.Ping(evil.Path(), tunA.Addr().String(), 3); ok {
		t.Fatalf("the impostor reached host-a's tunnel address: %s", out)
	}
	if hs, err := dev.Handshakes(); err != nil || len(hs) != 0 {
		t.Fatalf("the impostor's handshakes: %v (%v), want none", hs, err)
	}
	// The real host-b still gets through.
	if _, ok := nstest.Ping(c2.Key(), e1.Info().IPv4.Addr().String(), 2); !ok {
		t.Fatal("c2 no longer reaches c1")
	}
}

// TestPrivilegedOverlayEncryptedRestart: a host's Controller restarts. Its WireGuard device
// lives in the process, so it goes with the Controller; the next one restores the endpoint,
// makes a device with a new key and publishes it, and the containers reach each other again.
func TestPrivilegedOverlayEncryptedRestart(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	lab := newOvLab(t)
	el := encCluster(t, lab, 2, 0)
	a, b := el.hosts[0], el.hosts[1]
	enc, err := a.c.NewNetwork(ctx, "enc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.85.0.0/24")),
		network.WithDriverLabels(map[string]string{overlay.LabelEncrypted: ""}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts enc", func() bool { return hasNetwork(b.c, "enc") })
	c1 := mustSandbox(t, a.c, "c1")
	mustSandbox(t, b.c, "c2")
	mustConnect(t, a.c, "enc", "c1")
	ip2 := mustConnect(t, b.c, "enc", "c2").Info().IPv4.Addr().String()
	waitFor(t, 15*time.Second, "c1 reaches c2", func() bool {
		_, ok := nstest.Ping(c1.Key(), ip2, 1)
		return ok
	})
	nid := gossip.NetworkID(enc.ID())
	before := tunnelKeys(t, b, nid, a.name)
	if err := a.c.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _ := nstest.Exec(a.ns, "ip", "link", "show", "cnmwg0"); !strings.Contains(out, "does not exist") {
		t.Fatalf("host-a's tunnel device after Close: %s", out)
	}
	if err := el.open(t, a, el.kek, []string{b.c.GossipNode().LocalAddr().String()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "c1 reaches c2 after host-a restarted", func() bool {
		_, ok := nstest.Ping(c1.Key(), ip2, 1)
		return ok
	})
	after := tunnelKeys(t, b, nid, a.name)
	if len(after) != 1 || slices.Equal(before, after) {
		t.Fatalf("host-a's published keys before the restart %v, after %v: want one new key", before, after)
	}
}

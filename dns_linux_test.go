package cnm_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/miekg/dns"
)

// dnsLab is a lab whose Controllers read the host's resolv.conf from a file of the test's.
type dnsLab struct {
	*lab
	hostResolv string
	dnsCfg     resolver.Config
}

func newDNSLab(t *testing.T, dnsCfg resolver.Config) *dnsLab {
	t.Helper()
	l := &dnsLab{lab: &lab{host: nstest.NewNS(t), dataDir: t.TempDir(), runDir: t.TempDir()}, dnsCfg: dnsCfg}
	l.hostResolv = filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(l.hostResolv, []byte("nameserver 192.0.2.53\nsearch corp.example\noptions ndots:3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l.c = l.open(t)
	return l
}

func (l *dnsLab) open(t *testing.T) *cnm.Controller {
	t.Helper()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(),
		HostResolvConf: l.hostResolv, DNS: l.dnsCfg})
	if err != nil {
		t.Fatalf("cnm.New: %v", err)
	}
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	return c
}

// dnsIn sends a query for name to 127.0.0.11:53 from inside sb's namespace, over proto.
func dnsIn(sb sandbox.Sandbox, proto, name string, qtype uint16) (*dns.Msg, error) {
	ns, err := netns.Open(sb.Key())
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var conn net.Conn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout(proto, resolver.Address.String(), time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	c := dns.Client{Net: proto, Timeout: 3 * time.Second}
	m, _, err := c.ExchangeWithConn(q, &dns.Conn{Conn: conn})
	return m, err
}

// answer is a query's result as text: the rcode and the answers' data ("NOERROR 10.10.0.2").
func answer(m *dns.Msg, err error) string {
	if err != nil {
		return "error"
	}
	out := []string{dns.RcodeToString[m.Rcode]}
	for _, rr := range m.Answer {
		f := strings.Fields(rr.String())
		out = append(out, f[len(f)-1])
	}
	return strings.Join(out, " ")
}

// wantDNS waits (the resolver follows the event stream) up to 5s until the query of name
// from sb over both UDP and TCP gives want.
func wantDNS(t *testing.T, sb sandbox.Sandbox, name string, qtype uint16, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, proto := range []string{"udp", "tcp"} {
		for {
			got := answer(dnsIn(sb, proto, name, qtype))
			if got == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %s from %s over %s: %q, want %q", name, dns.TypeToString[qtype], sb.ID(), proto, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPrivilegedDNS: db and web on new_bridge resolve each other by name, host name and alias
// from inside their namespaces; a sandbox on another network cannot; a sandbox on the default
// bridge keeps the host's resolvers; names go with a disconnect and come back after a restart.
func TestPrivilegedDNS(t *testing.T) {
	nstest.Privileged(t)
	l := newDNSLab(t, resolver.Config{})
	ctx := t.Context()
	mustNetwork(t, l.c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	mustNetwork(t, l.c, "isolated", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")))
	db := mustSandbox(t, l.c, "db", cnm.WithHostname("dbhost"))
	web := mustSandbox(t, l.c, "web")
	other := mustSandbox(t, l.c, "other")
	plain := mustSandbox(t, l.c, "plain")
	dbEp := mustConnect(t, l.c, "new_bridge", "db", endpoint.WithAliases("database"))
	webEp := mustConnect(t, l.c, "new_bridge", "web")
	mustConnect(t, l.c, "isolated", "other")
	mustConnect(t, l.c, cnm.DefaultNetwork, "plain")
	dbIP, webIP := dbEp.Info().IPv4.Addr().String(), webEp.Info().IPv4.Addr().String()

	for _, name := range []string{"db", "dbhost", "database", "DB.new_bridge"} {
		wantDNS(t, web, name, dns.TypeA, "NOERROR "+dbIP)
	}
	wantDNS(t, db, "web", dns.TypeA, "NOERROR "+webIP)
	wantDNS(t, db, "web", dns.TypeAAAA, "NOERROR") // the name exists, without IPv6
	rev, _ := dns.ReverseAddr(dbIP)
	wantDNS(t, web, rev, dns.TypePTR, "NOERROR db.new_bridge.")
	wantDNS(t, web, "nosuch", dns.TypeA, "NXDOMAIN")
	wantDNS(t, other, "db", dns.TypeA, "NXDOMAIN") // no network in common
	wantDNS(t, db, "other", dns.TypeA, "NXDOMAIN")

	rc := readFile(t, web.ResolvConfPath())
	for _, want := range []string{"nameserver 127.0.0.11\n", "search corp.example\n", "options ndots:0\n"} {
		if !strings.Contains(rc, want) {
			t.Errorf("web's resolv.conf lacks %q:\n%s", want, rc)
		}
	}
	if strings.Contains(rc, "192.0.2.53") && strings.Contains(rc, "nameserver 192.0.2.53") {
		t.Errorf("web's resolv.conf names the upstream as its nameserver:\n%s", rc)
	}
	// The default bridge network has no embedded resolver, as in Docker: the host's resolvers.
	if rc := readFile(t, plain.ResolvConfPath()); !strings.Contains(rc, "nameserver 192.0.2.53\n") || strings.Contains(rc, "127.0.0.11") {
		t.Errorf("plain's resolv.conf (default bridge) is not the host's:\n%s", rc)
	}
	if m, err := dnsIn(plain, "udp", "db", dns.TypeA); err == nil {
		t.Errorf("a resolver answers in plain's namespace (default bridge): %v", answer(m, err))
	}

	// Disconnect: db's names are gone for web at once, and db, on no network with DNS any
	// more, gets the host's resolvers back and nothing listens at 127.0.0.11.
	if err := l.c.Disconnect(ctx, "new_bridge", "db"); err != nil {
		t.Fatal(err)
	}
	wantDNS(t, web, "db", dns.TypeA, "NXDOMAIN")
	wantDNS(t, web, "database", dns.TypeA, "NXDOMAIN")
	waitFor(t, 5*time.Second, "db's resolv.conf back to the host's", func() bool {
		return strings.Contains(readFile(t, db.ResolvConfPath()), "nameserver 192.0.2.53\n")
	})
	if m, err := dnsIn(db, "udp", "web", dns.TypeA); err == nil {
		t.Errorf("db still served after leaving its last network with DNS: %v", answer(m, err))
	}

	// Restart: a new Controller serves the sandboxes again, from the state it restores.
	dbIP = mustConnect(t, l.c, "new_bridge", "db", endpoint.WithAliases("database")).Info().IPv4.Addr().String()
	wantDNS(t, web, "database", dns.TypeA, "NOERROR "+dbIP)
	if err := l.c.Close(); err != nil {
		t.Fatal(err)
	}
	if m, err := dnsIn(web, "udp", "db", dns.TypeA); err == nil {
		t.Errorf("answered while no Controller runs: %v", answer(m, err))
	}
	l.c = l.open(t)
	web, db = mustGet(t, l.c, "web"), mustGet(t, l.c, "db")
	wantDNS(t, web, "database", dns.TypeA, "NOERROR "+dbIP)
	wantDNS(t, db, "web", dns.TypeA, "NOERROR "+webIP)
	if rc := readFile(t, web.ResolvConfPath()); !strings.Contains(rc, "nameserver 127.0.0.11\n") {
		t.Errorf("web's resolv.conf after restart:\n%s", rc)
	}

	// Deleting a sandbox takes its names and its resolver.
	if err := l.c.DeleteSandbox(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	wantDNS(t, web, "db", dns.TypeA, "NXDOMAIN")
	if _, err := os.Stat(filepath.Dir(db.ResolvConfPath())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("db's files left after its delete (the resolver wrote one back?): %v", err)
	}
}

// upstreamIn runs a DNS server on addr:53 inside sb's namespace that answers every A query
// with 192.0.2.7. stop shuts it down and waits for it.
func upstreamIn(t *testing.T, sb sandbox.Sandbox, addr netip.Addr) (stop func()) {
	t.Helper()
	ns, err := netns.Open(sb.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var (
		pc net.PacketConn
		ln net.Listener
	)
	at := netip.AddrPortFrom(addr, 53).String()
	if err := ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", at); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", at); err != nil {
			pc.Close()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		}
		w.WriteMsg(m)
	})
	us, ts := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
	var wg sync.WaitGroup
	wg.Go(func() { us.ActivateAndServe() })
	wg.Go(func() { ts.ActivateAndServe() })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			us.Shutdown()
			ts.Shutdown()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestPrivilegedDNSForward: names that are not local go to the sandbox's --dns server (here
// one run in another sandbox of the network), from the sandbox's namespace; SERVFAIL once
// that server is down.
func TestPrivilegedDNSForward(t *testing.T) {
	nstest.Privileged(t)
	l := newDNSLab(t, resolver.Config{Timeout: time.Second})
	mustNetwork(t, l.c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	srv := mustSandbox(t, l.c, "upstream")
	srvIP := mustConnect(t, l.c, "new_bridge", "upstream").Info().IPv4.Addr()
	stop := upstreamIn(t, srv, srvIP)
	web := mustSandbox(t, l.c, "web", cnm.WithDNS(srvIP))
	mustConnect(t, l.c, "new_bridge", "web")

	wantDNS(t, web, "www.example.com", dns.TypeA, "NOERROR 192.0.2.7")
	wantDNS(t, web, "upstream", dns.TypeA, "NOERROR "+srvIP.String()) // local names stay local
	if rc := readFile(t, web.ResolvConfPath()); !strings.Contains(rc, "forwards other names to: "+srvIP.String()) {
		t.Errorf("web's resolv.conf does not name its upstream:\n%s", rc)
	}
	stop()
	start := time.Now()
	wantDNS(t, web, "www.example.com", dns.TypeA, "SERVFAIL")
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("SERVFAIL after %v, want about the 1s timeout", d)
	}
}

// TestPrivilegedDNSSocketsInSandbox: the resolver's sockets are in the sandbox's namespace,
// not the host's, and the Controller's Close leaves none open.
func TestPrivilegedDNSSocketsInSandbox(t *testing.T) {
	nstest.Privileged(t)
	l := newDNSLab(t, resolver.Config{})
	mustNetwork(t, l.c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	web := mustSandbox(t, l.c, "web")
	mustConnect(t, l.c, "new_bridge", "web")
	wantDNS(t, web, "web", dns.TypeA, "NOERROR 10.10.0.2")
	// Nothing listens on 127.0.0.11:53 in the host namespace.
	err := l.host.Do(func() error {
		c, err := net.DialTimeout("tcp", resolver.Address.String(), time.Second)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		return nil
	})
	if err != nil {
		t.Errorf("a resolver listens in the host namespace: %v", err)
	}
	if err := l.c.Close(); err != nil {
		t.Fatal(err)
	}
	if m, err := dnsIn(web, "tcp", "web", dns.TypeA); err == nil {
		t.Errorf("answered after Close: %s", answer(m, err))
	}
	l.c = l.open(t) // whose cleanup deletes the sandbox
}

// TestPrivilegedDNSFlood: one sandbox floods its resolver with queries and garbage from inside
// its namespace; another sandbox's queries are still answered, and the flooder is rate-limited
// rather than served without bound.
func TestPrivilegedDNSFlood(t *testing.T) {
	nstest.Privileged(t)
	l := newDNSLab(t, resolver.Config{QueryRate: 200})
	mustNetwork(t, l.c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	db, web := mustSandbox(t, l.c, "db"), mustSandbox(t, l.c, "web")
	dbIP := mustConnect(t, l.c, "new_bridge", "db").Info().IPv4.Addr().String()
	mustConnect(t, l.c, "new_bridge", "web")
	wantDNS(t, web, "db", dns.TypeA, "NOERROR "+dbIP)
	wantDNS(t, db, "web", dns.TypeA, "NOERROR 10.10.0.3")

	ns, err := netns.Open(web.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var conn net.Conn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.Dial("udp", resolver.Address.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion("db.", dns.TypeA)
	good, _ := q.Pack()
	garbage := [][]byte{{}, {1, 2, 3}, append(slices.Clone(good[:12]), 0xff, 0xfe), make([]byte, 4096)}
	var (
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		replies int
		sent    int
	)
	wg.Go(func() { // count what web gets back
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := conn.Read(buf); err != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			replies++
		}
	})
	flood := time.Now()
	for time.Since(flood) < time.Second {
		conn.Write(good)
		conn.Write(garbage[sent%len(garbage)])
		sent += 2
	}
	// While web floods (its last packets still queued), db's queries are answered promptly.
	for range 5 {
		start := time.Now()
		if got := answer(dnsIn(db, "udp", "web", dns.TypeA)); got != "NOERROR 10.10.0.3" {
			t.Errorf("db during web's flood: %q", got)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("db's query took %v during web's flood", d)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("web sent %d packets in 1s, got %d replies (rate limit 200/s, burst 200)", sent, replies)
	if replies == 0 || replies > 200+400 {
		t.Errorf("web got %d replies to %d packets in ~1.3s, want some and at most ~600 (200/s, burst 200)", replies, sent)
	}
	wantDNS(t, web, "db", dns.TypeA, "NOERROR "+dbIP) // once the flood is over, web is served again
}

// TestPrivilegedDNSLateDriver: a network whose driver registers after New (restored without an
// event) is served once RegisterDriver restores it.
func TestPrivilegedDNSLateDriver(t *testing.T) {
	nstest.Privileged(t)
	l := newDNSLab(t, resolver.Config{})
	l.c.Close()
	br := func() *bridge.Driver {
		d, err := bridge.New(bridge.Config{HostNetns: l.host.Path()})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(),
		HostResolvConf: l.hostResolv, Drivers: map[string]drivers.Driver{"late": br()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewNetwork(t.Context(), "latenet", "late", network.WithSubnet(netip.MustParsePrefix("10.30.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, c, "db")
	mustSandbox(t, c, "web")
	dbIP := mustConnect(t, c, "latenet", "db").Info().IPv4.Addr().String()
	mustConnect(t, c, "latenet", "web")
	c.Close()

	l.c = l.open(t) // without the "late" driver: latenet waits
	web := mustGet(t, l.c, "web")
	if err := l.c.RegisterDriver(t.Context(), "late", br()); err != nil {
		t.Fatal(err)
	}
	wantDNS(t, web, "db", dns.TypeA, "NOERROR "+dbIP)
}

package resolver

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	dbEp  = Endpoint{ID: "e1", NetworkID: "n1", NetworkName: "new_bridge", SandboxID: "db", Names: []string{"db", "dbhost", "database"}, IPv4: netip.MustParseAddr("10.10.0.2"), IPv6: netip.MustParseAddr("fd00::2")}
	webEp = Endpoint{ID: "e2", NetworkID: "n1", NetworkName: "new_bridge", SandboxID: "web", Names: []string{"web"}, IPv4: netip.MustParseAddr("10.10.0.3")}
	othEp = Endpoint{ID: "e3", NetworkID: "n2", NetworkName: "other", SandboxID: "other", Names: []string{"other"}, IPv4: netip.MustParseAddr("10.20.0.2")}
)

func newResolver(t *testing.T, cfg Config) *Resolver {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	r.AddEndpoint(dbEp)
	r.AddEndpoint(webEp)
	r.AddEndpoint(othEp)
	return r
}

// serve serves sandbox id on loopback sockets of the test process and returns the address
// its clients query.
func serve(t *testing.T, r *Resolver, id string, upstreams ...netip.AddrPort) netip.AddrPort {
	t.Helper()
	pc, ln, err := loopbackPair()
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := r.Serve(Sandbox{ID: id, UDP: pc, TCP: ln, Upstreams: upstreams}); err != nil {
		t.Fatal(err)
	}
	return addr
}

// loopbackPair listens on one port of 127.0.0.1 for UDP and TCP. The kernel picks the UDP
// port; the same TCP port may be in use by another process's connection (the test packages
// run side by side), so a refused TCP bind tries another port.
func loopbackPair() (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, err
}

func query(t *testing.T, proto string, server netip.AddrPort, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m, err := exchange(proto, server, name, qtype)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], proto, err)
	}
	return m
}

func exchange(proto string, server netip.AddrPort, name string, qtype uint16) (*dns.Msg, error) {
	c := dns.Client{Net: proto, Timeout: 5 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	m, _, err := c.Exchange(q, server.String())
	return m, err
}

// answers returns the rcode and the answers of m as text ("A 10.0.0.2").
func summary(m *dns.Msg) []string {
	out := []string{dns.RcodeToString[m.Rcode]}
	for _, rr := range m.Answer {
		f := strings.Fields(rr.String())
		out = append(out, strings.Join(f[3:], " "))
	}
	return out
}

func TestLocalNames(t *testing.T) {
	r := newResolver(t, Config{})
	web := serve(t, r, "web")
	other := serve(t, r, "other")
	for _, tc := range []struct {
		server netip.AddrPort
		name   string
		qtype  uint16
		want   []string
	}{
		{web, "db", dns.TypeA, []string{"NOERROR", "A 10.10.0.2"}},
		{web, "DB.", dns.TypeA, []string{"NOERROR", "A 10.10.0.2"}},
		{web, "database", dns.TypeA, []string{"NOERROR", "A 10.10.0.2"}},
		{web, "dbhost", dns.TypeAAAA, []string{"NOERROR", "AAAA fd00::2"}},
		{web, "db.new_bridge", dns.TypeA, []string{"NOERROR", "A 10.10.0.2"}},
		{web, "web", dns.TypeAAAA, []string{"NOERROR"}}, // the name exists, without IPv6
		{web, "db", dns.TypeMX, []string{"NOERROR"}},
		{web, "nosuch", dns.TypeA, []string{"NXDOMAIN"}},
		{web, "nosuch.new_bridge", dns.TypeA, []string{"NXDOMAIN"}},
		{web, "other", dns.TypeA, []string{"NXDOMAIN"}}, // on a network web is not on
		{other, "db", dns.TypeA, []string{"NXDOMAIN"}},
		{other, "other", dns.TypeA, []string{"NOERROR", "A 10.20.0.2"}},
		{web, "2.0.10.10.in-addr.arpa", dns.TypePTR, []string{"NOERROR", "PTR db.new_bridge."}},
		{web, "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", dns.TypePTR, []string{"NOERROR", "PTR db.new_bridge."}},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			m := query(t, proto, tc.server, tc.name, tc.qtype)
			if diff := cmp.Diff(tc.want, summary(m)); diff != "" {
				t.Errorf("%s %s from %s over %s (-want +got):\n%s", tc.name, dns.TypeToString[tc.qtype], tc.server, proto, diff)
			}
		}
	}
	// PTR of an address on a network the asker is not on goes upstream: web has none, SERVFAIL.
	if m := query(t, "udp", web, "2.0.20.10.in-addr.arpa", dns.TypePTR); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("PTR of other's address from web: %v, want SERVFAIL (forwarded, no upstream)", summary(m))
	}
}

func TestNamesFollowEndpoints(t *testing.T) {
	r := newResolver(t, Config{})
	web := serve(t, r, "web")
	r.RemoveEndpoint("n1", "e1")
	if m := query(t, "udp", web, "db", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("db after its endpoint left: %v, want NXDOMAIN", summary(m))
	}
	moved := dbEp
	moved.IPv4 = netip.MustParseAddr("10.10.0.9")
	r.AddEndpoint(moved)
	r.AddEndpoint(moved) // replaces, never duplicates
	if diff := cmp.Diff([]string{"NOERROR", "A 10.10.0.9"}, summary(query(t, "udp", web, "db", dns.TypeA))); diff != "" {
		t.Error(diff)
	}
	r.RemoveEndpoint("n1", "e2") // web leaves new_bridge: it shares no network with db any more
	if m := query(t, "udp", web, "db", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("db from web off the network: %v, want NXDOMAIN", summary(m))
	}
	r.Reset()
	if got := r.Endpoints(); len(got) != 0 {
		t.Errorf("endpoints after Reset: %v", got)
	}
}

// upstream runs a DNS server on loopback answering every A query with 192.0.2.1, and with
// count answers (so that big ones are truncated over UDP).
func upstream(t *testing.T, count int) netip.AddrPort {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for i := range count {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(192, 0, 2, byte(1+i))})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	pc, ln, err := loopbackPair()
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	var wg sync.WaitGroup
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	for _, s := range []*dns.Server{us, ts} {
		wg.Go(func() { s.ActivateAndServe() })
	}
	t.Cleanup(func() {
		us.Shutdown()
		ts.Shutdown()
		wg.Wait()
	})
	return addr
}

func TestForward(t *testing.T) {
	r := newResolver(t, Config{Timeout: 500 * time.Millisecond})
	up := upstream(t, 1)
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // silent: queries to it time out
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	web := serve(t, r, "web", deadAddr, up) // the first upstream is down, the second answers
	for _, proto := range []string{"udp", "tcp"} {
		if diff := cmp.Diff([]string{"NOERROR", "A 192.0.2.1"}, summary(query(t, proto, web, "example.com", dns.TypeA))); diff != "" {
			t.Errorf("forward over %s: %s", proto, diff)
		}
	}
	down := serve(t, r, "db", deadAddr)
	start := time.Now()
	if m := query(t, "udp", down, "example.com", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("upstream down: %v, want SERVFAIL", summary(m))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("SERVFAIL took %v, want about the 500ms timeout", d)
	}
}

func TestForwardTruncatedRetriesTCP(t *testing.T) {
	r := newResolver(t, Config{})
	up := upstream(t, 60) // 60 A records: ~1 KiB, over 512 bytes
	web := serve(t, r, "web", up)
	// An EDNS asker taking 4096 bytes over UDP gets the whole answer, fetched over TCP.
	c := dns.Client{Net: "udp", Timeout: 5 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion("big.example.", dns.TypeA)
	q.SetEdns0(4096, false)
	m, _, err := c.Exchange(q, web.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Answer) != 60 || m.Truncated {
		t.Errorf("EDNS 4096 asker: %d answers, truncated %v; want 60, not truncated", len(m.Answer), m.Truncated)
	}
	// A plain asker gets what fits in 512 bytes, marked truncated.
	m = query(t, "udp", web, "big.example", dns.TypeA)
	if !m.Truncated || len(m.Answer) == 0 || len(m.Answer) >= 60 {
		t.Errorf("512-byte asker: %d answers, truncated %v; want some, truncated", len(m.Answer), m.Truncated)
	}
}

func TestRateLimitPerSandbox(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r := newResolver(t, Config{QueryRate: 5, Now: clock})
	web := serve(t, r, "web")
	db := serve(t, r, "db")
	for i := range 5 {
		if _, err := exchange("udp", web, "db", dns.TypeA); err != nil {
			t.Fatalf("query %d within the rate: %v", i, err)
		}
	}
	c := dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	q := new(dns.Msg)
	q.SetQuestion("db.", dns.TypeA)
	if _, _, err := c.Exchange(q, web.String()); err == nil {
		t.Error("sixth query in the same instant answered, want dropped")
	}
	// Another sandbox is not affected by web's flood.
	if m := query(t, "udp", db, "web", dns.TypeA); len(m.Answer) != 1 {
		t.Errorf("db while web is limited: %v", summary(m))
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if _, err := exchange("udp", web, "db", dns.TypeA); err != nil {
		t.Errorf("web a second later: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	r := newResolver(t, Config{})
	web := serve(t, r, "web")
	c, err := net.Dial("udp", web.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion("db.", dns.TypeA)
	good, _ := q.Pack()
	for _, bad := range [][]byte{
		{},                         // empty
		{1, 2, 3},                  // shorter than a header
		append(good[:12:12], 0xff), // header, then garbage
		make([]byte, 60000),        // oversize, zeros
		func() []byte { b := slices.Clone(good); b[2] |= 0x80; return b }(), // a response
	} {
		c.Write(bad)
	}
	// After all that, web is still served, and a good query is answered.
	if m := query(t, "udp", web, "db", dns.TypeA); len(m.Answer) != 1 {
		t.Errorf("after bad input: %v", summary(m))
	}
	got := r.handle("web", append(good[:12:12], 0xff), false)
	if got.resp == nil {
		t.Fatal("no FORMERR for a query with a readable header")
	}
	var m dns.Msg
	if err := m.Unpack(got.resp); err != nil || m.Rcode != dns.RcodeFormatError || m.Id != q.Id {
		t.Errorf("reply to garbage: %v %v, want FORMERR with ID %d", err, m.Rcode, q.Id)
	}
	if got := r.handle("web", func() []byte { b := slices.Clone(good); b[2] |= 0x80; return b }(), false); got.resp != nil || got.fwd {
		t.Error("a response was answered or forwarded")
	}
}

func TestTCPConnLimitAndStop(t *testing.T) {
	r := newResolver(t, Config{MaxTCPConns: 2})
	web := serve(t, r, "web")
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", web.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(50 * time.Millisecond)
	extra, err := net.Dial("tcp", web.String())
	if err != nil {
		t.Fatal(err)
	}
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Error("a third connection was kept, want closed")
	}
	extra.Close()
	r.Stop("web") // closes the held connections and waits for their goroutines
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("connection open after Stop")
		}
		c.Close()
	}
	if _, err := exchange("udp", web, "db", dns.TypeA); err == nil {
		t.Error("answered after Stop")
	}
	if got := r.Serving(); slices.Contains(got, "web") {
		t.Errorf("Serving after Stop: %v", got)
	}
}

func TestServeAfterClose(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := r.Serve(Sandbox{ID: "x", UDP: pc, TCP: ln}); err == nil {
		t.Error("Serve after Close succeeded")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Error("Serve after Close left the socket open")
	}
	if _, err := New(Config{MaxForwards: -1}); !errors.Is(err, errclass.ErrInvalidParameter) || !strings.Contains(err.Error(), "MaxForwards") {
		t.Errorf("negative MaxForwards: %v", err)
	}
}

func TestForwardBounds(t *testing.T) {
	// A sandbox with one forward slot: with a query hanging on a silent upstream, the next
	// gets SERVFAIL at once.
	r := newResolver(t, Config{MaxSandboxForwards: 1, Timeout: 3 * time.Second})
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	web := serve(t, r, "web", dead.LocalAddr().(*net.UDPAddr).AddrPort())
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // takes the slot until the timeout, or until Stop cancels it
		c := dns.Client{Net: "udp", Timeout: time.Second}
		q := new(dns.Msg)
		q.SetQuestion("slow.example.", dns.TypeA)
		c.Exchange(q, web.String())
	})
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	m := query(t, "udp", web, "fast.example", dns.TypeA)
	if m.Rcode != dns.RcodeServerFailure || time.Since(start) > time.Second {
		t.Errorf("second forward: %v after %v, want SERVFAIL at once", summary(m), time.Since(start))
	}
	r.Stop("web") // cancels the hanging forward
}

func TestReverseAddr(t *testing.T) {
	for name, want := range map[string]string{
		"4.3.2.1.in-addr.arpa.":  "1.2.3.4",
		"4.3.2.in-addr.arpa.":    "",
		"04.3.2.1.in-addr.arpa":  "",
		"256.3.2.1.in-addr.arpa": "",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.": "::1",
		"x.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.": "",
		"example.com.": "",
	} {
		a, ok := reverseAddr(name)
		got := ""
		if ok {
			got = a.String()
		}
		if got != want {
			t.Errorf("reverseAddr(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzHandle(f *testing.F) {
	for _, name := range []string{"db.", "nosuch.", "example.com.", "2.0.10.10.in-addr.arpa."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeANY} {
			q := new(dns.Msg)
			q.SetQuestion(name, qt)
			q.SetEdns0(1232, false)
			b, _ := q.Pack()
			f.Add(b, false)
		}
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, true)
	r, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	r.AddEndpoint(dbEp)
	r.AddEndpoint(webEp)
	f.Fuzz(func(t *testing.T, req []byte, tcp bool) {
		rep := r.handle("web", req, tcp)
		if rep.resp != nil {
			var m dns.Msg
			if err := m.Unpack(rep.resp); err != nil {
				t.Fatalf("reply does not unpack: %v", err)
			}
			if !m.Response || m.Id != uint16(req[0])<<8|uint16(req[1]) {
				t.Fatalf("reply is not a response with the query's ID: %v", m.MsgHdr)
			}
			if !tcp && len(rep.resp) > max(rep.size, dns.MinMsgSize) {
				t.Fatalf("UDP reply of %d bytes for an asker of %d", len(rep.resp), rep.size)
			}
		}
		if rep.fwd {
			var m dns.Msg
			if err := m.Unpack(req); err != nil || len(m.Question) != 1 {
				t.Fatalf("forwarding a malformed query: %v", err)
			}
			if s := servfail(req); len(s) != headerLen || s[0] != req[0] || s[1] != req[1] {
				t.Fatal("bad SERVFAIL")
			}
		}
	})
}

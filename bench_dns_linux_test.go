package cnm_test

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// waitServed waits until sb's resolv.conf points at the embedded resolver: the last step of
// serving it.
func waitServed(b testing.TB, sb sandbox.Sandbox) {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Microsecond) {
		if rc, _ := os.ReadFile(sb.ResolvConfPath()); strings.Contains(string(rc), "nameserver 127.0.0.11") {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("sandbox %s not served after 5s", sb.ID())
		}
	}
}

// BenchmarkPrivilegedConnectDNS measures Controller.Connect to a user-defined network with
// the embedded resolver (whose sockets are opened by the goroutine that follows the events,
// once the join is committed) against Connect with Config.DisableDNS, and the time until the
// sandbox is served (Connect, then its resolv.conf points at 127.0.0.11). The three are
// interleaved in each iteration, so that a machine whose load drifts affects them alike; the
// metrics are the medians over the iterations, and their ratio. cpu-dns/nodns is the ratio of
// the process's CPU time per sandbox cycle (new sandbox, connect, serve, delete) with DNS and
// without.
//
//	CNM_PRIVILEGED_TESTS=1 go test -run '^$' -bench PrivilegedConnectDNS -benchtime 200x -count 5 .
func BenchmarkPrivilegedConnectDNS(b *testing.B) {
	off := newBenchLabWith(b, func(c *cnm.Config) { c.DisableDNS = true })
	on := newBenchLab(b)
	ctx := b.Context()
	// cpu[l] is the process's CPU time spent on lab l's cycles (new sandbox, connect, serve,
	// delete, and what those leave to goroutines during the sleep after them): the cost of DNS
	// in CPU, which a loaded machine does not blur as it does wall time.
	cpu := map[*benchLab]time.Duration{}
	connect := func(l *benchLab, id string, served bool) time.Duration {
		if !served { // the served cycle polls resolv.conf, which costs CPU of its own
			cpu0 := cpuTime(b)
			defer func() { cpu[l] += cpuTime(b) - cpu0 }()
		}
		sb, err := l.c.NewSandbox(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := l.c.Connect(ctx, "bench", id); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		if !served {
			time.Sleep(3 * time.Millisecond) // the resolver serves sb meanwhile, without polling
		}
		if served || l == on {
			waitServed(b, sb) // its serving is not left to overlap the next step
		}
		if served {
			d = time.Since(t0)
		}
		if err := l.c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // the resolver's stop and the kernel's teardown end
		return d
	}
	var tOff, tOn, tServed []time.Duration
	for i := 0; b.Loop(); i++ {
		tOff = append(tOff, connect(off, fmt.Sprintf("a%d", i), false))
		tOn = append(tOn, connect(on, fmt.Sprintf("b%d", i), false))
		tServed = append(tServed, connect(on, fmt.Sprintf("c%d", i), true))
	}
	b.ReportMetric(float64(cpu[on])/float64(cpu[off]), "cpu-dns/nodns")
	med := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	mOff, mOn, mServed := med(tOff), med(tOn), med(tServed)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mOff, "nodns-ms")
	b.ReportMetric(mOn, "dns-ms")
	b.ReportMetric(mServed, "served-ms")
	b.ReportMetric(mOn/mOff, "dns/nodns")
	b.ReportMetric(mServed/mOff, "served/nodns")
}

// BenchmarkPrivilegedDNSQuery measures queries for a local name answered by the embedded
// resolver, one at a time from one client in the sandbox's namespace, against a plain UDP
// echo server on 127.0.0.12 in the same namespace, in the same run: queries/s and the p99
// latency. The per-sandbox rate limit is off (Config.DNS.QueryRate -1) to measure the server.
//
// Each iteration is 100 queries to the echo, then 100 to the resolver.
//
//	CNM_PRIVILEGED_TESTS=1 go test -run '^$' -bench PrivilegedDNSQuery -benchtime 200x -count 5 .
func BenchmarkPrivilegedDNSQuery(b *testing.B) {
	l := newBenchLabWith(b, func(c *cnm.Config) { c.DNS = resolver.Config{QueryRate: -1} })
	ctx := b.Context()
	sb, err := l.c.NewSandbox(ctx, "web")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := l.c.Connect(ctx, "bench", "web"); err != nil {
		b.Fatal(err)
	}
	waitServed(b, sb)
	ns, err := netns.Open(sb.Key())
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	var echo net.PacketConn
	dial := func(addr string) net.Conn {
		var c net.Conn
		if err := ns.Do(func() error {
			var err error
			c, err = net.Dial("udp", addr)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	if err := ns.Do(func() error {
		var err error
		echo, err = net.ListenPacket("udp", "127.0.0.12:53")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	defer func() { echo.Close(); <-done }()

	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	query, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	echoConn, dnsConn := dial("127.0.0.12:53"), dial(resolver.Address.String())
	buf := make([]byte, 1500)
	ask := func(c net.Conn) (time.Duration, []byte) {
		t0 := time.Now()
		if _, err := c.Write(query); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), buf[:n]
	}
	var m dns.Msg
	if _, resp := ask(dnsConn); m.Unpack(resp) != nil || len(m.Answer) != 1 {
		b.Fatalf("answer for web: %v", m.Answer)
	}
	// Blocks of 100 queries to each in turn, so that a load that drifts affects both alike.
	const block = 100
	var echoLat, dnsLat []time.Duration
	var echoTime, dnsTime time.Duration
	for b.Loop() {
		for _, x := range []struct {
			c   net.Conn
			lat *[]time.Duration
			sum *time.Duration
		}{{echoConn, &echoLat, &echoTime}, {dnsConn, &dnsLat, &dnsTime}} {
			for range block {
				d, _ := ask(x.c)
				*x.lat = append(*x.lat, d)
				*x.sum += d
			}
		}
	}
	p99 := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)*99/100].Microseconds())
	}
	echoQPS := float64(len(echoLat)) / echoTime.Seconds()
	dnsQPS := float64(len(dnsLat)) / dnsTime.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(echoQPS, "echo-q/s")
	b.ReportMetric(dnsQPS, "dns-q/s")
	b.ReportMetric(dnsQPS/echoQPS, "dns/echo")
	b.ReportMetric(p99(echoLat), "echo-p99-µs")
	b.ReportMetric(p99(dnsLat), "dns-p99-µs")
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

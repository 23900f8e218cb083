package cnm_test

import (
	"net/netip"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
)

// cpuTimeWithChildren returns the CPU time (user and system) used so far by this process (the WireGuard
// devices run in it) and its waited-for children (iperf3, with the kernel's work it caused).
func cpuTimeWithChildren() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}

// BenchmarkPrivilegedOverlayEncrypted measures, on the two hosts of BenchmarkPrivilegedOverlay,
// an encrypted overlay network (VXLAN in userspace WireGuard) against a plain one beside it,
// in the same run:
//
//   - rtt: container-to-container ping round trip, median of -benchtime rounds of 20;
//
//   - tcp: iperf3 throughput for 3 s, median, and the CPU it cost (this process, where the
//     WireGuard devices run, plus iperf3 and the kernel work charged to it) per Gbit/s:
//     cores busy divided by Gbit/s.
//
//     CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- go test -run '^$' -bench PrivilegedOverlayEncrypted -benchtime 5x -count 1 .
func BenchmarkPrivilegedOverlayEncrypted(b *testing.B) {
	o := newBenchOverlay(b)
	ctx := b.Context()
	if _, err := o.a.NewNetwork(ctx, "benc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.82.0.0/16")), network.WithInternal(),
		network.WithDriverLabels(map[string]string{overlay.LabelEncrypted: ""})); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := o.b.Network("benc"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("host-b did not adopt the network")
		}
	}
	sa := mustSandbox(b, o.a, "ra")
	sbb := mustSandbox(b, o.b, "rb")
	mustConnect(b, o.a, "bov", "ra")
	mustConnect(b, o.a, "benc", "ra")
	plainB := mustConnect(b, o.b, "bov", "rb").Info().IPv4.Addr().String()
	encB := mustConnect(b, o.b, "benc", "rb").Info().IPv4.Addr().String()
	for _, ip := range []string{plainB, encB} {
		for deadline := time.Now().Add(15 * time.Second); ; {
			if _, ok := nstest.Ping(sa.Key(), ip, 1); ok {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s is not reachable", ip)
			}
		}
	}
	b.Run("rtt", func(b *testing.B) {
		var enc, plain []time.Duration
		for b.Loop() {
			enc = append(enc, rtt(b, sa.Key(), encB, 20))
			plain = append(plain, rtt(b, sa.Key(), plainB, 20))
		}
		reportMedians(b, "encrypted-µs", enc, "plain-µs", plain)
	})
	b.Run("tcp", func(b *testing.B) {
		if _, err := exec.LookPath("iperf3"); err != nil {
			b.Skip("iperf3 is not installed (Debian: apt-get install iperf3)")
		}
		measure := func(ip string) (gbps, coresPerGbps float64) {
			c0, t0 := cpuTimeWithChildren(), time.Now()
			bps := nstest.Iperf(b, sbb.Key(), sa.Key(), ip)
			cores := float64(cpuTimeWithChildren()-c0) / float64(time.Since(t0))
			return bps / 1e9, cores / (bps / 1e9)
		}
		var enc, plain, encCPU, plainCPU []float64
		for b.Loop() {
			g, c := measure(encB)
			enc, encCPU = append(enc, g), append(encCPU, c)
			g, c = measure(plainB)
			plain, plainCPU = append(plain, g), append(plainCPU, c)
		}
		for _, s := range [][]float64{enc, plain, encCPU, plainCPU} {
			slices.Sort(s)
		}
		mid := len(enc) / 2
		b.ReportMetric(enc[mid], "encrypted-Gbit/s")
		b.ReportMetric(plain[mid], "plain-Gbit/s")
		b.ReportMetric(enc[mid]/plain[mid], "ratio")
		b.ReportMetric(encCPU[mid], "encrypted-cores/Gbit/s")
		b.ReportMetric(plainCPU[mid], "plain-cores/Gbit/s")
	})
}

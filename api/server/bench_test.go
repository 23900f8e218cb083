package server_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/api"
)

// BenchmarkAPIOverhead measures what the API adds to an attach, without the kernel: the
// Controller on the in-memory machine and the fake bridge driver, Connect in process against
// the API's connect over the unix socket (HTTP, JSON, the handler), taking turns in each
// iteration. It reports each one's median and their difference, the API's fixed cost per call.
func BenchmarkAPIOverhead(b *testing.B) {
	a := newAgent(b)
	ctx := b.Context()
	ways := []func(id string) error{
		func(id string) error { _, err := a.c.Connect(ctx, "bridge", id); return err },
		func(id string) error {
			_, err := a.cl.NetworkConnect(ctx, "bridge", api.Connect{Sandbox: id})
			return err
		},
	}
	times := make([][]time.Duration, len(ways))
	for i := 0; b.Loop(); i++ {
		for k := range ways {
			w := (i + k) % len(ways)
			id := fmt.Sprintf("s%d-%d", w, i)
			if _, err := a.c.NewSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := ways[w](id); err != nil {
				b.Fatal(err)
			}
			times[w] = append(times[w], time.Since(start))
			if err := a.c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	med := make([]float64, len(ways))
	for w, ts := range times {
		slices.Sort(ts)
		med[w] = float64(ts[len(ts)/2]) / 1e3
	}
	b.ReportMetric(med[0], "inprocess-µs/attach")
	b.ReportMetric(med[1], "api-µs/attach")
	b.ReportMetric(med[1]-med[0], "api-overhead-µs")
}

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/nstest"
)

// BenchmarkPrivilegedMultihostVisibility measures how soon an overlay network made through
// one cnmd is seen through another, on two lab VMs started with the README walk-through's
// server lines (etcd, then Consul: the store, vm1's cnmd, vm2's cnmd). Each iteration creates
// a network through vm1's API, then asks vm2's API for it every 0.5 ms until it answers;
// then removes it through vm1 and asks vm2 until it is gone. It reports the medians of the
// create and remove calls on vm1 (the baselines), of the time from each call's return until
// vm2 agrees, and their ratios.
func BenchmarkPrivilegedMultihostVisibility(b *testing.B) {
	nstest.Privileged(b)
	for _, store := range []string{"etcd", "consul"} {
		b.Run(store, func(b *testing.B) {
			steps := readWalkthrough(b, store)
			l := newVMLab(b, 2)
			key := make([]byte, 32)
			for i := range key {
				key[i] = byte(i*7 + 1)
			}
			if err := os.WriteFile(filepath.Join(l.dir, "gossip.key"), []byte(fmt.Sprintf("%x\n", key)), 0o600); err != nil {
				b.Fatal(err)
			}
			for _, s := range steps {
				if s.bg {
					l.server(s)
				}
			}
			if len(l.daemons) != 2 {
				b.Fatalf("the %s walk-through started %d cnmd, want 2", store, len(l.daemons))
			}
			cl := map[string]*client.Client{}
			for _, vm := range []string{"vm1", "vm2"} {
				c, err := client.New(client.Config{Host: "unix://" + l.sock(vm)})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				cl[vm] = c
			}
			ctx := b.Context()
			// await asks vm2 for name until present is what it finds, and returns how long that took.
			await := func(name string, present bool) time.Duration {
				t0 := time.Now()
				for {
					_, err := cl["vm2"].NetworkInspect(ctx, name)
					switch {
					case err == nil && present, errors.Is(err, cnm.ErrNotFound) && !present:
						return time.Since(t0)
					case err != nil && !errors.Is(err, cnm.ErrNotFound):
						b.Fatalf("vm2: inspect %s: %v", name, err)
					case time.Since(t0) > 10*time.Second:
						b.Fatalf("vm2: %s present=%v not seen in 10s", name, present)
					}
					time.Sleep(500 * time.Microsecond)
				}
			}
			var create, seen, rm, gone []time.Duration
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("vis%d", i)
				t0 := time.Now()
				if _, err := cl["vm1"].NetworkCreate(ctx, api.NetworkCreate{Name: name, Driver: "overlay"}); err != nil {
					b.Fatal(err)
				}
				create = append(create, time.Since(t0))
				seen = append(seen, await(name, true))
				t0 = time.Now()
				if err := cl["vm1"].NetworkRemove(ctx, name); err != nil {
					b.Fatal(err)
				}
				rm = append(rm, time.Since(t0))
				gone = append(gone, await(name, false))
			}
			b.StopTimer()
			med := func(d []time.Duration) float64 {
				s := slices.Clone(d)
				slices.Sort(s)
				return float64(s[len(s)/2]) / float64(time.Millisecond)
			}
			b.ReportMetric(med(create), "create-ms")
			b.ReportMetric(med(seen), "seen-ms")
			b.ReportMetric(med(seen)/med(create), "seen/create")
			b.ReportMetric(med(rm), "rm-ms")
			b.ReportMetric(med(gone), "gone-ms")
			b.ReportMetric(med(gone)/med(rm), "gone/rm")
			if len(seen) > 0 {
				s := slices.Clone(seen)
				slices.Sort(s)
				b.ReportMetric(float64(s[len(s)*95/100])/float64(time.Millisecond), "seen-p95-ms")
			}
		})
	}
}

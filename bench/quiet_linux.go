//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// quietness is the state of the machine when a group of figures started.
type quietness struct {
	Load1 float64 `json:"load1"` // 1-minute load average
	// OthersBusy is the share of all CPUs busy over the last second before the group, while
	// this program sat idle: the rest of the machine's work.
	OthersBusy float64 `json:"others_busy"`
	Waited     float64 `json:"waited_s"` // seconds spent waiting for quiet
	Quiet      bool    `json:"quiet"`    // whether OthersBusy fell under the threshold in time
}

// waitQuiet samples the CPUs' busy share over one second at a time until it is under limit or
// wait has passed, and returns the last sample with the load average. With wait zero it takes
// one short sample and does not wait.
func waitQuiet(ctx context.Context, limit float64, wait time.Duration) quietness {
	start := time.Now()
	var q quietness
	window := time.Second
	if wait == 0 {
		window = 200 * time.Millisecond
	}
	for {
		q.OthersBusy = busyShare(ctx, window)
		q.Quiet = q.OthersBusy < limit
		if q.Quiet || time.Since(start) >= wait || ctx.Err() != nil {
			break
		}
	}
	q.Waited = time.Since(start).Seconds()
	q.Load1 = load1()
	if !q.Quiet && wait > 0 {
		fmt.Fprintf(os.Stderr, "bench: the machine stayed busy (%.0f%% of the CPUs) for %s; measuring anyway, the load is recorded\n", 100*q.OthersBusy, wait)
	}
	return q
}

// busyShare returns the share of all CPUs not idle over window, from /proc/stat.
func busyShare(ctx context.Context, window time.Duration) float64 {
	b1, t1 := cpuTimes()
	select {
	case <-time.After(window):
	case <-ctx.Done():
	}
	b2, t2 := cpuTimes()
	if t2 <= t1 {
		return 0
	}
	return float64(b2-b1) / float64(t2-t1)
}

// cpuTimes returns the busy and total jiffies of all CPUs.
func cpuTimes() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:min(len(f), 9)] { // user … steal; guest time is inside user already
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

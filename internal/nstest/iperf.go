package nstest

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"testing"
	"time"
)

// Iperf measures TCP throughput for 3 seconds with iperf3, from the namespace at client to a
// server it starts in the namespace at server listening on ip, and returns bits per second.
// It retries the client until the server listens (iperf3 -J exits 0 when it cannot connect:
// its JSON's "error" says so), and stops the server after.
func Iperf(tb testing.TB, server, client, ip string) float64 {
	tb.Helper()
	srv := exec.Command("nsenter", "--net="+server, "--", "iperf3", "-s", "-B", ip)
	if err := srv.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	var out []byte
	var err error
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err = exec.CommandContext(ctx, "nsenter", "--net="+client, "--", "iperf3", "-c", ip, "-t", "3", "-J").Output()
		cancel()
		var e struct {
			Error string `json:"error"`
		}
		if err == nil && json.Unmarshal(out, &e) == nil && e.Error != "" {
			err = errors.New(e.Error)
		}
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("iperf3 to %s: %v: %s", ip, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		tb.Fatalf("iperf3 output: %v: %s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

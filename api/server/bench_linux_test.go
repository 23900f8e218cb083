package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/api/server"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
)

// BenchmarkPrivilegedAPIAttach measures attaching a sandbox to a bridge network three ways in
// one run: the in-process Controller.Connect (the baseline), the API's connect (HTTP over the
// unix socket to an in-process server, which connects and answers with the endpoint's
// settings), and `cnmctl network connect` (a process started per attach, over the same
// socket). Each attach's sandbox is made and removed around it, outside its timing; ns/op
// counts all of it and is not the figure: the metrics are.
func BenchmarkPrivilegedAPIAttach(b *testing.B) {
	nstest.Privileged(b)
	ctx := b.Context()
	host := nstest.NewNS(b)
	dir := b.TempDir()
	c, err := cnm.New(ctx, cnm.Config{DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"), HostNetns: host.Path()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.NewNetwork(ctx, "bench", "bridge", network.WithSubnet(netip.MustParsePrefix("10.200.0.0/16"))); err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(server.Config{Controller: c})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	sock := filepath.Join(dir, "cnm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	cl, err := client.New(client.Config{Host: "unix://" + sock})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	cnmctl := filepath.Join(dir, "cnmctl")
	if out, err := exec.Command("go", "build", "-o", cnmctl, "../../cmd/cnmctl").CombinedOutput(); err != nil {
		b.Fatalf("build cnmctl: %v\n%s", err, out)
	}

	ways := []struct {
		name    string
		connect func(id string) error
	}{
		{"inprocess", func(id string) error { _, err := c.Connect(ctx, "bench", id); return err }},
		{"api", func(id string) error {
			_, err := cl.NetworkConnect(ctx, "bench", api.Connect{Sandbox: id})
			return err
		}},
		{"cli", func(id string) error {
			out, err := exec.Command(cnmctl, "--host", "unix://"+sock, "network", "connect", "bench", id).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}},
	}
	// The three ways take turns within each iteration (the order rotating), so that a load
	// that changes during the run (the machine is shared) weighs on all of them alike; each
	// way's median per attach is reported, and the ratios of the medians.
	times := make([][]time.Duration, len(ways))
	for i := 0; b.Loop(); i++ {
		for k := range ways {
			w := (i + k) % len(ways)
			id := fmt.Sprintf("%s%d", ways[w].name, i)
			if _, err := c.NewSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := ways[w].connect(id); err != nil {
				b.Fatal(err)
			}
			times[w] = append(times[w], time.Since(start))
			if err := c.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	med := make([]float64, len(ways))
	for w, ts := range times {
		slices.Sort(ts)
		med[w] = float64(ts[len(ts)/2]) / 1e6
		b.ReportMetric(med[w], ways[w].name+"-ms/attach")
	}
	b.ReportMetric(med[1]/med[0], "api/inprocess")
	b.ReportMetric(med[2]/med[0], "cli/inprocess")
}

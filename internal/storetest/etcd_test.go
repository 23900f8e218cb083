package storetest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fakeTB records what a helper does with its testing.TB: Fatal and Skip end the goroutine,
// as they do on a real test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatal(args ...any) {
	f.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Skip(args ...any) {
	f.skip = fmt.Sprint(args...)
	runtime.Goexit()
}

// callTB runs fn with a fakeTB on a goroutine of its own and returns what it recorded.
func callTB(t *testing.T, fn func(tb testing.TB) string) (f *fakeTB, result string) {
	f = &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		result = fn(f)
	}()
	<-done
	return f, result
}

func TestEtcdBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "etcd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("env", func(t *testing.T) {
		t.Setenv(EtcdBinEnv, bin)
		if f, got := callTB(t, EtcdBinary); got != bin || f.fatal != "" || f.skip != "" {
			t.Errorf("EtcdBinary with %s=%s = %q (fatal %q, skip %q)", EtcdBinEnv, bin, got, f.fatal, f.skip)
		}
	})
	t.Run("env names a missing file", func(t *testing.T) {
		t.Setenv(EtcdBinEnv, bin+".missing")
		t.Setenv("CI", "")
		if f, _ := callTB(t, EtcdBinary); !strings.Contains(f.fatal, EtcdBinEnv) {
			t.Errorf("EtcdBinary with a missing %s: fatal %q, skip %q; want a failure naming the variable", EtcdBinEnv, f.fatal, f.skip)
		}
	})
	t.Run("PATH", func(t *testing.T) {
		t.Setenv(EtcdBinEnv, "")
		t.Setenv("PATH", dir)
		if f, got := callTB(t, EtcdBinary); got != bin || f.fatal != "" || f.skip != "" {
			t.Errorf("EtcdBinary with etcd on PATH = %q (fatal %q, skip %q), want %s", got, f.fatal, f.skip, bin)
		}
	})
	// Without a binary, a local run skips and CI fails, both saying how to install etcd.
	for _, ci := range []string{"", "true"} {
		t.Run("missing with CI="+ci, func(t *testing.T) {
			t.Setenv(EtcdBinEnv, "")
			t.Setenv("PATH", t.TempDir())
			t.Setenv("CI", ci)
			f, _ := callTB(t, EtcdBinary)
			got, other := f.skip, f.fatal
			if ci == "true" {
				got, other = f.fatal, f.skip
			}
			if got == "" || other != "" || !strings.Contains(got, "apt-get install etcd-server") {
				t.Errorf("EtcdBinary without etcd, CI=%q: skip %q, fatal %q; want a %s that says how to install",
					ci, f.skip, f.fatal, map[string]string{"": "skip", "true": "failure"}[ci])
			}
		})
	}
}

// TestStartEtcdCluster starts three members, stops one and two, and brings them back.
func TestStartEtcdCluster(t *testing.T) {
	c := StartEtcdCluster(t, 3)
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("Endpoints() = %d URLs, want 3", got)
	}
	c.Stop(0)
	c.Kill(1)
	if c.Running(0) || c.Running(1) || !c.Running(2) {
		t.Fatalf("Running after stopping 0 and killing 1 = %v %v %v, want false false true", c.Running(0), c.Running(1), c.Running(2))
	}
	if err := c.health(c.members[2]); err == nil {
		t.Errorf("member 2 healthy without a quorum")
	}
	c.Start(0) // no quorum yet: returns once it listens
	c.Start(1) // quorum: returns once it serves
	for i := range 3 {
		if err := c.health(c.members[i]); err != nil {
			t.Errorf("member %d after the restarts: %v", i, err)
		}
	}
}

// TestStartEtcdTLS checks that the TLS member serves a client with the certificate it was
// given.
func TestStartEtcdTLS(t *testing.T) {
	c, files := StartEtcdTLS(t)
	if !strings.HasPrefix(c.Endpoint(0), "https://") {
		t.Errorf("Endpoint(0) = %s, want https://", c.Endpoint(0))
	}
	for _, p := range []string{files.CA, files.Cert, files.Key} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("TLS file: %v", err)
		}
	}
	if err := c.health(c.members[0]); err != nil {
		t.Errorf("health with the client certificate: %v", err)
	}
}

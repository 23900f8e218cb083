package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
)

// TestPrivilegedExampleMultihostLab builds the example and runs its lab as the README does:
// three hosts, each this program in a namespace of its own, gossiping over the underlay with
// etcd on it; every container must reach the two others across the overlay; the third host
// is killed (SIGKILL), dropped by the first, restarted and reachable again with one FDB entry;
// and everything must go at the end (the suite runs under hostcheck).
func TestPrivilegedExampleMultihostLab(t *testing.T) {
	nstest.Privileged(t)
	etcd := storetest.EtcdBinary(t)
	bin := filepath.Join(t.TempDir(), "multihost")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "-lab", "3", "-crash")
	cmd.Env = append(os.Environ(), "CNM_ETCD_BIN="+etcd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("lab: %v\n%s", err, out.String())
	}
	if got := len(regexp.MustCompile(`(?m)^==> c\d on host-\d reaches c\d on host-\d$`).FindAllString(out.String(), -1)); got != 6 {
		t.Fatalf("lab reported %d reachable pairs, want 6:\n%s", got, out.String())
	}
	for _, want := range []string{"host-3 killed (SIGKILL)", "host-1 dropped host-3's container", "one FDB entry for it on host-1"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("lab output lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(out.String(), "all hosts stopped") {
		t.Fatalf("lab did not stop cleanly:\n%s", out.String())
	}
}

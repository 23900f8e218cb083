package cni

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/containernetworking/cni/libcni"
)

// BenchmarkPrivilegedCNIAddDel times what a runtime waits for to attach a container and take
// it off again, through libcni, process starts included: an ADD and a DEL through cnm-cni (to
// cnmd's bridge network cninet), against an ADD and a DEL through the CNI reference bridge
// plugin with host-local IPAM, configured as bench/ configures it (isGateway, ipMasq). The two
// alternate in every iteration, each on a namespace of its own made once, so that load on the
// machine falls on both alike. It reports the medians (cnm-ms, bridge-ms) and their ratio
// (cnm/bridge); the target is 0.5 or less.
//
//	cd interop && ../../shared/tools/nsrun -- env CNM_PRIVILEGED_TESTS=1 go test -run '^$' -bench CNIAddDel -benchtime 100x -count 5 ./cni/
func BenchmarkPrivilegedCNIAddDel(b *testing.B) {
	nstest.Privileged(b)
	a := startAgent(b)
	cni := newCNI(b)
	cnmList := a.confList(b)
	ref, err := libcni.ConfListFromBytes(fmt.Appendf(nil, `{
  "cniVersion": "1.0.0",
  "name": "ref",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni-bench0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "10.79.0.0/24"}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}`, filepath.Join(b.TempDir(), "ipam")))
	if err != nil {
		b.Fatal(err)
	}
	cnmRT := &libcni.RuntimeConf{ContainerID: "bench-cnm", NetNS: runtimeNS(b), IfName: "eth0"}
	refRT := &libcni.RuntimeConf{ContainerID: "bench-ref", NetNS: runtimeNS(b), IfName: "eth0"}
	ctx := b.Context()
	addDel := func(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) time.Duration {
		start := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			b.Fatalf("ADD %s: %v", list.Name, err)
		}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			b.Fatalf("DEL %s: %v", list.Name, err)
		}
		return time.Since(start)
	}
	// One of each first: the bridge, its iptables chains and the page cache are warm for both.
	addDel(cnmList, cnmRT)
	addDel(ref, refRT)
	var cnmT, refT []time.Duration
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			cnmT = append(cnmT, addDel(cnmList, cnmRT))
			refT = append(refT, addDel(ref, refRT))
		} else {
			refT = append(refT, addDel(ref, refRT))
			cnmT = append(cnmT, addDel(cnmList, cnmRT))
		}
	}
	mc, mr := median(cnmT), median(refT)
	b.ReportMetric(float64(mc)/1e6, "cnm-ms")
	b.ReportMetric(float64(mr)/1e6, "bridge-ms")
	b.ReportMetric(float64(mc)/float64(mr), "cnm/bridge")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Package cni tests cmd/cnm-cni, cnm's CNI plugin, against the CNI project's own client code:
// libcni (github.com/containernetworking/cni) drives the built binary through ADD, CHECK,
// DEL, GC and STATUS, and the reference cnitool runs the same configuration. cnmd runs for
// real in a throwaway namespace, and the containers' namespaces are made as a runtime makes
// them (an unshare and a bind mount), so the tests assert on the kernel: a ping between two
// namespaces attached this way, the link gone after DEL, a CHECK that fails once the link is
// deleted by hand.
//
// The tests are privileged (TestPrivileged*, CNM_PRIVILEGED_TESTS=1, root); run them isolated:
//
//	./scripts/test.sh -C interop ./cni/    # from the repository root
//
// BenchmarkPrivilegedCNIAddDel times an ADD+DEL through cnm-cni against the CNI reference
// bridge plugin's (with host-local IPAM), process starts included, alternating the two in each
// iteration; see BENCHMARKS.md.
package cni

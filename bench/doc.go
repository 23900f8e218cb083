// Command bench measures cnm against its peers on the machine it runs on, in one run, with one
// harness and the same iterations for each:
//
//   - cnm (its public API: a Controller with its bbolt store, a bridge network, Connect);
//   - Docker's libnetwork as a Go library (github.com/docker/docker v28.5.2, package libnetwork:
//     Controller, NewNetwork, NewSandbox, CreateEndpoint, Join, as dockerd drives it), with its
//     bridge driver and iptables NAT;
//   - the CNI reference plugins (github.com/containernetworking/plugins v1.10.0, bridge and
//     host-local with ipMasq) through libcni, the plugin binaries built from the module proxy;
//   - the raw netlink calls an attach needs, sent by hand: the floor.
//
// Run it as root from this directory:
//
//	go run . -out results.json
//
// What it times: network create and delete (each with its default NAT rules); a container's
// network life, step by step (namespace create, attach, detach, namespace delete); the k-th
// attach for k = 1..1000 (a time budget per subject; the k reached is reported), then the
// removal of every container the subject's own way and the kernel's background cleanup after
// it; 1, 10 and 50 attaches started at once; and IPAM alone. The first attach of each subject
// is checked in the kernel (eth0 up with an address, a default route, the gateway answers a
// ping), so every figure is of a working attach.
//
// It re-executes itself in a throwaway network and mount namespace (unshare --net --mount,
// private tmpfs on /run and /var/lib/{cnm,cni,docker}) and refuses to measure in the
// machine's own namespace. Before each group of figures it waits, up to a limit, for the rest
// of the machine to go quiet, and records the load beside each figure. It prints a table
// (median, p95, ops/s, ratio to the floor) and writes every figure, with its raw samples, as
// JSON. See BENCHMARKS.md in the repository's root for one run's figures.
package main

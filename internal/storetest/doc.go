// Package storetest starts the real key-value servers that the kvstore backends are tested
// against: etcd (etcd.go) and Consul (consul.go). Each server runs as a child process of the
// test, on 127.0.0.1 ports picked free at start, with its data in t.TempDir(); t.Cleanup stops it
// and removes its data. A server's output goes to a file in that directory, and its tail is
// written to the test log when the test fails.
//
// # Finding the binaries
//
// The helpers look for the servers through environment variables, then on PATH:
//
//   - etcd: $CNM_ETCD_BIN, else "etcd" on PATH (Debian's etcd-server package, 3.4).
//   - Consul: $CNM_CONSUL_BIN, else the binary that scripts/services.sh builds and caches
//     (${XDG_CACHE_HOME:-~/.cache}/cnm/consul-v1.14.11), else "consul" on PATH.
//
// When a binary is missing, a test skips, unless CI=true: then it fails, because CI must run
// every store test. scripts/services.sh installs etcd and builds Consul and prints the variables.
//
// # Network and privileges
//
// The servers listen on loopback only and need no privileges. Run the tests that use them in a
// throwaway network namespace (../shared/tools/nsrun, or scripts/test.sh), so they neither see
// nor disturb the machine's own network.
//
// # Use from tests
//
// The helpers take a testing.TB and call its Fatal methods, so call them, and the methods of the
// servers they return ([EtcdCluster], [ConsulAgent]), from the test's own goroutine. A server
// that was stopped ([EtcdCluster.Stop], [EtcdCluster.Kill]) restarts with its data and ports
// ([EtcdCluster.Start]), for the fault tests. [StartEtcdTLS] starts a member that requires
// client certificates, from a CA generated for the test.
package storetest

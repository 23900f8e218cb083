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
//   - Consul: $CNM_CONSUL_BIN, else the binary that scripts/services.sh builds (see consul.go).
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
// clusters they return, from the test's own goroutine.
package storetest

//go:build !linux

// Command bench measures cnm against Docker's libnetwork, the CNI reference plugins and the
// raw kernel calls; it needs Linux network namespaces and runs nowhere else.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench: Linux only (it measures kernel network namespaces, bridges and veths)")
	os.Exit(2)
}

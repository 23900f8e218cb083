//go:build !unix

package runstore

import "os"

// lock does nothing where there is no flock: the Controller, which needs Linux, does not run
// there.
func lock(*os.File) error { return nil }

//go:build !unix

package main

import (
	"github.com/cnmkit/cnm"
)

// lockDataDir needs flock, which this system lacks; cnm needs Linux anyway.
func lockDataDir(dir string) (unlock func(), err error) {
	return nil, &cnm.NotSupportedError{What: "cnmd's data dir lock on this system"}
}

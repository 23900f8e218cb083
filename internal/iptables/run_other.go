//go:build !linux

package iptables

import (
	"context"

	"github.com/cnmkit/cnm/internal/errclass"
)

// checkSystem returns an error matching [errclass.ErrNotSupported]: iptables, and the network
// namespaces it runs in, need Linux. A Runner keeps it as the error of every call.
func checkSystem(what string) error { return errclass.LinuxOnly(what) }

// run fails with an error matching [errclass.ErrNotSupported]. It is not reached: every
// Runner fails its calls with checkSystem's error first.
func (r *Runner) run(ctx context.Context, input []byte, path string, args ...string) (string, error) {
	return "", errclass.LinuxOnly(r.saveName + " and " + r.restoreName)
}

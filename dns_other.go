//go:build !linux

package cnm

import (
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
)

// openDNSSockets fails off Linux: there are no namespaces to open the resolver's sockets in.
func openDNSSockets(sb sandbox.Sandbox) (resolver.Sandbox, func() error, error) {
	return resolver.Sandbox{}, nil, errclass.LinuxOnly("the embedded DNS resolver")
}

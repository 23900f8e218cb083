//go:build !linux

package bridge

import (
	"context"

	cnmipt "github.com/cnmkit/cnm/internal/iptables"
	"github.com/cnmkit/cnm/netns"
)

// detectIPTables returns the zero IPTablesInfo: there is no iptables on this system.
func detectIPTables(ctx context.Context, ns *netns.NS, fw *cnmipt.Runner) IPTablesInfo {
	return IPTablesInfo{}
}

//go:build !linux

package bridge

import "github.com/cnmkit/cnm/drivers"

// This file holds the stubs of nftables_linux.go for other systems. New fails there before it
// reaches them, as the host namespace cannot be opened.

// nftFirewall is the nftables backend; it exists on Linux only.
type nftFirewall struct{ firewall }

// newNftFirewall fails with an error matching [drivers.ErrNotSupported].
func newNftFirewall(d *Driver) (*nftFirewall, error) { return nil, drivers.LinuxOnly("nftables") }

// removeNftLeftovers has nothing to remove: there is no nf_tables.
func removeNftLeftovers(d *Driver) ([]drivers.Repair, error) { return nil, nil }

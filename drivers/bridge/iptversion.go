package bridge

import (
	"fmt"
	"strings"

	"github.com/cnmkit/cnm/drivers"
)

// The iptables backends (modes), as "iptables --version" names them.
const (
	ModeNFTables = "nf_tables"
	ModeLegacy   = "legacy"
)

// IPTablesInfo describes the iptables the driver writes its rules with, as [New] found it.
type IPTablesInfo struct {
	// Version is the iptables binary's version ("1.8.9"); "" when iptables is missing or
	// the firewall is disabled.
	Version string
	// Mode is the backend of the iptables-restore the driver runs: ModeNFTables or
	// ModeLegacy; "" when it cannot be told.
	Mode string
	// RandomFully reports whether the MASQUERADE rules get --random-fully (iptables 1.6.2
	// and later), which randomizes the source ports NAT picks, as Docker does.
	RandomFully bool
	// OtherBackend is a *BackendConflictError when the backend the driver does not use holds
	// FORWARD or nat rules, else nil.
	OtherBackend error
}

// BackendConflictError reports that the iptables backend the driver does not write with
// holds rules in FORWARD or in the nat table of the host namespace: the classic failure of a
// host where Docker, a firewall or a distribution script uses iptables-legacy while iptables
// is iptables-nft (or the reverse). The kernel runs both backends' rules, so a DROP policy or
// rule there drops traffic the driver's rules accept, and "iptables -L" shows only one of them.
// The driver does not touch the other backend: New logs it as a warning, [Driver.IPTables]
// returns it, and [Driver.Reconcile] reports it as a repair left to the operator. It matches
// cnm.ErrConflict.
type BackendConflictError struct {
	Mode  string   // the driver's backend
	Other string   // the other backend
	Found []string // what the other holds: "IPv4 FORWARD policy DROP", "3 IPv4 nat rules"
}

func (e *BackendConflictError) Error() string {
	return fmt.Sprintf("the iptables %s backend holds %s, which the %s backend the driver writes with does not show; move those rules to %s or use the %s backend everywhere",
		e.Other, strings.Join(e.Found, ", "), e.Mode, e.Mode, e.Other)
}

// Is reports whether target is cnm.ErrConflict.
func (e *BackendConflictError) Is(target error) bool { return target == drivers.ErrConflict }

// IPTables returns what New found of iptables: version, mode, --random-fully support, and
// whether the other backend holds rules. The zero value when the firewall is disabled.
func (d *Driver) IPTables() IPTablesInfo { return d.ipt }

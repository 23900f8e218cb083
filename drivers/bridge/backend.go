package bridge

import (
	"context"
	"fmt"

	"github.com/cnmkit/cnm/drivers"
)

// Firewall names a firewall backend of the driver: what writes the rules of the package doc's
// "Firewall" section.
type Firewall string

// The firewall backends.
const (
	// FirewallIPTables writes the rules with iptables-restore (and ip6tables-restore), one
	// process per transaction. The zero Firewall means it, for now.
	FirewallIPTables Firewall = "iptables"
	// FirewallNftables writes the rules over netlink into the driver's own nf_tables table
	// "inet cnm", with no process on any path (see the package doc).
	FirewallNftables Firewall = "nftables"
	// FirewallAuto picks FirewallNftables when the kernel has nf_tables (New lists the
	// host namespace's nf_tables tables over netlink, and that works) and no iptables-legacy
	// rules are in use in the host namespace, and FirewallIPTables otherwise (see the package
	// doc's "Choosing a backend").
	FirewallAuto Firewall = "auto"
)

// firewall is what the driver asks of a firewall backend. Each method is one transaction
// (iptables-restore per family, or one nf_tables batch) unless it says otherwise; the backends
// converge the same way: calling a method again changes nothing.
type firewall interface {
	// kind returns the backend's name, for logs and repairs.
	kind() Firewall
	// check checks, before any kernel work, that the backend can do what n needs.
	check(n *network) error
	// ensureNetwork writes n's rules and turns on the sysctls n needs; fresh reports that the
	// caller has just created n's bridge and knew nothing of n.
	ensureNetwork(ctx context.Context, n *network, fresh bool) error
	// concurrent reports whether ensureNetwork of n, fresh, may run while n's new bridge is
	// being set up: it writes rules only (no sysctl is turned on under the bridge's feet).
	concurrent(n *network) bool
	// removeNetwork removes the rules of the network on bridge br; n is the network as this
	// process made it, or nil (unknown, as after a restart).
	removeNetwork(ctx context.Context, br string, n *network) error
	// staleNetworks removes the rules of the bridges for which keep returns false and returns
	// those bridges, sorted.
	staleNetworks(ctx context.Context, keep func(bridge string) bool) ([]string, error)
	// ensurePorts brings endpoint eid's published-port rules to those of ep (none when ep is
	// nil); fresh reports that the driver knew nothing of the endpoint.
	ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint, fresh bool) error
	// removePorts removes the published-port rules of eid, which this process wrote as ep says.
	removePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error
	// stalePorts removes the published-port rules of endpoints that are neither known to the
	// driver nor in live, and returns their short IDs, sorted.
	stalePorts(ctx context.Context, live []drivers.EndpointID) ([]string, error)
	// removeOther removes what the other backend left in the host namespace (a host that
	// switched backends) and reports it.
	removeOther(ctx context.Context) ([]drivers.Repair, error)
	// close releases the backend's sockets.
	close()
}

// newFirewall returns the backend cfg asks for.
func newFirewall(d *Driver, cfg Config) (firewall, error) {
	switch cfg.Firewall {
	case "", FirewallIPTables:
		return iptablesFirewall{d}, nil
	case FirewallNftables, FirewallAuto:
		if cfg.DisableIPTables {
			return iptablesFirewall{d}, nil // writes nothing
		}
		nft, err := newNftFirewall(d)
		if err != nil {
			if cfg.Firewall == FirewallAuto {
				d.log.Info("bridge: nftables unavailable; using iptables", "err", err)
				return iptablesFirewall{d}, nil
			}
			return nil, err
		}
		if cfg.Firewall == FirewallAuto {
			var legacy string
			err := d.ns.Do(func() error {
				var err error
				legacy, err = legacyRulesInUse()
				return err
			})
			if err != nil || legacy != "" {
				nft.close()
				d.log.Info("bridge: iptables-legacy rules in use; using iptables", "table", legacy, "err", err)
				return iptablesFirewall{d}, nil
			}
		}
		return nft, nil
	}
	return nil, drivers.Invalid("firewall", string(cfg.Firewall), fmt.Sprintf("want %q, %q or %q", FirewallAuto, FirewallNftables, FirewallIPTables))
}

// iptablesFirewall is the iptables backend: firewall.go and ports.go.
type iptablesFirewall struct{ d *Driver }

func (b iptablesFirewall) kind() Firewall         { return FirewallIPTables }
func (b iptablesFirewall) check(n *network) error { return b.d.checkFirewall(n) }
func (b iptablesFirewall) close()                 {}

// concurrent is false: the iptables backend works after the bridge is set up.
func (b iptablesFirewall) concurrent(*network) bool { return false }

func (b iptablesFirewall) ensureNetwork(ctx context.Context, n *network, fresh bool) error {
	return b.d.ensureFirewall(ctx, n, fresh)
}

func (b iptablesFirewall) removeNetwork(ctx context.Context, br string, n *network) error {
	return b.d.removeFirewall(ctx, br, n)
}

func (b iptablesFirewall) staleNetworks(ctx context.Context, keep func(string) bool) ([]string, error) {
	return b.d.staleFirewall(ctx, keep)
}

func (b iptablesFirewall) ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint, fresh bool) error {
	return b.d.ensurePorts(ctx, eid, ep, fresh)
}

func (b iptablesFirewall) removePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error {
	return b.d.removePorts(ctx, eid, ep)
}

func (b iptablesFirewall) stalePorts(ctx context.Context, live []drivers.EndpointID) ([]string, error) {
	return b.d.stalePorts(ctx, live)
}

// removeOther removes the nftables backend's table and its accept rules in the iptables
// FORWARD chains, over netlink.
func (b iptablesFirewall) removeOther(ctx context.Context) ([]drivers.Repair, error) {
	if b.d.noFW {
		return nil, nil
	}
	return removeNftLeftovers(b.d)
}

package driverstest

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

var _ drivers.Driver = (*Fake)(nil)

// Fake is a driver that does no kernel work. It records every call as a line of text (see
// [Fake.Calls]), can be told to fail a method ([Fake.FailOn]), and keeps just enough state to
// keep the [drivers.Driver] contract, so it passes [Run]. It is stricter than a real driver
// about order: DeleteNetwork of a network that still has endpoints and DeleteEndpoint of a
// joined endpoint fail with an error matching cnm.ErrConflict, and Join of an endpoint never
// created fails with one matching cnm.ErrNotFound.
//
// A Fake is safe for concurrent use. Create one with [NewFake].
type Fake struct {
	caps drivers.Capabilities

	mu        sync.Mutex // guards following
	calls     []string
	fail      map[string]error
	networks  map[drivers.NetworkID]*fakeNetwork
	endpoints map[drivers.EndpointID]drivers.NetworkID
	joined    map[drivers.EndpointID]string // sandbox key
}

type fakeNetwork struct {
	req  string // the rendered request, to tell an identical re-creation from a mismatch
	gw4  netip.Addr
	gw6  netip.Addr
	intl bool
}

// NewFake returns a Fake that reports caps from Capabilities. The zero Capabilities describe a
// local driver with IPAM whose endpoints join namespace sandboxes; Join then reports
// InterfaceInSandbox, and otherwise NoInterface.
func NewFake(caps drivers.Capabilities) *Fake {
	return &Fake{
		caps:      caps,
		fail:      make(map[string]error),
		networks:  make(map[drivers.NetworkID]*fakeNetwork),
		endpoints: make(map[drivers.EndpointID]drivers.NetworkID),
		joined:    make(map[drivers.EndpointID]string),
	}
}

// Calls returns a copy of the calls made so far, one line each, oldest first. A line names the
// method and the request's fields, IDs shortened to 12 characters, for example
//
//	CreateEndpoint net=0123456789ab ep=89abcdef0123 mac=- ipv4=10.0.0.2/24 ipv6=-
//
// A missing MAC or address is rendered "-", and a failed call ends with " -> " and the error.
// A call of Capabilities is the line "Capabilities".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// FailOn makes every later call of the named method ("Join", "CreateNetwork", ...) return err,
// without changing any state, until FailOn is called again for that method with a nil err.
func (f *Fake) FailOn(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
		return
	}
	f.fail[method] = err
}

// beginLocked records the call and returns the error FailOn set for method, if any.
func (f *Fake) beginLocked(method, line string) error {
	f.calls = append(f.calls, method+" "+line)
	return f.fail[method]
}

// endLocked notes err on the last recorded call and returns it.
func (f *Fake) endLocked(err error) error {
	if err != nil {
		f.calls[len(f.calls)-1] += " -> " + err.Error()
	}
	return err
}

// Capabilities returns the capabilities given to NewFake.
func (f *Fake) Capabilities() drivers.Capabilities {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "Capabilities")
	return f.caps
}

// CreateNetwork records the network. Re-creating it with the same request returns nil; with
// another request, an error matching cnm.ErrConflict.
func (f *Fake) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	line := renderNetwork(req)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginLocked("CreateNetwork", line); err != nil {
		return f.endLocked(err)
	}
	if req.NetworkID == "" {
		return f.endLocked(errclass.Invalid("network ID", "", "empty"))
	}
	if n, ok := f.networks[req.NetworkID]; ok {
		if n.req != line {
			return f.endLocked(&errclass.ConflictError{Kind: "network", Name: string(req.NetworkID), Reason: "exists with another configuration"})
		}
		return nil
	}
	n := &fakeNetwork{req: line, intl: req.Internal}
	if len(req.IPv4) > 0 && req.IPv4[0].Gateway.IsValid() {
		n.gw4 = req.IPv4[0].Gateway
	}
	if len(req.IPv6) > 0 && req.IPv6[0].Gateway.IsValid() {
		n.gw6 = req.IPv6[0].Gateway
	}
	f.networks[req.NetworkID] = n
	return nil
}

// DeleteNetwork forgets the network. A missing network returns nil; one with endpoints, an
// error matching cnm.ErrConflict.
func (f *Fake) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := "net=" + req.NetworkID.Short()
	if req.Forget {
		line += " forget"
	}
	if err := f.beginLocked("DeleteNetwork", line); err != nil {
		return f.endLocked(err)
	}
	for _, nid := range f.endpoints {
		if nid == req.NetworkID {
			return f.endLocked(&errclass.ConflictError{Kind: "network", Name: string(req.NetworkID), Reason: "has endpoints"})
		}
	}
	delete(f.networks, req.NetworkID)
	return nil
}

// CreateEndpoint records the endpoint and returns the requested MAC unchanged (a nil MAC in
// the result). The network must exist.
func (f *Fake) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	line := fmt.Sprintf("net=%s ep=%s mac=%s ipv4=%s ipv6=%s",
		req.NetworkID.Short(), req.EndpointID.Short(), macString(req.MAC), prefixString(req.IPv4), prefixString(req.IPv6))
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginLocked("CreateEndpoint", line); err != nil {
		return drivers.CreateEndpointResult{}, f.endLocked(err)
	}
	if _, ok := f.networks[req.NetworkID]; !ok {
		return drivers.CreateEndpointResult{}, f.endLocked(&errclass.NotFoundError{Kind: "network", Name: string(req.NetworkID)})
	}
	if nid, ok := f.endpoints[req.EndpointID]; ok && nid != req.NetworkID {
		return drivers.CreateEndpointResult{}, f.endLocked(&errclass.ConflictError{Kind: "endpoint", Name: string(req.EndpointID), Reason: "exists on another network"})
	}
	f.endpoints[req.EndpointID] = req.NetworkID
	return drivers.CreateEndpointResult{}, nil
}

// DeleteEndpoint forgets the endpoint. A missing endpoint returns nil; a joined one, an error
// matching cnm.ErrConflict.
func (f *Fake) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginLocked("DeleteEndpoint", fmt.Sprintf("net=%s ep=%s", req.NetworkID.Short(), req.EndpointID.Short())); err != nil {
		return f.endLocked(err)
	}
	if _, ok := f.joined[req.EndpointID]; ok {
		return f.endLocked(&errclass.ConflictError{Kind: "endpoint", Name: string(req.EndpointID), Reason: "is joined to a sandbox"})
	}
	delete(f.endpoints, req.EndpointID)
	return nil
}

// Join records the endpoint as joined. The network and the endpoint must exist. The result
// carries the network's first IPv4 and IPv6 gateways, none for an internal network.
func (f *Fake) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	line := fmt.Sprintf("net=%s ep=%s sandbox=%s if=%s mac=%s ipv4=%s ipv6=%s",
		req.NetworkID.Short(), req.EndpointID.Short(), req.SandboxKey, req.IfName, macString(req.MAC), prefixString(req.IPv4), prefixString(req.IPv6))
	if req.SandboxID != "" {
		line += " sandbox_id=" + req.SandboxID
	}
	if len(req.Aliases) > 0 {
		line += " aliases=" + strings.Join(req.Aliases, ",")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginLocked("Join", line); err != nil {
		return drivers.JoinResult{}, f.endLocked(err)
	}
	n, ok := f.networks[req.NetworkID]
	if !ok {
		return drivers.JoinResult{}, f.endLocked(&errclass.NotFoundError{Kind: "network", Name: string(req.NetworkID)})
	}
	if nid, ok := f.endpoints[req.EndpointID]; !ok || nid != req.NetworkID {
		return drivers.JoinResult{}, f.endLocked(&errclass.NotFoundError{Kind: "endpoint", Name: string(req.EndpointID)})
	}
	f.joined[req.EndpointID] = req.SandboxKey
	res := drivers.JoinResult{InterfaceInSandbox: true}
	if f.caps.Sandbox != drivers.NamespaceSandbox {
		res = drivers.JoinResult{NoInterface: true}
	}
	if !n.intl {
		res.Gateway, res.GatewayIPv6 = n.gw4, n.gw6
	}
	return res, nil
}

// Leave records the endpoint as no longer joined. Leaving twice returns nil.
func (f *Fake) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginLocked("Leave", fmt.Sprintf("net=%s ep=%s sandbox=%s if=%s gone=%t",
		req.NetworkID.Short(), req.EndpointID.Short(), req.SandboxKey, req.IfName, req.SandboxGone)); err != nil {
		return f.endLocked(err)
	}
	delete(f.joined, req.EndpointID)
	return nil
}

func renderNetwork(req drivers.CreateNetworkRequest) string {
	var b strings.Builder
	fmt.Fprintf(&b, "net=%s name=%q", req.NetworkID.Short(), req.Name)
	if req.Options != nil {
		labels := req.Options.Labels()
		fmt.Fprintf(&b, " options=%s{", req.Options.DriverType())
		for i, k := range slices.Sorted(maps.Keys(labels)) {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%s", k, labels[k])
		}
		b.WriteByte('}')
	}
	for _, fam := range []struct {
		name string
		data []drivers.IPAMData
	}{{"ipv4", req.IPv4}, {"ipv6", req.IPv6}} {
		for _, d := range fam.data {
			fmt.Fprintf(&b, " %s=%s", fam.name, d.Subnet)
			if d.Range.IsValid() {
				fmt.Fprintf(&b, ",range=%s", d.Range)
			}
			if d.Gateway.IsValid() {
				fmt.Fprintf(&b, ",gw=%s", d.Gateway)
			}
			for _, k := range slices.Sorted(maps.Keys(d.AuxAddresses)) {
				fmt.Fprintf(&b, ",aux:%s=%s", k, d.AuxAddresses[k])
			}
		}
	}
	fmt.Fprintf(&b, " internal=%t enable_ipv6=%t", req.Internal, req.EnableIPv6)
	if len(req.Allocation) > 0 {
		b.WriteString(" allocation=")
		for i, k := range slices.Sorted(maps.Keys(req.Allocation)) {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%s", k, req.Allocation[k])
		}
	}
	return b.String()
}

func macString(mac net.HardwareAddr) string {
	if mac == nil {
		return "-"
	}
	return mac.String()
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return "-"
	}
	return p.String()
}

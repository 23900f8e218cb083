package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

// PTP is a third-party network driver: routed point-to-point links, as the CNI ptp plugin
// makes them. Each endpoint gets a veth pair; the host end holds the network's gateway
// address (a /32) and answers ARP for the rest of the subnet (proxy ARP), and the host routes
// each container's /32 to its veth. No bridge: containers reach each other and the host
// through the host's routing table.
//
// It implements the seven methods of drivers.Driver and nothing else, and uses only the
// packages any driver may: drivers, netns and netlink.
type PTP struct {
	hostNetns string // the host namespace's path: where the host ends of the veths live

	mu   sync.Mutex // guards following
	gw   map[drivers.NetworkID]netip.Addr
	addr map[drivers.EndpointID]netip.Prefix
}

var _ drivers.Driver = (*PTP)(nil)

// NewPTP returns the driver, working in the host namespace at hostNetns.
func NewPTP(hostNetns string) *PTP {
	return &PTP{hostNetns: hostNetns, gw: map[drivers.NetworkID]netip.Addr{}, addr: map[drivers.EndpointID]netip.Prefix{}}
}

// Capabilities: local networks of namespace sandboxes, with IPAM.
func (d *PTP) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.LocalScope, Sandbox: drivers.NamespaceSandbox}
}

// CreateNetwork keeps the network's gateway; the kernel needs nothing per network.
func (d *PTP) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	if len(req.IPv6) > 0 || req.EnableIPv6 {
		return &drivers.NotSupportedError{What: "IPv6 on a ptp network"}
	}
	if len(req.IPv4) != 1 || !req.IPv4[0].Gateway.IsValid() {
		return drivers.Invalid("subnet", fmt.Sprint(req.IPv4), "a ptp network needs one IPv4 subnet with a gateway")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gw[req.NetworkID] = req.IPv4[0].Gateway
	return nil
}

// DeleteNetwork forgets the network.
func (d *PTP) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.gw, req.NetworkID)
	return nil
}

// CreateEndpoint keeps the endpoint's address for Join.
func (d *PTP) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.gw[req.NetworkID]; !ok {
		return drivers.CreateEndpointResult{}, &drivers.NotFoundError{Kind: "network", Name: string(req.NetworkID)}
	}
	d.addr[req.EndpointID] = req.IPv4
	return drivers.CreateEndpointResult{}, nil
}

// DeleteEndpoint forgets the endpoint.
func (d *PTP) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.addr, req.EndpointID)
	return nil
}

// hostLink is the name of the host end of an endpoint's veth.
func hostLink(id drivers.EndpointID) string { return "ptp" + string(id)[:8] }

// withHost runs f with a netlink handle on the host namespace.
func (d *PTP) withHost(f func(*netns.NS, *netlink.Handle) error) error {
	ns, err := netns.Open(d.hostNetns)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	return f(ns, h)
}

// Join makes the veth pair in the host namespace: the host end gets the gateway address, proxy
// ARP and the route to the container's address; the sandbox moves the other end in.
func (d *PTP) Join(ctx context.Context, req drivers.JoinRequest) (_ drivers.JoinResult, err error) {
	d.mu.Lock()
	gw, ok := d.gw[req.NetworkID]
	addr := req.IPv4
	d.mu.Unlock()
	if !ok {
		return drivers.JoinResult{}, &drivers.NotFoundError{Kind: "network", Name: string(req.NetworkID)}
	}
	host, peer := hostLink(req.EndpointID), "ptq"+string(req.EndpointID)[:8]
	err = d.withHost(func(ns *netns.NS, h *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer, PeerHardwareAddr: req.MAC}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("ptp: add veth %s: %w", host, err)
		}
		link, err := h.LinkByName(host)
		if err == nil {
			err = h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}
		if err == nil {
			err = ns.Do(func() error { // sysctls are per namespace: write them inside it
				return errors.Join(
					os.WriteFile("/proc/sys/net/ipv4/conf/"+host+"/proxy_arp", []byte("1"), 0),
					os.WriteFile("/proc/sys/net/ipv4/neigh/"+host+"/proxy_delay", []byte("0"), 0), // answer at once
					os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0))
			})
		}
		if err == nil {
			err = h.LinkSetUp(link)
		}
		if err == nil && addr.IsValid() {
			err = h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: scopeLink,
				Dst: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}
		if err != nil {
			return errors.Join(fmt.Errorf("ptp: host end %s: %w", host, err), h.LinkDel(veth))
		}
		return nil
	})
	if err != nil {
		return drivers.JoinResult{}, err
	}
	return drivers.JoinResult{SrcName: peer, Gateway: gw}, nil
}

// Leave deletes the host end, which takes the container end with it (when the sandbox is not
// gone already) and the route.
func (d *PTP) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	return d.withHost(func(_ *netns.NS, h *netlink.Handle) error {
		link, err := h.LinkByName(hostLink(req.EndpointID))
		if _, missing := errors.AsType[netlink.LinkNotFoundError](err); missing {
			return nil
		}
		if err != nil {
			return err
		}
		return h.LinkDel(link)
	})
}

// scopeLink is RT_SCOPE_LINK (netlink.SCOPE_LINK, which only Linux builds define): the
// example builds on every system, as the module does.
const scopeLink netlink.Scope = 253

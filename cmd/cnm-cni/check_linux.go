package main

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// checkKernel checks the namespace at path: the link exp.ifname is there, up, with the
// recorded MAC and addresses, and for each family with a gateway there is a default route via
// a gateway of one of the sandbox's networks (the first joined provides it). It reads the namespace through a netlink socket opened in it, without
// entering it.
func checkKernel(path string, exp expected) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return &cniError{Code: codeCheckFailed, Msg: "check: open namespace " + path, Details: err.Error()}
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return &cniError{Code: codeIOFailure, Msg: "check: netlink in " + path, Details: err.Error()}
	}
	defer h.Close()
	link, err := h.LinkByName(exp.ifname)
	if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
		return errorf(codeCheckFailed, "check: no link %s in namespace %s", exp.ifname, path)
	}
	if err != nil {
		return &cniError{Code: codeIOFailure, Msg: "check: link " + exp.ifname, Details: err.Error()}
	}
	attrs := link.Attrs()
	if attrs.Flags&net.FlagUp == 0 {
		return errorf(codeCheckFailed, "check: link %s in %s is down", exp.ifname, path)
	}
	if exp.mac != "" && !strings.EqualFold(attrs.HardwareAddr.String(), exp.mac) {
		return errorf(codeCheckFailed, "check: link %s has MAC %s, cnmd recorded %s", exp.ifname, attrs.HardwareAddr, exp.mac)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return &cniError{Code: codeIOFailure, Msg: "check: addresses of " + exp.ifname, Details: err.Error()}
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return &cniError{Code: codeIOFailure, Msg: "check: routes of " + exp.ifname, Details: err.Error()}
	}
	for _, ip := range exp.ips {
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			got, ok := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			return ok && netip.PrefixFrom(got.Unmap(), ones) == ip.addr
		}) {
			return errorf(codeCheckFailed, "check: link %s in %s lacks address %s", exp.ifname, path, ip.addr)
		}
		if !ip.gw.IsValid() {
			continue
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			gw, ok := netip.AddrFromSlice(r.Gw)
			isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified() && func() bool { o, _ := r.Dst.Mask.Size(); return o == 0 }()
			return ok && isDefault && slices.Contains(exp.gateways, gw.Unmap())
		}) {
			return errorf(codeCheckFailed, "check: namespace %s has no default route via %s or another gateway of its networks", path, ip.gw)
		}
	}
	return nil
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
)

// plugin is one call of the plugin: the configuration and a client of cnmd.
type plugin struct {
	conf *netConf
	net  string // the cnm network
	c    *client.Client
}

func newPlugin(conf *netConf) (*plugin, error) {
	cfg := client.Config{Host: conf.Host}
	if conf.TLSCACert != "" || conf.TLSCert != "" || conf.TLSKey != "" {
		tc, err := client.TLSConfig(conf.TLSCACert, conf.TLSCert, conf.TLSKey)
		if err != nil {
			return nil, &cniError{Code: codeInvalidConfig, Msg: "network configuration: TLS files", Details: err.Error()}
		}
		cfg.TLS = tc
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, &cniError{Code: codeInvalidConfig, Msg: "network configuration: host", Details: err.Error()}
	}
	return &plugin{conf: conf, net: conf.network(), c: c}, nil
}

func (p *plugin) close() { p.c.Close() }

// agentErr turns an error of cnmd into the spec's error: its class picks the code.
func (p *plugin) agentErr(op string, err error) error {
	msg := fmt.Sprintf("%s: cnmd", op)
	switch api.Class(err) {
	case api.ClassUnavailable:
		return &cniError{Code: codeTryAgainLater, Msg: msg + " is unavailable", Details: err.Error()}
	case api.ClassInvalidParameter:
		return &cniError{Code: codeInvalidConfig, Msg: msg + " refused the request", Details: err.Error()}
	case api.ClassNotFound:
		if strings.Contains(err.Error(), "network") {
			return &cniError{Code: codeInvalidConfig, Msg: fmt.Sprintf("%s has no network %q", msg, p.net), Details: err.Error()}
		}
		return &cniError{Code: codeUnknownContainer, Msg: msg + ": not found", Details: err.Error()}
	}
	return &cniError{Code: codeAgent, Msg: msg + " refused the request", Details: err.Error()}
}

// find returns the sandbox's endpoint on the plugin's network (by name or ID), and the name
// it is listed under. A non-empty ifname must match the endpoint's interface.
func (p *plugin) find(in api.SandboxInspect, ifname string) (string, api.EndpointSettings, bool) {
	for name, es := range in.NetworkSettings.Networks {
		if (name == p.net || es.NetworkID == p.net) && (ifname == "" || es.IfName == ifname) {
			return name, es, true
		}
	}
	return "", api.EndpointSettings{}, false
}

// add attaches the runtime's namespace: a new sandbox on it with its endpoint on the network,
// or, when the container has a sandbox already (another network), an endpoint more.
func (p *plugin) add(ctx context.Context, a env) (*result, error) {
	req := api.SandboxCreate{Name: a.ContainerID, Network: p.net, Netns: a.Netns, IfName: a.IfName}
	for attempt := 0; attempt < 3; attempt++ {
		in, err := p.c.SandboxCreate(ctx, req)
		if err == nil {
			return p.result(in, a)
		}
		if api.Class(err) != api.ClassAlreadyExists {
			return nil, p.agentErr("add", err)
		}
		createErr := err
		// The container has a sandbox: this network's attachment already, or another's.
		in, err = p.c.SandboxInspect(ctx, a.ContainerID)
		if api.Class(err) == api.ClassNotFound {
			if attempt > 0 {
				// Not the sandbox's name that exists (an interface name in the namespace?).
				return nil, p.agentErr("add", createErr)
			}
			continue // deleted meanwhile: create it again
		}
		if err != nil {
			return nil, p.agentErr("add", err)
		}
		if in.Netns != a.Netns {
			return nil, errorf(codeAgent, "add: container %s has a sandbox in cnmd on namespace %q, not %q (a sandbox not made by cnm-cni has no namespace path)", a.ContainerID, in.Netns, a.Netns)
		}
		if _, es, ok := p.find(in, ""); ok {
			if es.IfName == a.IfName {
				return p.result(in, a) // a repeated ADD: the same attachment
			}
			return nil, errorf(codeAgent, "add: container %s is attached to network %s already, as %s", a.ContainerID, p.net, es.IfName)
		}
		_, err = p.c.NetworkConnect(ctx, p.net, api.Connect{Sandbox: a.ContainerID, IfName: a.IfName})
		if api.Class(err) == api.ClassNotFound && strings.Contains(err.Error(), "sandbox") {
			continue
		}
		if err != nil {
			return nil, p.agentErr("add", err)
		}
		if in, err = p.c.SandboxInspect(ctx, a.ContainerID); err != nil {
			return nil, p.agentErr("add", err)
		}
		return p.result(in, a)
	}
	return nil, errorf(codeTryAgainLater, "add: container %s: its sandbox kept changing under concurrent calls", a.ContainerID)
}

// result is the ADD result for the attachment of a in the sandbox in.
func (p *plugin) result(in api.SandboxInspect, a env) (*result, error) {
	_, es, ok := p.find(in, a.IfName)
	if !ok {
		return nil, errorf(codeAgent, "add: cnmd lists no endpoint of container %s on network %s as %s", a.ContainerID, p.net, a.IfName)
	}
	r := &result{CNIVersion: p.conf.CNIVersion, Interfaces: []iface{{Name: es.IfName, Mac: es.MacAddress, Sandbox: a.Netns}}}
	exp, err := expectOf(es)
	if err != nil {
		return nil, err
	}
	// The sandbox's default route of a family goes through the first interface joined with
	// a gateway of it: this one when no other network of the sandbox has one.
	others := map[bool]bool{}
	for _, o := range in.NetworkSettings.Networks {
		if o.IfName != es.IfName {
			others[true] = others[true] || o.Gateway != ""
			others[false] = others[false] || o.IPv6Gateway != ""
		}
	}
	for _, ip := range exp.ips {
		idx := 0
		c := ipConfig{Interface: &idx, Address: ip.addr, Gateway: ip.gw}
		if p.conf.CNIVersion == "0.4.0" {
			c.Version = map[bool]string{true: "4", false: "6"}[ip.addr.Addr().Is4()]
		}
		r.IPs = append(r.IPs, c)
		if ip.gw.IsValid() && !others[ip.gw.Is4()] {
			r.Routes = append(r.Routes, route{Dst: netip.PrefixFrom(unspecified(ip.gw), 0), GW: ip.gw})
		}
	}
	r.DNS = readResolvConf(in.ResolvConfPath)
	return r, nil
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// expected is what cnmd recorded for an attachment, typed.
type expected struct {
	ifname string
	mac    string
	ips    []expectedIP
	// gateways are those of all the sandbox's networks: the default route of a family goes
	// through one of them.
	gateways []netip.Addr
}

type expectedIP struct {
	addr netip.Prefix
	gw   netip.Addr // zero when none
}

func expectOf(es api.EndpointSettings) (expected, error) {
	e := expected{ifname: es.IfName, mac: es.MacAddress}
	for _, f := range []struct {
		addr string
		bits int
		gw   string
	}{{es.IPAddress, es.IPPrefixLen, es.Gateway}, {es.GlobalIPv6Address, es.GlobalIPv6PrefixLen, es.IPv6Gateway}} {
		if f.addr == "" {
			continue
		}
		a, err := netip.ParseAddr(f.addr)
		if err != nil {
			return e, errorf(codeAgent, "cnmd's address %q: %v", f.addr, err)
		}
		ip := expectedIP{addr: netip.PrefixFrom(a, f.bits)}
		if f.gw != "" {
			if ip.gw, err = netip.ParseAddr(f.gw); err != nil {
				return e, errorf(codeAgent, "cnmd's gateway %q: %v", f.gw, err)
			}
		}
		e.ips = append(e.ips, ip)
	}
	return e, nil
}

// readResolvConf returns the DNS settings of the resolv.conf cnmd wrote for the sandbox, or
// nil when it cannot be read (the result's dns is optional).
func readResolvConf(path string) *dnsSettings {
	b, err := os.ReadFile(path)
	if err != nil || path == "" {
		return nil
	}
	var d dnsSettings
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "nameserver":
			d.Nameservers = append(d.Nameservers, f[1])
		case "domain":
			d.Domain = f[1]
		case "search":
			d.Search = append(d.Search, f[1:]...)
		case "options":
			d.Options = append(d.Options, f[1:]...)
		}
	}
	if d.Nameservers == nil && d.Domain == "" && d.Search == nil && d.Options == nil {
		return nil
	}
	return &d
}

// del removes the attachment of a, if cnmd has it.
func (p *plugin) del(ctx context.Context, a env) error {
	in, err := p.c.SandboxInspect(ctx, a.ContainerID)
	if api.Class(err) == api.ClassNotFound {
		return nil // never added, deleted already, or freed by GC
	}
	if err != nil {
		return p.agentErr("del", err)
	}
	if in.Netns == "" {
		return nil // a sandbox of the same name made otherwise (cnmctl): not an attachment
	}
	name, _, ok := p.find(in, a.IfName)
	if !ok {
		return nil
	}
	return p.free(ctx, in, name, "del")
}

// free removes the sandbox's endpoint on network name: the whole sandbox when it is the
// last, which takes the interfaces out of the runtime's namespace.
func (p *plugin) free(ctx context.Context, in api.SandboxInspect, name, op string) error {
	var err error
	if len(in.NetworkSettings.Networks) <= 1 {
		err = p.c.SandboxRemove(ctx, in.Name, false)
	} else {
		err = p.c.NetworkDisconnect(ctx, name, api.Disconnect{Sandbox: in.Name, Force: true})
	}
	if err != nil && api.Class(err) != api.ClassNotFound {
		return p.agentErr(op, err)
	}
	return nil
}

// check compares the kernel with cnmd's record of the attachment, and both with the
// runtime's previous result.
func (p *plugin) check(ctx context.Context, a env) error {
	in, err := p.c.SandboxInspect(ctx, a.ContainerID)
	if api.Class(err) == api.ClassNotFound {
		return errorf(codeUnknownContainer, "check: cnmd has no attachment of container %s", a.ContainerID)
	}
	if err != nil {
		return p.agentErr("check", err)
	}
	if in.Netns != a.Netns {
		return errorf(codeCheckFailed, "check: container %s is attached on namespace %q, not %q", a.ContainerID, in.Netns, a.Netns)
	}
	_, es, ok := p.find(in, a.IfName)
	if !ok {
		return errorf(codeUnknownContainer, "check: container %s has no interface %s on network %s", a.ContainerID, a.IfName, p.net)
	}
	exp, err := expectOf(es)
	if err != nil {
		return err
	}
	for _, o := range in.NetworkSettings.Networks {
		for _, g := range []string{o.Gateway, o.IPv6Gateway} {
			if a, err := netip.ParseAddr(g); err == nil {
				exp.gateways = append(exp.gateways, a)
			}
		}
	}
	if len(p.conf.PrevResult) > 0 {
		if err := comparePrev(p.conf.PrevResult, exp); err != nil {
			return err
		}
	}
	if err := checkKernel(a.Netns, exp); err != nil {
		return err
	}
	return nil
}

// comparePrev checks that the runtime's previous result holds the recorded interface and
// addresses.
func comparePrev(raw json.RawMessage, exp expected) error {
	var prev result
	if err := json.Unmarshal(raw, &prev); err != nil {
		return &cniError{Code: codeDecodeFailure, Msg: "check: decode prevResult", Details: err.Error()}
	}
	idx := slices.IndexFunc(prev.Interfaces, func(i iface) bool { return i.Name == exp.ifname })
	if idx < 0 {
		return errorf(codeCheckFailed, "check: prevResult has no interface %s", exp.ifname)
	}
	if m := prev.Interfaces[idx].Mac; m != "" && !strings.EqualFold(m, exp.mac) {
		return errorf(codeCheckFailed, "check: prevResult gives %s MAC %s, cnmd recorded %s", exp.ifname, m, exp.mac)
	}
	for _, ip := range exp.ips {
		if !slices.ContainsFunc(prev.IPs, func(c ipConfig) bool {
			return c.Address == ip.addr && (c.Interface == nil || *c.Interface == idx)
		}) {
			return errorf(codeCheckFailed, "check: prevResult lacks address %s on %s, which cnmd recorded", ip.addr, exp.ifname)
		}
	}
	for _, c := range prev.IPs {
		if (c.Interface == nil || *c.Interface == idx) && !slices.ContainsFunc(exp.ips, func(ip expectedIP) bool { return ip.addr == c.Address }) {
			return errorf(codeCheckFailed, "check: prevResult has address %s on %s, which cnmd does not record", c.Address, exp.ifname)
		}
	}
	return nil
}

// gc removes every attachment of the network made by cnm-cni that the runtime did not list
// as valid.
func (p *plugin) gc(ctx context.Context) error {
	all, err := p.c.SandboxList(ctx)
	if err != nil {
		return p.agentErr("gc", err)
	}
	valid := map[attachment]bool{}
	for _, v := range p.conf.ValidAttachments {
		valid[v] = true
	}
	var errs []error
	for _, in := range all {
		if in.Netns == "" {
			continue
		}
		name, es, ok := p.find(in, "")
		if !ok || valid[attachment{ContainerID: in.Name, IfName: es.IfName}] {
			continue
		}
		if err := p.free(ctx, in, name, "gc"); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		e, _ := errors.AsType[*cniError](errs[0])
		return &cniError{Code: e.Code, Msg: fmt.Sprintf("gc: %d attachments not freed", len(errs)), Details: errors.Join(errs...).Error()}
	}
	return nil
}

// status reports whether cnmd answers and knows the network.
func (p *plugin) status(ctx context.Context) error {
	if _, err := p.c.Health(ctx); err != nil {
		return &cniError{Code: codeNotAvailable, Msg: "status: cnmd is not ready", Details: err.Error()}
	}
	if _, err := p.c.NetworkInspect(ctx, p.net); err != nil {
		return &cniError{Code: codeNotAvailable, Msg: fmt.Sprintf("status: cnmd has no network %q", p.net), Details: err.Error()}
	}
	return nil
}

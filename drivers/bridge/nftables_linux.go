package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The nftables backend's table, and its chains, sets and maps (see the package doc).
const (
	NftTable = "cnm" // family inet

	NftChainForward     = "forward"     // filter, hook forward, priority NftForwardPriority
	NftChainUser        = "user"        // the user's, jumped to first from forward; never touched
	NftChainPostrouting = "postrouting" // nat, hook postrouting, priority srcnat
	NftChainPrerouting  = "prerouting"  // nat, hook prerouting, priority dstnat
	NftChainOutput      = "output"      // nat, hook output, priority dstnat
	NftChainDNAT        = "published"   // jumped to from prerouting and output for local addresses

	NftChainInPrefix  = "in-"  // and a bridge name: what enters from the bridge
	NftChainOutPrefix = "out-" // and a bridge name: what leaves by the bridge from elsewhere
	NftChainNATPrefix = "nat-" // and a bridge name: the network's masquerading

	NftMapForwardIn  = "forward-in"   // bridge name : goto in-BR
	NftMapForwardOut = "forward-out"  // bridge name : goto out-BR
	NftSetBridges    = "bridges"      // every cnm bridge, for isolation
	NftSetDrop       = "forward-drop" // the families (nfproto) whose other forwarded traffic is dropped
	NftMapNAT4       = "nat4"         // IPv4 subnet (interval) : jump nat-BR
	NftMapNAT6       = "nat6"         // IPv6 subnet (interval) : jump nat-BR
	NftSetPorts4     = "ports4"       // container address . protocol . container port, accepted from outside
	NftMapDNAT4      = "dnat4"        // host address . protocol . host port : container address . port
	NftMapDNAT4Any   = "dnat4-any"    // protocol . host port : container address . port (all host addresses)

	// NftForwardPriority is the priority of the forward chain: before the iptables filter
	// FORWARD chain (0), so that the accept mark is set when that chain sees the packet.
	NftForwardPriority = -10
	// NftAcceptMark is the packet mark bit the forward chain sets on every packet it accepts;
	// the accept rule cnm puts first in the iptables FORWARD chain of the nf_tables
	// compatibility tables lets exactly those packets through.
	NftAcceptMark = 0x10000000
	// nftIPTablesComment is the comment of that accept rule: how cnm finds it again.
	nftIPTablesComment = "cnm: accept what the cnm nftables table accepted"
)

// Register numbers (linux/netfilter/nf_tables.h): NFT_REG_VERDICT, NFT_REG_1, and the 32-bit
// registers NFT_REG32_01 and NFT_REG32_02 that follow NFT_REG_1 in a concatenation.
const (
	regVerdict = 0
	reg1       = 1
	reg32x01   = 9
	reg32x02   = 10
)

const ipsDstNAT = 1 << 5 // IPS_DST_NAT: the connection was DNATed

var typeIfname = func() nftables.SetDatatype {
	t := nftables.SetDatatype{Name: "ifname", Bytes: unix.IFNAMSIZ}
	t.SetNFTMagic(41) // TYPE_IFNAME in nftables' datatype.h
	return t
}()

// nftFirewall is the nftables backend: one nf_tables batch (netlink, no process) per
// operation, in the table inet cnm.
type nftFirewall struct {
	d    *Driver
	conn *nftables.Conn // lasting, in the host namespace

	mu sync.Mutex // one batch at a time: the Conn buffers messages; guards following
	// ready reports that this process has converged the table's base chains and sets once.
	ready bool

	table                                 *nftables.Table
	in, out, bridges, nat4, nat6, dropFam *nftables.Set
	ports4, dnat4, dnat4any               *nftables.Set
	fwd, user, post, pre, output, dnat    *nftables.Chain
	iptFilter4, iptFilter6                *nftables.Table
}

// newNftFirewall opens a lasting nf_tables netlink socket in the host namespace and checks
// that the kernel answers on it.
func newNftFirewall(d *Driver) (*nftFirewall, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(d.ns.Handle())), nftables.AsLasting())
	if err != nil {
		return nil, &errclass.UnavailableError{What: "nftables (nf_tables netlink)", Err: err}
	}
	if _, err := conn.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		conn.CloseLasting()
		return nil, &errclass.UnavailableError{What: "nftables (nf_tables netlink)", Err: err}
	}
	t := &nftables.Table{Name: NftTable, Family: nftables.TableFamilyINet}
	f := &nftFirewall{d: d, conn: conn, table: t,
		iptFilter4: &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4},
		iptFilter6: &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv6},
	}
	f.in = &nftables.Set{Table: t, Name: NftMapForwardIn, IsMap: true, KeyType: typeIfname, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
	f.out = &nftables.Set{Table: t, Name: NftMapForwardOut, IsMap: true, KeyType: typeIfname, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
	f.bridges = &nftables.Set{Table: t, Name: NftSetBridges, KeyType: typeIfname, KeyByteOrder: binaryutil.NativeEndian}
	f.dropFam = &nftables.Set{Table: t, Name: NftSetDrop, KeyType: nftables.TypeNFProto}
	f.nat4 = &nftables.Set{Table: t, Name: NftMapNAT4, IsMap: true, Interval: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
	f.nat6 = &nftables.Set{Table: t, Name: NftMapNAT6, IsMap: true, Interval: true, KeyType: nftables.TypeIP6Addr, DataType: nftables.TypeVerdict}
	f.ports4 = &nftables.Set{Table: t, Name: NftSetPorts4, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	f.dnat4 = &nftables.Set{Table: t, Name: NftMapDNAT4, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	f.dnat4any = &nftables.Set{Table: t, Name: NftMapDNAT4Any, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	f.fwd = &nftables.Chain{Table: t, Name: NftChainForward, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(NftForwardPriority)}
	f.user = &nftables.Chain{Table: t, Name: NftChainUser}
	f.post = &nftables.Chain{Table: t, Name: NftChainPostrouting, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
	f.pre = &nftables.Chain{Table: t, Name: NftChainPrerouting, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}
	f.output = &nftables.Chain{Table: t, Name: NftChainOutput, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest}
	f.dnat = &nftables.Chain{Table: t, Name: NftChainDNAT}
	return f, nil
}

func (f *nftFirewall) kind() Firewall { return FirewallNftables }

func (f *nftFirewall) close() { f.conn.CloseLasting() }

// check needs no binary: only br_netfilter when ICC is off.
func (f *nftFirewall) check(n *network) error { return f.d.checkBrNF(n) }

// chain returns a regular chain of the table.
func (f *nftFirewall) chain(name string) *nftables.Chain {
	return &nftables.Chain{Table: f.table, Name: name}
}

// planBase adds to the batch what makes the table, its sets and maps, and its base chains
// with their rules exist, exactly as wanted: the base chains are flushed and written again in
// the same batch. The user's chain is made when missing and never flushed.
func (f *nftFirewall) planBase() error {
	c := f.conn
	c.AddTable(f.table)
	for _, s := range []*nftables.Set{f.in, f.out, f.bridges, f.dropFam, f.nat4, f.nat6, f.ports4, f.dnat4, f.dnat4any} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	c.AddChain(f.fwd)
	c.AddChain(f.user)
	for _, ch := range []*nftables.Chain{f.post, f.pre, f.output, f.dnat} {
		c.AddChain(ch)
	}
	for _, ch := range []*nftables.Chain{f.fwd, f.post, f.pre, f.output, f.dnat} {
		c.FlushChain(ch)
	}
	// forward: the user's chain, then the chain of the bridge the packet comes from, then that
	// of the bridge it goes to.
	f.add(f.fwd, jump(NftChainUser))
	f.add(f.fwd, load(expr.MetaKeyIIFNAME), vmap(f.in))
	f.add(f.fwd, load(expr.MetaKeyOIFNAME), vmap(f.out))
	// What is left of a family whose forwarding the driver turned on is dropped, as the
	// iptables backend sets that family's FORWARD policy to DROP.
	f.add(f.fwd, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, SetName: f.dropFam.Name, SetID: f.dropFam.ID}, drop())
	// postrouting: a source address in a network's subnet goes to its masquerading chain.
	f.add(f.post, nfproto(unix.NFPROTO_IPV4), payloadAddr(12, 4), vmap(f.nat4))
	f.add(f.post, nfproto(unix.NFPROTO_IPV6), payloadAddr(8, 16), vmap(f.nat6))
	// prerouting and output: traffic to a local address may be for a published port.
	local := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		jump(NftChainDNAT),
	}
	f.add(f.pre, nfproto(unix.NFPROTO_IPV4), local)
	f.add(f.output, nfproto(unix.NFPROTO_IPV4), payloadAddr(16, 4),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{127, 0, 0, 0}}, local)
	// dnat: by host address, protocol and port, then by protocol and port on every address.
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV4), payloadAddr(16, 4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x01},
		&expr.Payload{DestRegister: reg32x02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: f.dnat4.Name, SetID: f.dnat4.ID},
		dnatTo())
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Payload{DestRegister: reg32x01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: f.dnat4any.Name, SetID: f.dnat4any.ID},
		dnatTo())
	return nil
}

// Expression helpers.

func load(k expr.MetaKey) *expr.Meta { return &expr.Meta{Key: k, Register: reg1} }

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// nfproto is "meta nfproto P": the family of the packet in the inet table.
func nfproto(p byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}}}
}

func payloadAddr(offset, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}
}

func vmap(s *nftables.Set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg1, DestRegister: regVerdict, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}
}

func jump(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

func dnatTo() *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32x01}
}

func ifIs(k expr.MetaKey, name string, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{load(k), &expr.Cmp{Op: op, Register: reg1, Data: ifname(name)}}
}

var zero4 = []byte{0, 0, 0, 0}

// acceptMarked sets NftAcceptMark on the packet and accepts it.
func acceptMarked() []expr.Any {
	return []expr.Any{
		load(expr.MetaKeyMARK),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(NftAcceptMark)), Xor: binaryutil.NativeEndian.PutUint32(NftAcceptMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

func drop() *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictDrop} }

// rule flattens parts (expressions and slices of them) into a rule's exprs.
func rule(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		default:
			panic(fmt.Sprintf("rule: %T", p))
		}
	}
	return out
}

// add appends a rule made of parts (see rule) to c.
func (f *nftFirewall) add(c *nftables.Chain, parts ...any) {
	f.conn.AddRule(&nftables.Rule{Table: f.table, Chain: c, Exprs: rule(parts...)})
}

// netChains returns the names of n's own chains: in-BR, out-BR, and nat-BR when it has NAT
// rules.
func netChainNames(br string) []string {
	return []string{NftChainInPrefix + br, NftChainOutPrefix + br, NftChainNATPrefix + br}
}

// planNetwork adds to the batch n's chains (made, flushed and written) and its elements.
func (f *nftFirewall) planNetwork(n *network) error {
	br := n.bridge
	in, out, nat := f.chain(NftChainInPrefix+br), f.chain(NftChainOutPrefix+br), f.chain(NftChainNATPrefix+br)
	for _, c := range []*nftables.Chain{in, out} {
		f.conn.AddChain(c)
		f.conn.FlushChain(c)
	}
	icc := any(acceptMarked())
	if n.noICC {
		icc = drop()
	}
	// in-BR decides everything that enters from the bridge.
	f.add(in, ifIs(expr.MetaKeyOIFNAME, br, true), icc)
	if n.internal {
		f.add(in, drop())
	} else {
		f.add(in, load(expr.MetaKeyOIFNAME), &expr.Lookup{SourceRegister: reg1, SetName: f.bridges.Name, SetID: f.bridges.ID}, drop())
		f.add(in, acceptMarked())
	}
	// out-BR decides what goes to the bridge from an interface that is not a cnm bridge.
	if !n.internal {
		f.add(out, &expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero4}, acceptMarked())
		f.add(out, nfproto(unix.NFPROTO_IPV4), payloadAddr(16, 4),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x01},
			&expr.Payload{DestRegister: reg32x02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: f.ports4.Name, SetID: f.ports4.ID}, acceptMarked())
		if n.routed {
			f.add(out, nfproto(unix.NFPROTO_IPV4), load(expr.MetaKeyL4PROTO),
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMP}}, acceptMarked())
		}
	}
	f.add(out, drop())

	elem := []nftables.SetElement{{Key: ifname(br)}}
	if err := f.conn.SetAddElements(f.bridges, elem); err != nil {
		return err
	}
	if err := f.conn.SetAddElements(f.in, []nftables.SetElement{{Key: ifname(br), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: in.Name}}}); err != nil {
		return err
	}
	if err := f.conn.SetAddElements(f.out, []nftables.SetElement{{Key: ifname(br), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: out.Name}}}); err != nil {
		return err
	}
	if n.internal {
		return nil
	}
	// nat-BR: masquerading (per family) and the hairpin of published ports (IPv4).
	f.conn.AddChain(nat)
	f.conn.FlushChain(nat)
	masq4, masq6 := n.masquerade(ipv4Family), n.masquerade(ipv6Family)
	if masq4 {
		f.add(nat, nfproto(unix.NFPROTO_IPV4), ifIs(expr.MetaKeyOIFNAME, br, false), &expr.Masq{})
	}
	f.add(nat, nfproto(unix.NFPROTO_IPV4), ifIs(expr.MetaKeyOIFNAME, br, true),
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero4}, &expr.Masq{})
	if masq6 {
		f.add(nat, nfproto(unix.NFPROTO_IPV6), ifIs(expr.MetaKeyOIFNAME, br, false), &expr.Masq{})
	}
	if len(n.subnets4) > 0 {
		if err := f.conn.SetAddElements(f.nat4, subnetElements(n.subnets4, nat.Name)); err != nil {
			return err
		}
	}
	if masq6 && len(n.subnets6) > 0 {
		if err := f.conn.SetAddElements(f.nat6, subnetElements(n.subnets6, nat.Name)); err != nil {
			return err
		}
	}
	return nil
}

// subnetElements returns the interval elements of subnets, each jumping to chain (nil
// VerdictData for the ends, as deletions want).
func subnetElements(subnets []netip.Prefix, chain string) []nftables.SetElement {
	var out []nftables.SetElement
	for _, s := range subnets {
		s = s.Masked()
		el := nftables.SetElement{Key: s.Addr().AsSlice()}
		if chain != "" {
			el.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}
		}
		out = append(out, el)
		if end := lastAddr(s).Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// planDeleteNetwork adds to the batch what removes n as this process made it: its elements,
// then its chains.
func (f *nftFirewall) planDeleteNetwork(n *network) error {
	br := n.bridge
	key := []nftables.SetElement{{Key: ifname(br)}}
	for _, s := range []*nftables.Set{f.in, f.out, f.bridges} {
		if err := f.conn.SetDeleteElements(s, key); err != nil {
			return err
		}
	}
	if !n.internal && len(n.subnets4) > 0 {
		if err := f.conn.SetDeleteElements(f.nat4, subnetElements(n.subnets4, "")); err != nil {
			return err
		}
		if n.masquerade(ipv6Family) && len(n.subnets6) > 0 {
			if err := f.conn.SetDeleteElements(f.nat6, subnetElements(n.subnets6, "")); err != nil {
				return err
			}
		}
	}
	names := netChainNames(br)
	if n.internal {
		names = names[:2]
	}
	for _, name := range names {
		c := f.chain(name)
		f.conn.FlushChain(c)
		f.conn.DelChain(c)
	}
	return nil
}

// flush sends the batch. On an error before sending, the batch is dropped.
func (f *nftFirewall) flush() error {
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return nil
}

// ensureNetwork writes n's chains and elements in one batch, and turns on the sysctls n needs.
// The first call of the process also converges the base (table, sets, maps, base chains and
// the accept rules in the iptables FORWARD chains); so does any call after a failed batch.
func (f *nftFirewall) ensureNetwork(ctx context.Context, n *network, fresh bool) error {
	fwdOn, brNFOn, err := f.d.readSysctls(n)
	if err != nil {
		return err
	}
	// The families whose forwarding the driver turns on: the rest of their forwarded traffic
	// is dropped from now on.
	var dropFams []nftables.SetElement
	for i, fam := range families(n) {
		if !n.internal && !fwdOn[i] {
			p := byte(unix.NFPROTO_IPV4)
			if fam.v6 {
				p = unix.NFPROTO_IPV6
			}
			dropFams = append(dropFams, nftables.SetElement{Key: []byte{p}})
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !fresh || !f.ready || len(dropFams) > 0 {
		err = f.converge(n, dropFams)
	} else if err = f.planNetwork(n); err == nil {
		if err = f.flush(); err != nil && ctx.Err() == nil {
			f.d.log.DebugContext(ctx, "nftables: create failed, converging", "bridge", n.bridge, "err", err)
			err = f.converge(n, nil)
		}
	}
	if err != nil {
		return err
	}
	return f.d.writeSysctls(n, fwdOn, brNFOn)
}

// converge brings the base and n's chains and elements to what they should be, removing the
// subnet elements of n's bridge that n does not have (a network created again with other
// subnets), and adds dropFams to the families whose other forwarded traffic is dropped, in
// one batch. Called with mu held.
func (f *nftFirewall) converge(n *network, dropFams []nftables.SetElement) error {
	if err := f.ensureIPTablesAccept(); err != nil {
		return err
	}
	stale, err := f.staleSubnets(n)
	if err != nil {
		return err
	}
	if err := f.planBase(); err != nil {
		return err
	}
	if len(dropFams) > 0 {
		if err := f.conn.SetAddElements(f.dropFam, dropFams); err != nil {
			return err
		}
	}
	for s, els := range stale {
		if err := f.conn.SetDeleteElements(s, els); err != nil {
			return err
		}
	}
	if err := f.planNetwork(n); err != nil {
		return err
	}
	if err := f.flush(); err != nil {
		f.ready = false
		return err
	}
	f.ready = true
	return nil
}

// staleSubnets returns the subnet elements that jump to n's nat chain but are not n's. A
// missing table has none.
func (f *nftFirewall) staleSubnets(n *network) (map[*nftables.Set][]nftables.SetElement, error) {
	out := map[*nftables.Set][]nftables.SetElement{}
	nat := NftChainNATPrefix + n.bridge
	for _, c := range []struct {
		s    *nftables.Set
		want []nftables.SetElement
	}{{f.nat4, subnetElements(n.subnets4, nat)}, {f.nat6, subnetElements(n.subnets6, nat)}} {
		els, err := f.intervals(c.s)
		if err != nil {
			return nil, err
		}
		for _, iv := range els {
			if iv.chain != nat {
				continue
			}
			wanted := !n.internal && (c.s == f.nat4 || n.masquerade(ipv6Family)) &&
				slices.ContainsFunc(c.want, func(w nftables.SetElement) bool { return string(w.Key) == string(iv.elems[0].Key) })
			if !wanted {
				out[c.s] = append(out[c.s], iv.elems...)
			}
		}
	}
	return out, nil
}

// interval is one range of an interval map: its start element (with the verdict) and end
// element, ready for deletion, and the chain it jumps to.
type interval struct {
	chain string
	elems []nftables.SetElement
}

// intervals lists the ranges of the interval map s. A missing table or map has none.
func (f *nftFirewall) intervals(s *nftables.Set) ([]interval, error) {
	els, err := f.conn.GetSetElements(s)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nftables: list %s: %w", s.Name, err)
	}
	// The kernel lists the elements of a range from the highest: ends and starts come in any
	// order, so pair them by sorting on the key.
	slices.SortFunc(els, func(a, b nftables.SetElement) int {
		if c := strings.Compare(string(a.Key), string(b.Key)); c != 0 {
			return c
		}
		if a.IntervalEnd == b.IntervalEnd {
			return 0
		}
		if a.IntervalEnd { // an end before a start at the same key: it ends the previous range
			return -1
		}
		return 1
	})
	var out []interval
	for i, e := range els {
		if e.IntervalEnd {
			continue
		}
		iv := interval{chain: verdictChain(e.Val), elems: []nftables.SetElement{{Key: e.Key}}}
		if i+1 < len(els) && els[i+1].IntervalEnd {
			iv.elems = append(iv.elems, nftables.SetElement{Key: els[i+1].Key, IntervalEnd: true})
		}
		out = append(out, iv)
	}
	return out, nil
}

// verdictChain returns the chain of a jump or goto in the data of a verdict map's element,
// which the nftables library lists undecoded: the nested attributes NFTA_VERDICT_CODE and
// NFTA_VERDICT_CHAIN.
func verdictChain(b []byte) string {
	for len(b) >= 4 {
		n, typ := int(binary.NativeEndian.Uint16(b)), binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED
		if n < 4 || n > len(b) {
			return ""
		}
		if typ == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(b[4:n]), "\x00")
		}
		b = b[min(len(b), (n+3)&^3):]
	}
	return ""
}

// isNotFound reports whether err is the kernel's ENOENT: a table, chain or set that is not
// there. The nftables library wraps some replies' errno with %v, so its text counts too.
func isNotFound(err error) bool {
	return err != nil && (errors.Is(err, syscall.ENOENT) || strings.HasSuffix(err.Error(), syscall.ENOENT.Error()))
}

// removeNetwork removes the chains and elements of the network on bridge br in one batch:
// exactly those of n with nothing read first when n is the network as this process made it;
// else (n nil, or that batch failed) from what the kernel lists.
func (f *nftFirewall) removeNetwork(ctx context.Context, br string, n *network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n != nil && f.ready {
		err := f.planDeleteNetwork(n)
		if err == nil {
			err = f.flush()
		}
		if err == nil || ctx.Err() != nil {
			return err
		}
		f.d.log.DebugContext(ctx, "nftables: delete failed, converging", "bridge", br, "err", err)
	}
	_, err := f.removeStale(func(b string) bool { return b != br })
	return err
}

// staleNetworks removes the chains and elements of the bridges keep returns false for.
func (f *nftFirewall) staleNetworks(ctx context.Context, keep func(string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removeStale(keep)
}

// removeStale removes, in one batch, everything of the table that belongs to a bridge keep
// returns false for: its elements in the maps and sets, and its chains. Called with mu held.
func (f *nftFirewall) removeStale(keep func(string) bool) ([]string, error) {
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	var stale []string
	consider := func(br string) {
		if br != "" && !keep(br) && !slices.Contains(stale, br) {
			stale = append(stale, br)
		}
	}
	var del []*nftables.Chain
	for _, c := range chains {
		if c.Table.Name != NftTable {
			continue
		}
		for _, p := range []string{NftChainInPrefix, NftChainOutPrefix, NftChainNATPrefix} {
			if br, ok := strings.CutPrefix(c.Name, p); ok && !keep(br) {
				consider(br)
				del = append(del, f.chain(c.Name))
			}
		}
	}
	if len(del) == 0 && len(chains) == 0 {
		return nil, nil
	}
	dels := map[*nftables.Set][]nftables.SetElement{}
	for _, s := range []*nftables.Set{f.in, f.out, f.bridges} {
		els, err := f.conn.GetSetElements(s)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s: %w", s.Name, err)
		}
		for _, e := range els {
			br := strings.TrimRight(string(e.Key), "\x00")
			if !keep(br) {
				consider(br)
				dels[s] = append(dels[s], nftables.SetElement{Key: e.Key})
			}
		}
	}
	for _, s := range []*nftables.Set{f.nat4, f.nat6} {
		ivs, err := f.intervals(s)
		if err != nil {
			return nil, err
		}
		for _, iv := range ivs {
			if br, ok := strings.CutPrefix(iv.chain, NftChainNATPrefix); ok && !keep(br) {
				consider(br)
				dels[s] = append(dels[s], iv.elems...)
			}
		}
	}
	if len(stale) == 0 {
		return nil, nil
	}
	for s, els := range dels {
		if err := f.conn.SetDeleteElements(s, els); err != nil {
			return nil, err
		}
	}
	for _, c := range del {
		f.conn.FlushChain(c)
		f.conn.DelChain(c)
	}
	if err := f.flush(); err != nil {
		return nil, err
	}
	slices.Sort(stale)
	return stale, nil
}

// portElements returns the elements of ep's published ports, each with the comment "cnm:" and
// the first 12 characters of eid: in ports4, the container address, protocol and port of each
// container port (once); in dnat4 or dnat4-any, each binding's host side mapped to the
// container address and port.
func portElements(eid drivers.EndpointID, ep *endpoint) (ports, dnat, dnatAny []nftables.SetElement) {
	tag := "cnm:" + eid.Short()
	a4 := ep.addr.As4()
	for _, b := range ep.ports {
		proto := protoNumber(b.Proto)
		ctr := concat(a4[:], []byte{proto}, be16(b.ContainerPort))
		if !slices.ContainsFunc(ports, func(e nftables.SetElement) bool { return string(e.Key) == string(ctr) }) {
			ports = append(ports, nftables.SetElement{Key: ctr, Comment: tag})
		}
		to := concat(a4[:], be16(b.ContainerPort))
		if b.HostIP.IsValid() {
			h := b.HostIP.As4()
			dnat = append(dnat, nftables.SetElement{Key: concat(h[:], []byte{proto}, be16(b.HostPort)), Val: to, Comment: tag})
		} else {
			dnatAny = append(dnatAny, nftables.SetElement{Key: concat([]byte{proto}, be16(b.HostPort)), Val: to, Comment: tag})
		}
	}
	return ports, dnat, dnatAny
}

// concat joins the fields of a concatenated key, each padded to 4 bytes.
func concat(fields ...[]byte) []byte {
	var out []byte
	for _, f := range fields {
		out = append(out, f...)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func protoNumber(proto string) byte {
	switch proto {
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// ensurePorts adds the elements of ep's published ports in one batch. A fresh endpoint's are
// added with nothing read first; otherwise (an endpoint created again, a restart) the elements
// tagged with eid, or with the keys ep wants, are listed and replaced in the same batch, so
// that none is duplicated or left with another endpoint's data.
func (f *nftFirewall) ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint, fresh bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var want [3][]nftables.SetElement
	if ep != nil {
		want[0], want[1], want[2] = portElements(eid, ep)
	}
	sets := [3]*nftables.Set{f.ports4, f.dnat4, f.dnat4any}
	if fresh && f.ready && ep != nil {
		err := f.addElements(sets, want)
		if err == nil {
			err = f.flush()
		}
		if err == nil || ctx.Err() != nil {
			return err
		}
		f.d.log.DebugContext(ctx, "nftables: publish failed, converging", "endpoint", eid.Short(), "err", err)
	}
	tag := "cnm:" + eid.Short()
	var del [3][]nftables.SetElement
	for i, s := range sets {
		els, err := f.conn.GetSetElements(s)
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("nftables: list %s: %w", s.Name, err)
		}
		for _, e := range els {
			if e.Comment == tag || slices.ContainsFunc(want[i], func(w nftables.SetElement) bool { return string(w.Key) == string(e.Key) }) {
				del[i] = append(del[i], nftables.SetElement{Key: e.Key})
			}
		}
	}
	if !f.ready && ep != nil {
		if err := f.planBase(); err != nil {
			return err
		}
	}
	for i, s := range sets {
		if len(del[i]) > 0 {
			if err := f.conn.SetDeleteElements(s, del[i]); err != nil {
				return err
			}
		}
	}
	if err := f.addElements(sets, want); err != nil {
		return err
	}
	if err := f.flush(); err != nil {
		return err
	}
	if ep != nil {
		f.ready = true
	}
	return nil
}

func (f *nftFirewall) addElements(sets [3]*nftables.Set, els [3][]nftables.SetElement) error {
	for i, s := range sets {
		if len(els[i]) > 0 {
			if err := f.conn.SetAddElements(s, els[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// removePorts deletes the elements of ep's published ports in one batch, with nothing read
// first; when that fails, it removes every element tagged with eid.
func (f *nftFirewall) removePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error {
	f.mu.Lock()
	ports, dnat, dnatAny := portElements(eid, ep)
	sets := [3]*nftables.Set{f.ports4, f.dnat4, f.dnat4any}
	var err error
	for i, els := range [3][]nftables.SetElement{ports, dnat, dnatAny} {
		if len(els) > 0 && err == nil {
			keys := make([]nftables.SetElement, len(els))
			for j, e := range els {
				keys[j] = nftables.SetElement{Key: e.Key}
			}
			err = f.conn.SetDeleteElements(sets[i], keys)
		}
	}
	if err == nil {
		err = f.flush()
	}
	f.mu.Unlock()
	if err == nil || ctx.Err() != nil {
		return err
	}
	f.d.log.DebugContext(ctx, "nftables: unpublish failed, converging", "endpoint", eid.Short(), "err", err)
	return f.ensurePorts(ctx, eid, nil, false)
}

// stalePorts removes the port elements tagged with an endpoint that is neither known to the
// driver nor in live. An element whose key a known endpoint wants is put back with that
// endpoint's tag and data in the same batch (an address or port reused after a crash).
func (f *nftFirewall) stalePorts(ctx context.Context, live []drivers.EndpointID) ([]string, error) {
	f.d.mu.Lock()
	known := make(map[string]bool, len(f.d.endpoints)+len(live))
	for _, eid := range live {
		known[eid.Short()] = true
	}
	var want [3][]nftables.SetElement
	for eid, ep := range f.d.endpoints {
		known[eid.Short()] = true
		if len(ep.ports) > 0 {
			p, d, a := portElements(eid, ep)
			want[0], want[1], want[2] = append(want[0], p...), append(want[1], d...), append(want[2], a...)
		}
	}
	f.d.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	sets := [3]*nftables.Set{f.ports4, f.dnat4, f.dnat4any}
	var (
		stale []string
		del   [3][]nftables.SetElement
		put   [3][]nftables.SetElement
	)
	for i, s := range sets {
		els, err := f.conn.GetSetElements(s)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s: %w", s.Name, err)
		}
		for _, e := range els {
			id, ok := strings.CutPrefix(e.Comment, "cnm:")
			if !ok || known[id] {
				continue
			}
			if !slices.Contains(stale, id) {
				stale = append(stale, id)
			}
			del[i] = append(del[i], nftables.SetElement{Key: e.Key})
			if j := slices.IndexFunc(want[i], func(w nftables.SetElement) bool { return string(w.Key) == string(e.Key) }); j >= 0 {
				put[i] = append(put[i], want[i][j])
			}
		}
	}
	if len(stale) == 0 {
		return nil, nil
	}
	for i, s := range sets {
		if len(del[i]) > 0 {
			if err := f.conn.SetDeleteElements(s, del[i]); err != nil {
				return nil, err
			}
		}
	}
	if err := f.addElements(sets, put); err != nil {
		return nil, err
	}
	if err := f.flush(); err != nil {
		return nil, err
	}
	slices.Sort(stale)
	return stale, nil
}

// ensureIPTablesAccept puts, first in the FORWARD chain of each iptables compatibility table
// (the nf_tables tables "ip filter" and "ip6 filter" that iptables-nft makes) that exists, a
// rule that accepts the packets the cnm table accepted (those with NftAcceptMark), unless it
// is there: iptables-nft prints it as
// "-A FORWARD -m mark --mark 0x10000000/0x10000000 -m comment --comment "cnm: ..." -j ACCEPT".
// So another program's FORWARD policy DROP (or a firewall's drop rules after it) does not cut
// the driver's networks off. Called with mu held.
func (f *nftFirewall) ensureIPTablesAccept() error {
	for _, t := range []*nftables.Table{f.iptFilter4, f.iptFilter6} {
		c, err := f.conn.ListChain(t, "FORWARD")
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("nftables: list %s FORWARD: %w", familyName(t.Family), err)
		}
		rules, err := f.conn.GetRules(t, c)
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("nftables: list %s FORWARD: %w", familyName(t.Family), err)
		}
		if slices.ContainsFunc(rules, isOurIPTablesRule) {
			continue
		}
		mark := binaryutil.NativeEndian.PutUint32(NftAcceptMark)
		f.conn.InsertRule(&nftables.Rule{Table: t, Chain: c,
			Exprs: []expr.Any{
				load(expr.MetaKeyMARK),
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: mark, Xor: zero4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: mark},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictAccept},
			},
			UserData: userdata.AppendString(nil, userdata.TypeComment, nftIPTablesComment),
		})
		f.d.log.Info("nftables: accepting cnm's traffic in the iptables FORWARD chain", "table", familyName(t.Family)+" filter")
	}
	return nil
}

func isOurIPTablesRule(r *nftables.Rule) bool {
	c, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	return ok && c == nftIPTablesComment
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// removeOther removes what the iptables backend left in the iptables compatibility tables
// (iptables-nft), over netlink: the driver's chains (all "CNM-" chains but CNM-USER, the
// user's) and the rules that jump to them, in one batch. Rules of iptables-legacy are not
// visible over nf_tables netlink and stay.
func (f *nftFirewall) removeOther(ctx context.Context) ([]drivers.Repair, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var repairs []drivers.Repair
	n := 0
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		chains, err := f.conn.ListChainsOfTableFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s chains: %w", familyName(fam), err)
		}
		var ours []*nftables.Chain
		for _, c := range chains {
			if (c.Table.Name == tableFilter || c.Table.Name == tableNAT) && strings.HasPrefix(c.Name, "CNM-") && c.Name != ChainUser {
				ours = append(ours, c)
			}
		}
		if len(ours) == 0 {
			continue
		}
		isOurs := func(table, chain string) bool {
			return slices.ContainsFunc(ours, func(c *nftables.Chain) bool { return c.Table.Name == table && c.Name == chain })
		}
		for _, c := range chains {
			if isOurs(c.Table.Name, c.Name) || (c.Table.Name != tableFilter && c.Table.Name != tableNAT) {
				continue
			}
			rules, err := f.conn.GetRules(c.Table, c)
			if err != nil {
				return nil, fmt.Errorf("nftables: list %s %s %s: %w", familyName(fam), c.Table.Name, c.Name, err)
			}
			for _, r := range rules {
				for _, e := range r.Exprs {
					if v, ok := e.(*expr.Verdict); ok && v.Chain != "" && isOurs(c.Table.Name, v.Chain) {
						if err := f.conn.DelRule(r); err != nil {
							return nil, err
						}
						break
					}
				}
			}
		}
		for _, c := range ours {
			f.conn.FlushChain(c)
		}
		for _, c := range ours {
			f.conn.DelChain(c)
			n++
		}
		repairs = append(repairs, drivers.Repair{Object: fmt.Sprintf("%d %s iptables chains", len(ours), familyName(fam)),
			Action: "removed", Reason: "left by the iptables firewall backend; the backend is nftables"})
	}
	if n == 0 {
		return nil, nil
	}
	if err := f.flush(); err != nil {
		return nil, err
	}
	return repairs, nil
}

// removeNftLeftovers removes what the nftables backend left: the table inet cnm (the user's
// chain in it too) and the accept rules in the iptables FORWARD chains, over netlink. A kernel
// without nf_tables has none.
func removeNftLeftovers(d *Driver) ([]drivers.Repair, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(d.ns.Handle())))
	if err != nil {
		return nil, nil
	}
	var repairs []drivers.Repair
	t, err := conn.ListTableOfFamily(NftTable, nftables.TableFamilyINet)
	switch {
	case err == nil:
		conn.DelTable(t)
		repairs = append(repairs, drivers.Repair{Object: "nftables table inet " + NftTable, Action: "removed",
			Reason: "left by the nftables firewall backend; the backend is iptables"})
	case !isNotFound(err):
		return nil, nil // no nf_tables: nothing can be left
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Name: tableFilter, Family: fam}
		c, err := conn.ListChain(t, "FORWARD")
		if err != nil {
			continue
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			continue
		}
		for _, r := range rules {
			if isOurIPTablesRule(r) {
				if err := conn.DelRule(r); err != nil {
					return nil, err
				}
				repairs = append(repairs, drivers.Repair{Object: familyName(fam) + " filter FORWARD accept rule of the nftables backend",
					Action: "removed", Reason: "the backend is iptables"})
			}
		}
	}
	if len(repairs) == 0 {
		return nil, nil
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return repairs, nil
}

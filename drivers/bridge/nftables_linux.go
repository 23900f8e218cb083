package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	mdnetlink "github.com/mdlayher/netlink"
	"io"
	"net/netip"
	"os"
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

	NftSetBridges  = "bridges"      // ifname: every cnm bridge
	NftSetSame     = "same"         // ifname . ifname: BR . BR for every cnm bridge
	NftSetICCOff   = "icc-off"      // ifname: the bridges of networks with enable_icc=false
	NftSetInternal = "internal"     // ifname: the bridges of internal networks
	NftSetRouted   = "routed"       // ifname: the bridges of networks in routed gateway mode
	NftSetMasq4    = "masq4"        // ifname: the bridges whose IPv4 traffic out is masqueraded
	NftSetMasq6    = "masq6"        // ifname: the bridges whose IPv6 traffic out is masqueraded
	NftSetDrop     = "forward-drop" // nf_proto: the families whose other forwarded traffic is dropped
	NftSetPorts4   = "ports4"       // container address . protocol . container port, accepted from outside
	NftMapDNAT4    = "dnat4"        // host address . protocol . host port : container address . port
	NftMapDNAT4Any = "dnat4-any"    // protocol . host port : container address . port (all host addresses)
	NftSetPorts6   = "ports6"       // the same as ports4, for IPv6
	NftMapDNAT6    = "dnat6"        // the same as dnat4, for IPv6
	NftMapDNAT6Any = "dnat6-any"    // the same as dnat4-any, for IPv6

	// NftForwardPriority is the priority of the forward chain: before the iptables filter
	// FORWARD chain (0), so that the accept mark is set when that chain sees the packet.
	NftForwardPriority = -10
	// NftAcceptMark is the packet mark bit the forward chain sets on every packet it accepts;
	// the accept rule cnm puts first in the iptables FORWARD chain of the nf_tables
	// compatibility tables lets exactly those packets through.
	NftAcceptMark = 0x10000000
	// nftIPTablesComment is the comment of that accept rule: how cnm finds it again.
	nftIPTablesComment = "cnm: accept what the cnm nftables table accepted"
	// NftMasqMark is the packet mark bit the forward chain sets on the packets of a
	// masquerading network that leave it, and on hairpinned ones; postrouting masquerades
	// exactly those.
	NftMasqMark = 0x20000000
)

// Register numbers (linux/netfilter/nf_tables.h): NFT_REG_1 and NFT_REG_2 (16 bytes each),
// and the 32-bit registers NFT_REG32_01 and NFT_REG32_02 that follow NFT_REG32_00, the first
// word of NFT_REG_1, in a concatenation.
const (
	reg1     = 1
	reg2     = 2
	reg32x01 = 9
	reg32x02 = 10
	reg32x04 = 12 // the first word of NFT_REG_2
	reg32x05 = 13
)

const ipsDstNAT = 1 << 5 // IPS_DST_NAT: the connection was DNATed

var typeIfname = func() nftables.SetDatatype {
	t := nftables.SetDatatype{Name: "ifname", Bytes: unix.IFNAMSIZ}
	t.SetNFTMagic(41) // TYPE_IFNAME in nftables' datatype.h
	return t
}()

// nftFirewall is the nftables backend: one nf_tables batch (netlink, no process) per
// operation, in the table inet cnm. A network or a published port is only elements of the
// table's sets and maps: no batch but the base's adds a rule, a chain or a jump, so the
// kernel never walks the table to validate it (which it does for a batch that adds a jump,
// at a cost that grows with the table).
type nftFirewall struct {
	d    *Driver
	conn *nftables.Conn // lasting, in the host namespace

	mu sync.Mutex // one batch at a time: the Conn buffers messages; guards following
	// ready reports that this process has converged the table's base chains and sets once.
	ready bool

	sysMu sync.Mutex // guards sysctls
	// sysctls are the sysctl files read by ensureNetwork, by path, opened once in the host
	// namespace: a file of /proc/sys/net reads the namespace it was opened in, so later reads
	// need no setns.
	sysctls map[string]*os.File

	table *nftables.Table
	// The sets keyed by bridge name.
	bridges, same, iccOff, internal, routed, masq4, masq6 *nftables.Set
	dropFam, ports4, dnat4, dnat4any                      *nftables.Set
	ports6, dnat6, dnat6any                               *nftables.Set
	fwd, user, post, pre, output, dnat                    *nftables.Chain
	iptFilter4, iptFilter6                                *nftables.Table
}

// newNftFirewall opens a lasting nf_tables netlink socket in the host namespace and checks
// that the kernel answers on it.
func newNftFirewall(d *Driver) (*nftFirewall, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(d.ns.Handle())), nftables.AsLasting(), nftables.WithSockOptions(bigReceiveBuffer))
	if err != nil {
		return nil, &errclass.UnavailableError{What: "nftables (nf_tables netlink)", Err: err}
	}
	if _, err := conn.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		conn.CloseLasting()
		return nil, &errclass.UnavailableError{What: "nftables (nf_tables netlink)", Err: err}
	}
	t := &nftables.Table{Name: NftTable, Family: nftables.TableFamilyINet}
	f := &nftFirewall{d: d, conn: conn, table: t, sysctls: map[string]*os.File{},
		iptFilter4: &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4},
		iptFilter6: &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv6},
	}
	ifset := func(name string) *nftables.Set {
		return &nftables.Set{Table: t, Name: name, KeyType: typeIfname, KeyByteOrder: binaryutil.NativeEndian}
	}
	f.bridges, f.iccOff, f.internal, f.routed = ifset(NftSetBridges), ifset(NftSetICCOff), ifset(NftSetInternal), ifset(NftSetRouted)
	f.masq4, f.masq6 = ifset(NftSetMasq4), ifset(NftSetMasq6)
	// The library describes a concatenation's fields by their names' sizes and knows no
	// ifname: ipv6_addr has its size (16 bytes), and the type code says ifname . ifname.
	f.same = &nftables.Set{Table: t, Name: NftSetSame, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr)}
	f.same.KeyType.SetNFTMagic(41<<nftables.SetConcatTypeBits | 41)
	f.dropFam = &nftables.Set{Table: t, Name: NftSetDrop, KeyType: nftables.TypeNFProto}
	f.ports4 = &nftables.Set{Table: t, Name: NftSetPorts4, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	f.dnat4 = &nftables.Set{Table: t, Name: NftMapDNAT4, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	f.dnat4any = &nftables.Set{Table: t, Name: NftMapDNAT4Any, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	f.ports6 = &nftables.Set{Table: t, Name: NftSetPorts6, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)}
	f.dnat6 = &nftables.Set{Table: t, Name: NftMapDNAT6, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)}
	f.dnat6any = &nftables.Set{Table: t, Name: NftMapDNAT6Any, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)}
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

func (f *nftFirewall) close() {
	f.conn.CloseLasting()
	f.sysMu.Lock()
	defer f.sysMu.Unlock()
	for _, file := range f.sysctls {
		file.Close()
	}
}

// readSysctl reads the boolean sysctl at path in the host namespace, through a file opened
// there on first use.
func (f *nftFirewall) readSysctl(path string) (bool, error) {
	f.sysMu.Lock()
	defer f.sysMu.Unlock()
	file := f.sysctls[path]
	if file == nil {
		if err := f.d.ns.Do(func() error {
			var err error
			file, err = os.Open(path)
			return err
		}); err != nil {
			return false, err
		}
		f.sysctls[path] = file
	}
	var buf [16]byte
	n, err := file.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return strings.TrimSpace(string(buf[:n])) != "0", nil
}

// readSysctls is Driver.readSysctls through readSysctl.
func (f *nftFirewall) readSysctls(n *network) (fwdOn, brNFOn []bool, err error) {
	fams := routedFamilies(n)
	fwdOn, brNFOn = make([]bool, len(fams)), make([]bool, len(fams))
	for i, fam := range fams {
		if fwdOn[i], err = f.readSysctl(fam.forward); err != nil {
			return nil, nil, fmt.Errorf("read sysctls: %w", err)
		}
		if n.noICC {
			if brNFOn[i], err = f.readSysctl(fam.brNF); err != nil {
				return nil, nil, fmt.Errorf("read sysctls: %w", err)
			}
		}
	}
	return fwdOn, brNFOn, nil
}

// concurrent is true once the process has converged the base and when n turns no sysctl on:
// then ensureNetwork is one batch of elements.
func (f *nftFirewall) concurrent(n *network) bool {
	f.mu.Lock()
	ready := f.ready
	f.mu.Unlock()
	if !ready {
		return false
	}
	fwdOn, brNFOn, err := f.readSysctls(n)
	return err == nil && !needSysctlWrites(n, fwdOn, brNFOn)
}

// check needs no binary: only br_netfilter when ICC is off.
func (f *nftFirewall) check(n *network) error { return f.d.checkBrNF(n) }

// bridgeSets are the sets keyed by bridge name.
func (f *nftFirewall) bridgeSets() []*nftables.Set {
	return []*nftables.Set{f.bridges, f.same, f.iccOff, f.internal, f.routed, f.masq4, f.masq6}
}

// planBase adds to the batch what makes the table, its sets and maps, and its base chains
// with their rules exist, exactly as wanted: the base chains are flushed and written again in
// the same batch. The user's chain is made when missing and never flushed.
func (f *nftFirewall) planBase() error {
	c := f.conn
	c.AddTable(f.table)
	for _, s := range slices.Concat(f.bridgeSets(), []*nftables.Set{f.dropFam}, f.portSets()) {
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
	iif, oif := load(expr.MetaKeyIIFNAME, reg1), load(expr.MetaKeyOIFNAME, reg1)
	// forward: the user's chain first.
	f.add(f.fwd, &expr.Verdict{Kind: expr.VerdictJump, Chain: NftChainUser})
	// Within one bridge: ICC.
	sameBridge := []expr.Any{iif, load(expr.MetaKeyOIFNAME, reg2), lookup(f.same, reg1)}
	// Hairpin: a container reaching a published port of its own network through the host's
	// address is DNATed back into the bridge; masquerading makes the reply come back through
	// the host, to be un-DNATed.
	f.add(f.fwd, sameBridge, &expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero4}, setMark(NftMasqMark))
	f.add(f.fwd, sameBridge, iif, lookup(f.iccOff, reg1), drop())
	f.add(f.fwd, sameBridge, acceptMarked())
	// Between two cnm bridges: isolation.
	f.add(f.fwd, iif, lookup(f.bridges, reg1), oif, lookup(f.bridges, reg1), drop())
	// Internal networks: nothing in or out.
	f.add(f.fwd, iif, lookup(f.internal, reg1), drop())
	f.add(f.fwd, oif, lookup(f.internal, reg1), drop())
	// Out of a bridge; into a bridge: replies, published ports, ICMP in routed mode, and
	// nothing else.
	f.add(f.fwd, iif, lookup(f.masq4, reg1), nfproto(unix.NFPROTO_IPV4), setMark(NftMasqMark), acceptMarked())
	f.add(f.fwd, iif, lookup(f.masq6, reg1), nfproto(unix.NFPROTO_IPV6), setMark(NftMasqMark), acceptMarked())
	f.add(f.fwd, iif, lookup(f.bridges, reg1), acceptMarked())
	toBridge := []expr.Any{oif, lookup(f.bridges, reg1)}
	f.add(f.fwd, toBridge, &expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero4}, acceptMarked())
	f.add(f.fwd, toBridge, nfproto(unix.NFPROTO_IPV4), payload(reg1, 16, 4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x01},
		&expr.Payload{DestRegister: reg32x02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookup(f.ports4, reg1), acceptMarked())
	f.add(f.fwd, toBridge, nfproto(unix.NFPROTO_IPV6), payload(reg1, 24, 16),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x04},
		&expr.Payload{DestRegister: reg32x05, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookup(f.ports6, reg1), acceptMarked())
	f.add(f.fwd, oif, lookup(f.routed, reg1), nfproto(unix.NFPROTO_IPV4), load(expr.MetaKeyL4PROTO, reg1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMP}}, acceptMarked())
	f.add(f.fwd, toBridge, drop())
	// What is left of a family whose forwarding the driver turned on is dropped, as the
	// iptables backend sets that family's FORWARD policy to DROP.
	f.add(f.fwd, load(expr.MetaKeyNFPROTO, reg1), lookup(f.dropFam, reg1), drop())

	// postrouting: what forward marked for masquerading.
	f.add(f.post, load(expr.MetaKeyMARK, reg1),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(NftMasqMark), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero4}, &expr.Masq{})

	// prerouting and output: traffic to a local address may be for a published port.
	local := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: NftChainDNAT},
	}
	f.add(f.pre, local)
	f.add(f.output, nfproto(unix.NFPROTO_IPV4), payload(reg1, 16, 4),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{127, 0, 0, 0}}, local)
	f.add(f.output, nfproto(unix.NFPROTO_IPV6), payload(reg1, 24, 16),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: netip.IPv6Loopback().AsSlice()}, local)
	// published: by host address, protocol and port, then by protocol and port on every
	// address.
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV4), payload(reg1, 16, 4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x01},
		&expr.Payload{DestRegister: reg32x02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookupMap(f.dnat4, reg1, reg1), dnatTo())
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Payload{DestRegister: reg32x01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookupMap(f.dnat4any, reg1, reg1), dnatTo())
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV6), payload(reg1, 24, 16),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32x04},
		&expr.Payload{DestRegister: reg32x05, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookupMap(f.dnat6, reg1, reg1), dnatTo6())
	f.add(f.dnat, nfproto(unix.NFPROTO_IPV6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Payload{DestRegister: reg32x01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookupMap(f.dnat6any, reg1, reg1), dnatTo6())
	return nil
}

// Expression helpers.

func load(k expr.MetaKey, reg uint32) *expr.Meta { return &expr.Meta{Key: k, Register: reg} }

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// nfproto is "meta nfproto P": the family of the packet in the inet table.
func nfproto(p byte) []expr.Any {
	return []expr.Any{load(expr.MetaKeyNFPROTO, reg1), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}}}
}

// payload loads n bytes of the network header at offset into reg.
func payload(reg, offset, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}
}

// lookup matches when the key in sreg is in s.
func lookup(s *nftables.Set, sreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: s.Name, SetID: s.ID}
}

// lookupMap matches when the key in sreg is in the map s, and loads its data into dreg.
func lookupMap(s *nftables.Set, sreg, dreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, DestRegister: dreg, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}
}

func dnatTo() *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32x01}
}

// dnatTo6 is dnatTo for IPv6: the address in NFT_REG_1, the port in the word after it.
func dnatTo6() *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV6, RegAddrMin: reg1, RegProtoMin: reg32x04}
}

var zero4 = []byte{0, 0, 0, 0}

// setMark sets the bits of mark in the packet's mark.
func setMark(mark uint32) []expr.Any {
	return []expr.Any{
		load(expr.MetaKeyMARK, reg1),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mark), Xor: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// acceptMarked sets NftAcceptMark on the packet and accepts it.
func acceptMarked() []expr.Any {
	return append(setMark(NftAcceptMark), &expr.Verdict{Kind: expr.VerdictAccept})
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

// netElements returns the elements of network n, by set: its bridge in bridges and same,
// and in icc-off, internal, routed, masq4 and masq6 when it is so.
func (f *nftFirewall) netElements(n *network) map[*nftables.Set][]nftables.SetElement {
	br := ifname(n.bridge)
	out := map[*nftables.Set][]nftables.SetElement{
		f.bridges: {{Key: br}},
		f.same:    {{Key: slices.Concat(br, br)}},
	}
	for s, on := range map[*nftables.Set]bool{
		f.iccOff:   n.noICC,
		f.internal: n.internal,
		f.routed:   n.routed && !n.internal,
		f.masq4:    n.masquerade(ipv4Family),
		f.masq6:    n.masquerade(ipv6Family),
	} {
		if on {
			out[s] = []nftables.SetElement{{Key: br}}
		}
	}
	return out
}

// keysOnly returns els without their data, as deletions want.
func keysOnly(els []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(els))
	for i, e := range els {
		out[i] = nftables.SetElement{Key: e.Key}
	}
	return out
}

// planElements adds to the batch the addition (add) or deletion of els.
func (f *nftFirewall) planElements(els map[*nftables.Set][]nftables.SetElement, add bool) error {
	for s, l := range els {
		if len(l) == 0 {
			continue
		}
		var err error
		if add {
			err = f.conn.SetAddElements(s, l)
		} else {
			err = f.conn.SetDeleteElements(s, keysOnly(l))
		}
		if err != nil {
			return err
		}
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

// ensureNetwork adds n's elements in one batch, and turns on the sysctls n needs.
// The first call of the process also converges the base (table, sets, maps, base chains and
// the accept rules in the iptables FORWARD chains); so does any call after a failed batch.
func (f *nftFirewall) ensureNetwork(ctx context.Context, n *network, fresh bool) error {
	fwdOn, brNFOn, err := f.readSysctls(n)
	if err != nil {
		return err
	}
	// The families whose forwarding the driver turns on: the rest of their forwarded traffic
	// is dropped from now on.
	var dropFams []nftables.SetElement
	for i, fam := range routedFamilies(n) {
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
	} else if err = f.planElements(f.netElements(n), true); err == nil {
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

// converge brings the base and n's elements to what they should be, removing the elements of
// n's bridge that n does not have (a network created again with other options or subnets),
// and adds dropFams to the families whose other forwarded traffic is dropped, in one batch.
// Called with mu held.
func (f *nftFirewall) converge(n *network, dropFams []nftables.SetElement) error {
	if err := f.ensureIPTablesAccept(); err != nil {
		return err
	}
	have, err := f.listBridgeElements(func(br string) bool { return br != n.bridge })
	if err != nil {
		return err
	}
	want := f.netElements(n)
	stale := map[*nftables.Set][]nftables.SetElement{}
	for s, els := range have[n.bridge] {
		for _, e := range els {
			if !slices.ContainsFunc(want[s], func(w nftables.SetElement) bool { return string(w.Key) == string(e.Key) }) {
				stale[s] = append(stale[s], e)
			}
		}
	}
	if err := f.planBase(); err != nil {
		return err
	}
	if len(dropFams) > 0 {
		if err := f.conn.SetAddElements(f.dropFam, dropFams); err != nil {
			return err
		}
	}
	if err := f.planElements(stale, false); err != nil {
		return err
	}
	if err := f.planElements(want, true); err != nil {
		return err
	}
	if err := f.flush(); err != nil {
		f.ready = false
		return err
	}
	f.ready = true
	return nil
}

// listBridgeElements lists the elements of the sets keyed by bridge name and returns those
// of the bridges for which keep is false, by bridge and set. A missing table has none.
func (f *nftFirewall) listBridgeElements(keep func(string) bool) (map[string]map[*nftables.Set][]nftables.SetElement, error) {
	out := map[string]map[*nftables.Set][]nftables.SetElement{}
	for _, s := range f.bridgeSets() {
		els, err := f.conn.GetSetElements(s)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s: %w", s.Name, err)
		}
		for _, e := range els {
			br := strings.TrimRight(string(e.Key[:min(len(e.Key), unix.IFNAMSIZ)]), "\x00")
			if keep(br) {
				continue
			}
			if out[br] == nil {
				out[br] = map[*nftables.Set][]nftables.SetElement{}
			}
			out[br][s] = append(out[br][s], nftables.SetElement{Key: e.Key})
		}
	}
	return out, nil
}

// isNotFound reports whether err is the kernel's ENOENT: a table, chain or set that is not
// there. The nftables library wraps some replies' errno with %v, so its text counts too.
func isNotFound(err error) bool {
	return err != nil && (errors.Is(err, syscall.ENOENT) || strings.HasSuffix(err.Error(), syscall.ENOENT.Error()))
}

// removeNetwork removes the elements of the network on bridge br in one batch: exactly those
// of n with nothing read first when n is the network as this process made it; else (n nil,
// or that batch failed) those the kernel lists.
func (f *nftFirewall) removeNetwork(ctx context.Context, br string, n *network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n != nil && f.ready {
		err := f.planElements(f.netElements(n), false)
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

// staleNetworks removes the elements of the bridges keep returns false for.
func (f *nftFirewall) staleNetworks(ctx context.Context, keep func(string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removeStale(keep)
}

// removeStale removes, in one batch, the elements of every bridge keep returns false for, and
// returns those bridges, sorted. Called with mu held.
func (f *nftFirewall) removeStale(keep func(string) bool) ([]string, error) {
	have, err := f.listBridgeElements(keep)
	if err != nil || len(have) == 0 {
		return nil, err
	}
	var stale []string
	for br, els := range have {
		stale = append(stale, br)
		if err := f.planElements(els, false); err != nil {
			return nil, err
		}
	}
	if err := f.flush(); err != nil {
		return nil, err
	}
	slices.Sort(stale)
	return stale, nil
}

// portSets are the sets and maps of published ports, in the order of portElements.
func (f *nftFirewall) portSets() []*nftables.Set {
	return []*nftables.Set{f.ports4, f.dnat4, f.dnat4any, f.ports6, f.dnat6, f.dnat6any}
}

// portElements returns the elements of ep's published ports, by set in the order of
// portSets, each with the comment "cnm:" and the first 12 characters of eid: for each port
// held (one per binding and family), in ports4 or ports6 the container address, protocol and
// port (once each); in dnat4 or dnat6, or dnat4-any or dnat6-any (all host addresses of the
// family), the host side mapped to the container address and port.
func portElements(eid drivers.EndpointID, ep *endpoint) [][]nftables.SetElement {
	tag := "cnm:" + eid.Short()
	out := make([][]nftables.SetElement, 6)
	for _, h := range ep.held {
		base, ctr := 0, ep.addr
		if h.v6 {
			base, ctr = 3, ep.addr6
		}
		proto := protoNumber(h.proto)
		key := concat(ctr.AsSlice(), []byte{proto}, be16(h.cport))
		if !slices.ContainsFunc(out[base], func(e nftables.SetElement) bool { return string(e.Key) == string(key) }) {
			out[base] = append(out[base], nftables.SetElement{Key: key, Comment: tag})
		}
		to := concat(ctr.AsSlice(), be16(h.cport))
		if h.addr.IsValid() {
			out[base+1] = append(out[base+1], nftables.SetElement{Key: concat(h.addr.AsSlice(), []byte{proto}, be16(h.port)), Val: to, Comment: tag})
		} else {
			out[base+2] = append(out[base+2], nftables.SetElement{Key: concat([]byte{proto}, be16(h.port)), Val: to, Comment: tag})
		}
	}
	return out
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
	sets := f.portSets()
	want := make([][]nftables.SetElement, len(sets))
	if ep != nil {
		want = portElements(eid, ep)
	}
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
	del := make([][]nftables.SetElement, len(sets))
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

// addElements adds to the batch els[i] to sets[i], for each i.
func (f *nftFirewall) addElements(sets []*nftables.Set, els [][]nftables.SetElement) error {
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
	sets := f.portSets()
	var err error
	for i, els := range portElements(eid, ep) {
		if len(els) > 0 && err == nil {
			err = f.conn.SetDeleteElements(sets[i], keysOnly(els))
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
	sets := f.portSets()
	want := make([][]nftables.SetElement, len(sets))
	for eid, ep := range f.d.endpoints {
		known[eid.Short()] = true
		for i, els := range portElements(eid, ep) {
			want[i] = append(want[i], els...)
		}
	}
	f.d.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		stale []string
		del   = make([][]nftables.SetElement, len(sets))
		put   = make([][]nftables.SetElement, len(sets))
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
				load(expr.MetaKeyMARK, reg1),
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

// bigReceiveBuffer gives a netlink socket a receive buffer of 4 MiB (SO_RCVBUFFORCE, past
// rmem_max: the driver has CAP_NET_ADMIN): the kernel answers every message of a batch with an
// acknowledgement, and removing the iptables backend's chains (16 buckets per shared chain)
// is a batch of hundreds, whose acknowledgements overflow the default buffer (ENOBUFS).
func bigReceiveBuffer(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	}); err != nil {
		return err
	}
	return serr
}

// removeNftLeftovers removes what the nftables backend left: the table inet cnm (the user's
// chain in it too) and the accept rules in the iptables FORWARD chains, over netlink. A kernel
// without nf_tables has none.
func removeNftLeftovers(d *Driver) ([]drivers.Repair, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(d.ns.Handle())), nftables.WithSockOptions(bigReceiveBuffer))
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

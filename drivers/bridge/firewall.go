package bridge

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/iptables"
)

// The chains the driver owns (see the package doc), and the user's chain it makes once and
// never touches again.
const (
	ChainUser        = "CNM-USER"        // filter; jumped to first from FORWARD; the user's
	ChainForward     = "CNM-FORWARD"     // filter; jumped to from FORWARD after CNM-USER
	ChainIsolation1  = "CNM-ISOLATION-1" // filter; first rule of CNM-FORWARD jumps here
	ChainIsolation2  = "CNM-ISOLATION-2" // filter; from CNM-ISOLATION-1
	ChainPostrouting = "CNM-POSTROUTING" // nat; jumped to from POSTROUTING
)

const (
	tableFilter = "filter"
	tableNAT    = "nat"

	sysctlIPForward  = "/proc/sys/net/ipv4/ip_forward"
	sysctlIP6Forward = "/proc/sys/net/ipv6/conf/all/forwarding"
	sysctlBrNF       = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	sysctlBrNF6      = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
)

// ipFamily is what differs between the rules of the IPv4 tables (iptables) and those of the
// IPv6 tables (ip6tables): the planner is the same for both.
type ipFamily struct {
	v6      bool
	name    string // "IPv4", "IPv6"
	forward string // the forwarding sysctl
	brNF    string // br_netfilter's switch for this family
	// ports reports whether published ports are written in this family's tables (both):
	// CNM-PORTS, CNM-DNAT and the jumps to them, and the networks' hairpin MASQUERADE.
	ports    bool
	loopback string // the loopback prefix, which the OUTPUT jump to CNM-DNAT leaves out
}

var (
	ipv4Family = &ipFamily{name: "IPv4", forward: sysctlIPForward, brNF: sysctlBrNF, ports: true, loopback: "127.0.0.0/8"}
	ipv6Family = &ipFamily{v6: true, name: "IPv6", forward: sysctlIP6Forward, brNF: sysctlBrNF6, ports: true, loopback: "::1/128"}
)

// families returns the families whose tables hold rules of n: IPv4 always; IPv6 when n has
// IPv6 subnets, and for a network without them when ip6tables is there (best effort: a failure
// to write or remove those is logged, not returned). An IPv4-only bridge
// still carries IPv6 link-local traffic, which br_netfilter hands to ip6tables once a
// dual-stack network has set the IPv6 FORWARD policy to DROP: its isolation and ICC rules in
// the IPv6 tables keep that traffic as the IPv4 rules keep IPv4's, as Docker does.
func (d *Driver) families(n *network) []*ipFamily {
	if len(n.subnets6) > 0 || d.fw6.Check() == nil {
		return []*ipFamily{ipv4Family, ipv6Family}
	}
	return []*ipFamily{ipv4Family}
}

// routedFamilies returns the families n routes (see routes): IPv4, and IPv6 when n has IPv6
// subnets. The sysctls of these are the ones n needs, whichever backend writes its rules.
func routedFamilies(n *network) []*ipFamily {
	if len(n.subnets6) > 0 {
		return []*ipFamily{ipv4Family, ipv6Family}
	}
	return []*ipFamily{ipv4Family}
}

// routes reports whether n routes traffic of family f, so that it needs f's forwarding (and
// br_netfilter's switch for f when ICC is off): IPv4 always, IPv6 when n has IPv6 subnets. The
// IPv6 rules of an IPv4-only network touch no sysctl and no FORWARD policy.
func (n *network) routes(f *ipFamily) bool { return !f.v6 || len(n.subnets6) > 0 }

// runner returns the runner of f's tables.
func (d *Driver) runner(f *ipFamily) *iptables.Runner {
	if f.v6 {
		return d.fw6
	}
	return d.fw
}

// ready returns where the driver records that it converged f's base chains (guarded by fwMu).
func (d *Driver) ready(f *ipFamily) *bool {
	if f.v6 {
		return &d.fw6Ready
	}
	return &d.fwReady
}

// chainRef names a chain in a table.
type chainRef struct{ table, chain string }

// networkChains are the shared chains that hold rules of every network: its isolation rules
// and the jumps to its own chain, in the order they are written. Each network's rules there go
// to one of their bucket chains (networkBuckets), never to the chains themselves.
var networkChains = []chainRef{
	{tableFilter, ChainIsolation1},
	{tableFilter, ChainIsolation2},
	{tableFilter, ChainForward},
	{tableNAT, ChainPostrouting},
}

// buckets is how many chains the per-network (and per-endpoint) rules of each shared chain are
// spread over: the shared chain jumps to each of its buckets, "CNM-FORWARD-0" to
// "CNM-FORWARD-f", and a network's rules go to the bucket its bridge name hashes to. Deleting a
// rule ("-D") makes iptables look it up in its chain, so the buckets keep what deleting a
// network or an endpoint costs from growing with how many exist (k/16 rules per chain to look
// through instead of k).
const buckets = 16

// bucketOf returns the bucket of the object named name (a bridge name, a short endpoint ID):
// FNV-1a, modulo buckets.
func bucketOf(name string) int {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return int(h % buckets)
}

// bucketChain returns the name of bucket b of the shared chain parent: "CNM-FORWARD-7".
func bucketChain(parent string, b int) string { return fmt.Sprintf("%s-%x", parent, b) }

// inBucket returns the buckets b of the shared chains parents, in the same order.
func inBucket(parents []chainRef, b int) []chainRef {
	out := make([]chainRef, len(parents))
	for i, c := range parents {
		out[i] = chainRef{c.table, bucketChain(c.chain, b)}
	}
	return out
}

// withBuckets returns parents and all their buckets: where rules of an object may be found
// (the chains themselves hold them in the older, unbucketed layout).
func withBuckets(parents []chainRef) []chainRef {
	out := slices.Clone(parents)
	for b := range buckets {
		out = append(out, inBucket(parents, b)...)
	}
	return out
}

// networkBuckets returns the bucket chains that hold the rules of the network on bridge br in
// the shared chains, in the order of networkChains.
func networkBuckets(br string) []chainRef { return inBucket(networkChains, bucketOf(br)) }

// Prefixes of the chains the driver makes per network (followed by the bridge name, at most
// 15 bytes) and per endpoint with published ports (followed by the first 12 characters of the
// endpoint ID). A network or endpoint has its chain, of the same name, in each table where it
// has rules.
const (
	ChainNetworkPrefix  = "CNM-N-"
	ChainEndpointPrefix = "CNM-E-"
)

// networkChain returns the name of the own chains of the network on bridge br.
func networkChain(br string) string { return ChainNetworkPrefix + br }

// fwObject is what one network or endpoint has in the tables: its own chain, of the same name
// in each table where it has rules, and its rules in the shared chains (isolation rules and the
// jumps to its own chain). Rules are as iptables-save prints them, without "-A CHAIN".
type fwObject struct {
	chain  string
	own    map[string][]string   // by table; no entry (or none): no chain in that table
	shared map[chainRef][]string // by shared chain, in order
}

// fwRules returns the rules of network n in the tables of family f. Its own chain CNM-N-<bridge> holds, in the filter
// table, the forwarding rules of the network, which decide every packet that enters or leaves
// the bridge, and in the nat table its masquerading rules. The shared chains hold the two
// isolation rules, the two jumps from CNM-FORWARD (-i BR and -o BR) and, when it has nat
// rules, a jump per subnet of the family from CNM-POSTROUTING. The IPv6 rules are the IPv4
// ones with the IPv6 subnets, except that there is no hairpin MASQUERADE (no published ports
// in IPv6) and no routed gateway mode (gateway_mode_ipv4 is IPv4's). Every rule in a shared chain names n's
// bridge with -i or -o, or jumps to its chain: that is how the driver finds them again, after a
// restart too.
func fwRules(n *network, f *ipFamily) *fwObject {
	br := n.bridge
	o := &fwObject{chain: networkChain(br), own: map[string][]string{}, shared: map[chainRef][]string{}}
	add := func(table, rule string) { o.own[table] = append(o.own[table], rule) }
	nb := networkBuckets(br)
	iso1, iso2, fwd, post := nb[0], nb[1], nb[2], nb[3]

	// Isolation: traffic leaving any cnm bridge for another interface is checked against
	// the list of cnm bridges; going out to one of them is dropped.
	o.shared[iso1] = []string{fmt.Sprintf("-i %s ! -o %s -j %s", br, br, ChainIsolation2)}
	o.shared[iso2] = []string{fmt.Sprintf("-o %s -j DROP", br)}
	o.shared[fwd] = []string{"-i " + br + " -j " + o.chain, "-o " + br + " -j " + o.chain}

	icc := "ACCEPT"
	if n.noICC {
		icc = "DROP"
	}
	if n.internal {
		add(tableFilter, fmt.Sprintf("-i %s -o %s -j %s", br, br, icc))
		add(tableFilter, fmt.Sprintf("-i %s ! -o %s -j DROP", br, br))
		add(tableFilter, fmt.Sprintf("! -i %s -o %s -j DROP", br, br))
		return o
	}
	add(tableFilter, fmt.Sprintf("-o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", br))
	add(tableFilter, fmt.Sprintf("-i %s -o %s -j %s", br, br, icc))
	add(tableFilter, fmt.Sprintf("-i %s ! -o %s -j ACCEPT", br, br))
	if n.routed && !f.v6 {
		add(tableFilter, fmt.Sprintf("! -i %s -o %s -p icmp -j ACCEPT", br, br))
	}
	add(tableFilter, fmt.Sprintf("! -i %s -o %s -j DROP", br, br))
	subnets := n.subnets4
	if f.v6 {
		subnets = n.subnets6
	}
	masq := n.masquerade(f)
	if !masq && !f.ports {
		return o // no nat rules
	}
	for _, s := range subnets {
		if masq {
			rule := fmt.Sprintf("-s %s ! -o %s -j MASQUERADE", s, br)
			if n.randomFully {
				rule += " --random-fully"
			}
			add(tableNAT, rule)
		}
		if f.ports {
			// Hairpin: a container reaching a published port of its own network through the
			// host's address is DNATed back into the bridge; masquerading makes the reply
			// come back through the host, to be un-DNATed.
			add(tableNAT, fmt.Sprintf("-s %s -o %s -m conntrack --ctstate DNAT -j MASQUERADE", s, br))
		}
		o.shared[post] = append(o.shared[post], fmt.Sprintf("-s %s -j %s", s, o.chain))
	}
	return o
}

// belongsToNetwork returns the test of the rules of the network on bridge br in the shared
// chains: those that name br with -i or -o (this layout's isolation rules and jumps, and any
// rule of an older, flat layout) or jump to its chain.
func belongsToNetwork(br string) func(rule string) bool {
	chain := networkChain(br)
	return func(r string) bool { return ruleBridge(r) == br || ruleTarget(r) == chain }
}

// ruleTarget returns the target of rule (after -j), or "".
func ruleTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" {
			return f[i+1]
		}
	}
	return ""
}

// planCreate adds to t what makes o from nothing, for a network or endpoint this process
// knows to be absent: "-N" of its chains (which fails the whole transaction if one exists, so
// that the caller converges instead), their rules, then its rules in the shared chains, all
// appended. No rule is matched against what is there, so the cost does not depend on how
// many networks and endpoints exist.
func (o *fwObject) planCreate(t *restoreText, shared []chainRef) {
	for _, table := range []string{tableFilter, tableNAT} {
		if rules := o.own[table]; len(rules) > 0 {
			t.add(table, "-N "+o.chain)
			for _, r := range rules {
				t.add(table, "-A "+o.chain+" "+r)
			}
		}
	}
	for _, c := range shared {
		for _, r := range o.shared[c] {
			t.add(c.table, "-A "+c.chain+" "+r)
		}
	}
}

// planDelete adds to t what removes o as this process made it: its rules in the shared chains
// (short jumps and isolation rules; the transaction fails if one is missing, so that the
// caller converges instead), then its chains, flushed and deleted.
func (o *fwObject) planDelete(t *restoreText, shared []chainRef) {
	for _, c := range shared {
		for _, r := range o.shared[c] {
			t.add(c.table, "-D "+c.chain+" "+r)
		}
	}
	for _, table := range []string{tableFilter, tableNAT} {
		if len(o.own[table]) > 0 {
			t.add(table, "-F "+o.chain)
			t.add(table, "-X "+o.chain)
		}
	}
}

// planConverge adds to t what brings o to exactly want (nil: gone), given the tables now. An
// own chain whose rules differ in any way is rewritten in order (declaring it again flushes
// it); in each shared chain, the rules for which belongs is true are left alone when they equal
// the wanted list, in order, and otherwise all deleted and the wanted ones appended, so that a
// partial or reordered set never stays. Rules of different networks or endpoints match
// disjoint traffic, so their relative order does not matter. Chains no longer wanted are
// flushed and deleted after the jumps to them.
func planConverge(t *restoreText, tables map[string]*iptables.Table, chain string, want *fwObject, shared []chainRef, belongs func(string) bool) {
	wanted := func(table string) []string {
		if want == nil {
			return nil
		}
		return want.own[table]
	}
	for _, table := range []string{tableFilter, tableNAT} {
		rules := wanted(table)
		if len(rules) == 0 {
			continue
		}
		if tables[table].HasChain(chain) && slices.Equal(tables[table].ChainRules(chain), rules) {
			continue
		}
		t.add(table, ":"+chain+" - [0:0]")
		for _, r := range rules {
			t.add(table, "-A "+chain+" "+r)
		}
	}
	for _, c := range shared {
		var have, rules []string
		for _, r := range tables[c.table].ChainRules(c.chain) {
			if belongs(r) {
				have = append(have, r)
			}
		}
		if want != nil {
			rules = want.shared[c]
		}
		if slices.Equal(have, rules) {
			continue
		}
		for _, r := range have {
			t.add(c.table, "-D "+c.chain+" "+r)
		}
		for _, r := range rules {
			t.add(c.table, "-A "+c.chain+" "+r)
		}
	}
	for _, table := range []string{tableFilter, tableNAT} {
		if len(wanted(table)) == 0 && tables[table].HasChain(chain) {
			t.add(table, "-F "+chain)
			t.add(table, "-X "+chain)
		}
	}
}

// masquerade reports whether n's outbound traffic of family f is masqueraded. The routed
// gateway mode is IPv4's only: IPv6 is masqueraded unless masquerading is off, as Docker
// masquerades its ULA subnets by default.
func (n *network) masquerade(f *ipFamily) bool {
	return !n.internal && !n.noMasq && (f.v6 || !n.routed)
}

// ruleBridge returns the interface named by the first -i or -o of rule, or "".
func ruleBridge(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-i" || f[i] == "-o" {
			return f[i+1]
		}
	}
	return ""
}

// restoreText collects iptables-restore input by table.
type restoreText struct {
	filter, nat []string
}

func (t *restoreText) add(table string, line string) {
	if table == tableNAT {
		t.nat = append(t.nat, line)
	} else {
		t.filter = append(t.filter, line)
	}
}

func (t *restoreText) String() string {
	var b strings.Builder
	for _, s := range []struct {
		name  string
		lines []string
	}{{tableFilter, t.filter}, {tableNAT, t.nat}} {
		if len(s.lines) == 0 {
			continue
		}
		b.WriteString("*" + s.name + "\n")
		for _, l := range s.lines {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// planBase adds to t what makes the driver's chains and jumps exist in the tables of family f,
// given the tables now: CNM-USER then CNM-FORWARD first in FORWARD, CNM-ISOLATION-1 first in
// CNM-FORWARD, and CNM-POSTROUTING from POSTROUTING; for IPv4 also CNM-PORTS second in
// CNM-FORWARD and CNM-DNAT with its jumps. Existing chains are never declared again (which
// would flush them), and CNM-USER's rules are never touched.
func planBase(t *restoreText, tables map[string]*iptables.Table, f *ipFamily) {
	filter, nat := tables[tableFilter], tables[tableNAT]
	type jump struct{ chain, rule string }
	chains := []string{ChainUser, ChainForward, ChainIsolation1, ChainIsolation2}
	head := []string{"-j " + ChainIsolation1}
	natChains := []string{ChainPostrouting}
	jumps := []jump{{"POSTROUTING", "-j " + ChainPostrouting}}
	if f.ports {
		chains = append(chains, ChainPorts)
		head = append(head, "-j "+ChainPorts)
		natChains = append(natChains, ChainDNAT)
		jumps = append(jumps,
			jump{"PREROUTING", "-m addrtype --dst-type LOCAL -j " + ChainDNAT},
			jump{"OUTPUT", "! -d " + f.loopback + " -m addrtype --dst-type LOCAL -j " + ChainDNAT})
	}
	parents := networkChains
	if f.ports {
		parents = append(slices.Clone(parents), portChains...)
	}
	for _, c := range parents { // the buckets, declared after their parents
		if c.table == tableFilter {
			for b := range buckets {
				chains = append(chains, bucketChain(c.chain, b))
			}
		}
	}
	for _, c := range chains {
		if !filter.HasChain(c) {
			t.add(tableFilter, ":"+c+" - [0:0]")
		}
	}
	for b := range buckets { // CNM-FORWARD: isolation, ports, then the networks' buckets
		head = append(head, "-j "+bucketChain(ChainForward, b))
	}
	fwd := filter.ChainRules("FORWARD")
	user := slices.Index(fwd, "-j "+ChainUser)
	ours := slices.Index(fwd, "-j "+ChainForward)
	switch {
	case user < 0 && ours < 0:
		t.add(tableFilter, "-I FORWARD 1 -j "+ChainForward)
		t.add(tableFilter, "-I FORWARD 1 -j "+ChainUser)
	case user < 0:
		t.add(tableFilter, "-I FORWARD 1 -j "+ChainUser)
	case ours < 0:
		t.add(tableFilter, fmt.Sprintf("-I FORWARD %d -j %s", user+2, ChainForward))
	}
	// CNM-FORWARD starts with the isolation jump, then the published ports' accepts.
	if rules := filter.ChainRules(ChainForward); len(rules) < len(head) || !slices.Equal(rules[:len(head)], head) {
		for _, r := range rules {
			if slices.Contains(head, r) {
				t.add(tableFilter, "-D "+ChainForward+" "+r)
			}
		}
		for i := len(head) - 1; i >= 0; i-- {
			t.add(tableFilter, "-I "+ChainForward+" 1 "+head[i])
		}
	}
	for _, c := range parents {
		if c.table == tableNAT {
			for b := range buckets {
				natChains = append(natChains, bucketChain(c.chain, b))
			}
		}
	}
	for _, c := range natChains {
		if !nat.HasChain(c) {
			t.add(tableNAT, ":"+c+" - [0:0]")
		}
	}
	for _, j := range jumps {
		if !slices.Contains(nat.ChainRules(j.chain), j.rule) {
			t.add(tableNAT, "-A "+j.chain+" "+j.rule)
		}
	}
	// Every shared chain but CNM-FORWARD (whose head holds them) jumps to each of its buckets.
	for _, c := range parents {
		if c.chain == ChainForward {
			continue
		}
		have := tables[c.table].ChainRules(c.chain)
		for b := range buckets {
			if j := "-j " + bucketChain(c.chain, b); !slices.Contains(have, j) {
				t.add(c.table, "-A "+c.chain+" "+j)
			}
		}
	}
}

// planNetwork adds to t what brings the rules of the network on bridge br to want (nil:
// none), given the tables now.
func planNetwork(t *restoreText, tables map[string]*iptables.Table, br string, want *fwObject) {
	planConverge(t, tables, networkChain(br), want, withBuckets(networkChains), belongsToNetwork(br))
}

// fwState reads the tables of family f in the host namespace.
func (d *Driver) fwState(ctx context.Context, f *ipFamily) (map[string]*iptables.Table, error) {
	save, err := d.runner(f).Save(ctx)
	if err != nil {
		return nil, err
	}
	return iptables.Parse(save)
}

// checkFirewall checks, before any kernel work, that the firewall can do what n needs: the
// iptables binaries (and the ip6tables ones when n has IPv6 subnets), and br_netfilter in the
// host namespace when ICC is off.
func (d *Driver) checkFirewall(n *network) error {
	if d.noFW {
		if n.noICC {
			return &drivers.NotSupportedError{What: LabelEnableICC + "=false with the firewall disabled (Config.DisableIPTables)"}
		}
		return nil
	}
	for _, f := range d.families(n) {
		if err := d.runner(f).Check(); err != nil {
			return err
		}
	}
	return d.checkBrNF(n)
}

// checkBrNF checks that br_netfilter is loaded in the host namespace when n has ICC off: both
// backends need it, so that traffic between ports of one bridge is filtered.
func (d *Driver) checkBrNF(n *network) error {
	if n.noICC {
		var exists bool
		err := d.ns.Do(func() error {
			_, err := os.Stat(sysctlBrNF)
			exists = err == nil
			return nil
		})
		if err != nil {
			return err
		}
		if !exists {
			return &drivers.NotSupportedError{
				What: LabelEnableICC + "=false",
				Err:  fmt.Errorf("needs br_netfilter (%s is missing in the host namespace; modprobe br_netfilter)", sysctlBrNF),
			}
		}
	}
	return nil
}

// ensureFirewall brings the host namespace's rules for network n to what fwRules gives, in one
// iptables-restore transaction per family (IPv4, and IPv6 with ip6tables-restore when n has
// IPv6 subnets), and then turns on forwarding (net.ipv4.ip_forward, and
// net.ipv6.conf.all.forwarding when n has IPv6 subnets; when n is not internal) and
// br_netfilter's bridge-nf-call-iptables (and -ip6tables) when ICC is off, in the host
// namespace, if they are off. When it turns a family's forwarding on itself, the same
// transaction first sets that family's FORWARD policy to DROP, as Docker does, so that turning
// forwarding on opens nothing but the driver's networks.
//
// fresh reports that the caller has just created n's bridge and knew nothing of the network:
// then, once this process has converged the driver's base chains of a family, the rules are
// written with no iptables-save, all appended (see fwObject.planCreate), and the cost does not
// depend on the number of networks. Otherwise, or when that transaction fails (a chain of n
// exists already: a crash, a restart), it converges from one iptables-save: calling it again
// changes nothing. When fresh and a later family fails, the rules the earlier ones wrote are
// removed again (and a FORWARD policy it set put back), so that nothing is left half-made.
func (d *Driver) ensureFirewall(ctx context.Context, n *network, fresh bool) error {
	if d.noFW {
		return nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	fams := d.families(n)
	fwdOn, brNFOn, err := d.readSysctls(n)
	if err != nil {
		return err
	}
	// readSysctls reads the families n routes, a prefix of fams; the others (IPv6 of an
	// IPv4-only network) are never turned on.
	for len(fwdOn) < len(fams) {
		fwdOn, brNFOn = append(fwdOn, true), append(brNFOn, true)
	}
	type written struct {
		f         *ipFamily
		setPolicy bool // the transaction set the FORWARD policy to DROP
	}
	var done []written
	for i, f := range fams {
		setPolicy, err := d.ensureFamily(ctx, n, f, fresh, !n.internal && !fwdOn[i])
		if err != nil && !n.routes(f) {
			// The IPv6 rules of an IPv4-only network are best effort: ip6tables fails where
			// the kernel has no IPv6, and then nothing forwards IPv6 either. The transaction
			// wrote nothing.
			d.log.WarnContext(ctx, "firewall: IPv6 rules of an IPv4-only network not written", "bridge", n.bridge, "err", err)
			continue
		}
		if err != nil {
			if f.v6 {
				err = fmt.Errorf("%s: %w", f.name, err)
			}
			if fresh {
				for _, w := range done {
					if rerr := d.undoFamily(ctx, n, w.f, w.setPolicy); rerr != nil {
						err = errors.Join(err, fmt.Errorf("rollback of the %s rules: %w", w.f.name, rerr))
					}
				}
			}
			return err
		}
		done = append(done, written{f, setPolicy})
	}
	return d.writeSysctls(n, fwdOn, brNFOn)
}

// readSysctls reads, in the host namespace, whether forwarding is on for each of n's families
// (in the order of routedFamilies(n)), and br_netfilter's switch when n has ICC off.
func (d *Driver) readSysctls(n *network) (fwdOn, brNFOn []bool, err error) {
	fams := routedFamilies(n)
	fwdOn = make([]bool, len(fams))
	brNFOn = make([]bool, len(fams))
	if err := d.ns.Do(func() error {
		for i, f := range fams {
			var err error
			if fwdOn[i], err = readBoolSysctl(f.forward); err != nil {
				return err
			}
			if n.noICC {
				if brNFOn[i], err = readBoolSysctl(f.brNF); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("read sysctls: %w", err)
	}
	return fwdOn, brNFOn, nil
}

// needSysctlWrites reports whether writeSysctls has anything to turn on.
func needSysctlWrites(n *network, fwdOn, brNFOn []bool) bool {
	for i := range routedFamilies(n) {
		if (!n.internal && !fwdOn[i]) || (n.noICC && !brNFOn[i]) {
			return true
		}
	}
	return false
}

// writeSysctls turns on, in the host namespace, the forwarding of each of n's families that
// readSysctls found off (when n is not internal), and br_netfilter's switch when n has ICC
// off.
func (d *Driver) writeSysctls(n *network, fwdOn, brNFOn []bool) error {
	if !needSysctlWrites(n, fwdOn, brNFOn) { // the usual case: no setns into the host namespace
		return nil
	}
	return d.ns.Do(func() error {
		var errs []error
		for i, f := range routedFamilies(n) {
			if !n.internal && !fwdOn[i] {
				errs = append(errs, writeSysctl(f.forward, "1"))
			}
			if n.noICC && !brNFOn[i] {
				errs = append(errs, writeSysctl(f.brNF, "1"))
			}
		}
		return errors.Join(errs...)
	})
}

// ensureFamily writes n's rules in the tables of family f (see ensureFirewall); needFwd reports
// that the family's forwarding is off and n needs it, so that the FORWARD policy must be DROP
// first. It reports whether it set that policy.
func (d *Driver) ensureFamily(ctx context.Context, n *network, f *ipFamily, fresh, needFwd bool) (setPolicy bool, err error) {
	fw, ready := d.runner(f), d.ready(f)
	want := fwRules(n, f)
	if fresh && *ready && !needFwd {
		var t restoreText
		want.planCreate(&t, networkBuckets(n.bridge))
		err := fw.Restore(ctx, t.String())
		if err == nil || ctx.Err() != nil {
			return false, err
		}
		d.log.DebugContext(ctx, "firewall: create failed, converging", "bridge", n.bridge, "family", f.name, "err", err)
	}
	tables, err := d.fwState(ctx, f)
	if err != nil {
		return false, err
	}
	var t restoreText
	planBase(&t, tables, f)
	if needFwd && tables[tableFilter].Policy("FORWARD") != "DROP" {
		t.add(tableFilter, ":FORWARD DROP [0:0]")
		setPolicy = true
	}
	planNetwork(&t, tables, n.bridge, want)
	if err := fw.Restore(ctx, t.String()); err != nil {
		return false, err
	}
	*ready = true
	if len(t.filter)+len(t.nat) > 0 {
		d.log.DebugContext(ctx, "firewall rules written", "bridge", n.bridge, "family", f.name, "lines", len(t.filter)+len(t.nat))
	}
	return setPolicy, nil
}

// undoFamily removes n's rules from the tables of family f, which ensureFamily has just
// written, and puts the FORWARD policy back to ACCEPT when it set it to DROP.
func (d *Driver) undoFamily(ctx context.Context, n *network, f *ipFamily, setPolicy bool) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fwTimeout)
	defer cancel()
	if err := d.removeFamily(fctx, f, n.bridge, n); err != nil {
		return err
	}
	if setPolicy {
		return d.runner(f).Restore(fctx, "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
	}
	return nil
}

// removeFamily deletes the rules and chains of the network on bridge br from the tables of
// family f in one transaction: exactly those of n with no iptables-save first when n is the
// network as this process made it, else (n nil, or that transaction failed) by converging from
// one iptables-save. Missing rules are fine. Called with fwMu held.
func (d *Driver) removeFamily(ctx context.Context, f *ipFamily, br string, n *network) error {
	fw := d.runner(f)
	if n != nil {
		var t restoreText
		fwRules(n, f).planDelete(&t, networkBuckets(n.bridge))
		err := fw.Restore(ctx, t.String())
		if err == nil || ctx.Err() != nil {
			return err
		}
		d.log.DebugContext(ctx, "firewall: delete failed, converging", "bridge", br, "family", f.name, "err", err)
	}
	tables, err := d.fwState(ctx, f)
	if err != nil {
		return err
	}
	var t restoreText
	planNetwork(&t, tables, br, nil)
	return fw.Restore(ctx, t.String())
}

// removeFirewall deletes the rules and chains of the network on bridge br, in one transaction
// per family. Missing rules are fine. The shared chains, the jumps to them and the sysctls
// stay. When n is the network as this process made it (nil: unknown, as after a restart), the
// transactions delete exactly its rules, in the families it has, with no iptables-save first;
// if that fails (the tables are not as made), or when n is nil, it converges from one
// iptables-save (of both families when n is nil and ip6tables is there).
func (d *Driver) removeFirewall(ctx context.Context, br string, n *network) error {
	if d.noFW || d.fw.Check() != nil {
		return nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	fams := []*ipFamily{ipv4Family, ipv6Family}
	if n != nil {
		fams = d.families(n)
	}
	var errs []error
	for _, f := range fams {
		if f.v6 && d.fw6.Check() != nil {
			if n != nil { // its IPv6 rules cannot be there: they could not be written
				d.log.WarnContext(ctx, "firewall: ip6tables missing; IPv6 rules not removed", "bridge", br)
			}
			continue
		}
		if err := d.removeFamily(ctx, f, br, n); err != nil {
			if n != nil && !n.routes(f) { // best effort, as when they were written
				d.log.WarnContext(ctx, "firewall: IPv6 rules of an IPv4-only network not removed", "bridge", br, "err", err)
				continue
			}
			if f.v6 {
				err = fmt.Errorf("%s: %w", f.name, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// staleFirewall removes, in one transaction per family, the rules in the driver's shared
// chains that name a bridge for which keep returns false (or jump to its chain), and the
// chains CNM-N-<bridge> of those bridges, and returns those bridges' names, sorted. The IPv6
// tables are looked at when ip6tables is there.
func (d *Driver) staleFirewall(ctx context.Context, keep func(bridge string) bool) ([]string, error) {
	if d.noFW || d.fw.Check() != nil {
		return nil, nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	return d.staleInFamilies(func(f *ipFamily) ([]string, error) { return d.staleFamily(ctx, f, keep) })
}

// staleInFamilies runs stale for IPv4 and, when ip6tables is there, IPv6, and returns the union
// of what they found, sorted, with their errors joined (an IPv6 one says so).
func (d *Driver) staleInFamilies(stale func(f *ipFamily) ([]string, error)) ([]string, error) {
	var (
		all  []string
		errs []error
	)
	for _, f := range []*ipFamily{ipv4Family, ipv6Family} {
		if f.v6 && d.fw6.Check() != nil {
			continue
		}
		found, err := stale(f)
		if err != nil {
			if f.v6 {
				err = fmt.Errorf("%s: %w", f.name, err)
			}
			errs = append(errs, err)
		}
		for _, s := range found {
			if !slices.Contains(all, s) {
				all = append(all, s)
			}
		}
	}
	slices.Sort(all)
	return all, errors.Join(errs...)
}

// staleFamily is staleFirewall for the tables of family f.
func (d *Driver) staleFamily(ctx context.Context, f *ipFamily, keep func(bridge string) bool) ([]string, error) {
	tables, err := d.fwState(ctx, f)
	if err != nil {
		return nil, err
	}
	var stale []string
	consider := func(br string) {
		if br != "" && !keep(br) && !slices.Contains(stale, br) {
			stale = append(stale, br)
		}
	}
	for _, c := range withBuckets(networkChains) {
		for _, r := range tables[c.table].ChainRules(c.chain) {
			consider(ruleBridge(r))
			if target, ok := strings.CutPrefix(ruleTarget(r), ChainNetworkPrefix); ok {
				consider(target)
			}
		}
	}
	for _, table := range []string{tableFilter, tableNAT} {
		if tables[table] == nil {
			continue
		}
		for c := range tables[table].Chains {
			if br, ok := strings.CutPrefix(c, ChainNetworkPrefix); ok {
				consider(br)
			}
		}
	}
	slices.Sort(stale)
	var t restoreText
	for _, br := range stale {
		planNetwork(&t, tables, br, nil)
	}
	if err := d.runner(f).Restore(ctx, t.String()); err != nil {
		return nil, err
	}
	return stale, nil
}

func readBoolSysctl(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}

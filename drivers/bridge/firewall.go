package bridge

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/internal/errclass"
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

	sysctlIPForward = "/proc/sys/net/ipv4/ip_forward"
	sysctlBrNF      = "/proc/sys/net/bridge/bridge-nf-call-iptables"
)

// chainRef names a chain in a table.
type chainRef struct{ table, chain string }

// networkChains are the shared chains that hold rules of every network: its isolation rules
// and the jumps to its own chain, in the order they are written.
var networkChains = []chainRef{
	{tableFilter, ChainIsolation1},
	{tableFilter, ChainIsolation2},
	{tableFilter, ChainForward},
	{tableNAT, ChainPostrouting},
}

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

// fwRules returns the rules of network n. Its own chain CNM-N-<bridge> holds, in the filter
// table, the forwarding rules of the network, which decide every packet that enters or leaves
// the bridge, and in the nat table its masquerading rules. The shared chains hold the two
// isolation rules, the two jumps from CNM-FORWARD (-i BR and -o BR) and, when it has nat
// rules, a jump per IPv4 subnet from CNM-POSTROUTING. Every rule in a shared chain names n's
// bridge with -i or -o, or jumps to its chain: that is how the driver finds them again, after a
// restart too.
func fwRules(n *network) *fwObject {
	br := n.bridge
	o := &fwObject{chain: networkChain(br), own: map[string][]string{}, shared: map[chainRef][]string{}}
	add := func(table, rule string) { o.own[table] = append(o.own[table], rule) }
	iso1, iso2 := chainRef{tableFilter, ChainIsolation1}, chainRef{tableFilter, ChainIsolation2}
	fwd, post := chainRef{tableFilter, ChainForward}, chainRef{tableNAT, ChainPostrouting}

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
	if n.routed {
		add(tableFilter, fmt.Sprintf("! -i %s -o %s -p icmp -j ACCEPT", br, br))
	}
	add(tableFilter, fmt.Sprintf("! -i %s -o %s -j DROP", br, br))
	for _, s := range n.subnets4 {
		if n.masquerade() {
			add(tableNAT, fmt.Sprintf("-s %s ! -o %s -j MASQUERADE", s, br))
		}
		// Hairpin: a container reaching a published port of its own network through the
		// host's address is DNATed back into the bridge; masquerading makes the reply come
		// back through the host, to be un-DNATed.
		add(tableNAT, fmt.Sprintf("-s %s -o %s -m conntrack --ctstate DNAT -j MASQUERADE", s, br))
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

// masquerade reports whether n's outbound IPv4 traffic is masqueraded.
func (n *network) masquerade() bool { return !n.internal && !n.routed && !n.noMasq }

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

// planBase adds to t what makes the driver's chains and jumps exist, given the tables now:
// CNM-USER then CNM-FORWARD first in FORWARD, CNM-ISOLATION-1 first in CNM-FORWARD, and
// CNM-POSTROUTING from POSTROUTING. Existing chains are never declared again (which would
// flush them), and CNM-USER's rules are never touched.
func planBase(t *restoreText, tables map[string]*iptables.Table) {
	filter, nat := tables[tableFilter], tables[tableNAT]
	for _, c := range []string{ChainUser, ChainForward, ChainIsolation1, ChainIsolation2, ChainPorts} {
		if !filter.HasChain(c) {
			t.add(tableFilter, ":"+c+" - [0:0]")
		}
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
	head := []string{"-j " + ChainIsolation1, "-j " + ChainPorts}
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
	for _, c := range []string{ChainPostrouting, ChainDNAT} {
		if !nat.HasChain(c) {
			t.add(tableNAT, ":"+c+" - [0:0]")
		}
	}
	for _, j := range []struct{ chain, rule string }{
		{"POSTROUTING", "-j " + ChainPostrouting},
		{"PREROUTING", "-m addrtype --dst-type LOCAL -j " + ChainDNAT},
		{"OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j " + ChainDNAT},
	} {
		if !slices.Contains(nat.ChainRules(j.chain), j.rule) {
			t.add(tableNAT, "-A "+j.chain+" "+j.rule)
		}
	}
}

// planNetwork adds to t what brings the rules of the network on bridge br to want (nil:
// none), given the tables now.
func planNetwork(t *restoreText, tables map[string]*iptables.Table, br string, want *fwObject) {
	planConverge(t, tables, networkChain(br), want, networkChains, belongsToNetwork(br))
}

// fwState reads the tables of the host namespace.
func (d *Driver) fwState(ctx context.Context) (map[string]*iptables.Table, error) {
	save, err := d.fw.Save(ctx)
	if err != nil {
		return nil, err
	}
	return iptables.Parse(save)
}

// checkFirewall checks, before any kernel work, that the firewall can do what n needs: the
// iptables binaries, and br_netfilter in the host namespace when ICC is off.
func (d *Driver) checkFirewall(n *network) error {
	if d.noFW {
		if n.noICC {
			return &errclass.NotSupportedError{What: LabelEnableICC + "=false with the firewall disabled (Config.DisableIPTables)"}
		}
		return nil
	}
	if err := d.fw.Check(); err != nil {
		return err
	}
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
			return &errclass.NotSupportedError{
				What: LabelEnableICC + "=false",
				Err:  fmt.Errorf("needs br_netfilter (%s is missing in the host namespace; modprobe br_netfilter)", sysctlBrNF),
			}
		}
	}
	return nil
}

// ensureFirewall brings the host namespace's rules for network n to what fwRules gives, in one
// iptables-restore transaction, and then turns on net.ipv4.ip_forward (when n is not
// internal) and bridge-nf-call-iptables (when ICC is off) in the host namespace if they are
// off. When it turns ip_forward on itself, the same transaction first sets the FORWARD policy
// to DROP, as Docker does, so that turning forwarding on opens nothing but the driver's
// networks.
//
// fresh reports that the caller has just created n's bridge and knew nothing of the network:
// then, once this process has converged the driver's base chains, the rules are written with
// no iptables-save, all appended (see fwObject.planCreate), and the cost does not depend on
// the number of networks. Otherwise, or when that transaction fails (a chain of n exists
// already: a crash, a restart), it converges from one iptables-save: calling it again changes
// nothing.
func (d *Driver) ensureFirewall(ctx context.Context, n *network, fresh bool) error {
	if d.noFW {
		return nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	var fwdOn, brNFOn bool
	if err := d.ns.Do(func() error {
		var err error
		if fwdOn, err = readBoolSysctl(sysctlIPForward); err != nil {
			return err
		}
		if n.noICC {
			brNFOn, err = readBoolSysctl(sysctlBrNF)
		}
		return err
	}); err != nil {
		return fmt.Errorf("read sysctls: %w", err)
	}
	needFwd := !n.internal && !fwdOn
	want := fwRules(n)
	done := false
	if fresh && d.fwReady && !needFwd {
		var t restoreText
		want.planCreate(&t, networkChains)
		err := d.fw.Restore(ctx, t.String())
		if err == nil {
			done = true
		} else if ctx.Err() != nil {
			return err
		} else {
			d.log.DebugContext(ctx, "firewall: create failed, converging", "bridge", n.bridge, "err", err)
		}
	}
	if !done {
		tables, err := d.fwState(ctx)
		if err != nil {
			return err
		}
		var t restoreText
		planBase(&t, tables)
		if needFwd && tables[tableFilter].Policy("FORWARD") != "DROP" {
			t.add(tableFilter, ":FORWARD DROP [0:0]")
		}
		planNetwork(&t, tables, n.bridge, want)
		if err := d.fw.Restore(ctx, t.String()); err != nil {
			return err
		}
		d.fwReady = true
		if len(t.filter)+len(t.nat) > 0 {
			d.log.DebugContext(ctx, "firewall rules written", "bridge", n.bridge, "lines", len(t.filter)+len(t.nat))
		}
	}
	if !needFwd && (!n.noICC || brNFOn) {
		return nil
	}
	return d.ns.Do(func() error {
		var errs []error
		if needFwd {
			errs = append(errs, writeSysctl(sysctlIPForward, "1"))
		}
		if n.noICC && !brNFOn {
			errs = append(errs, writeSysctl(sysctlBrNF, "1"))
		}
		return errors.Join(errs...)
	})
}

// removeFirewall deletes the rules and chains of the network on bridge br in one transaction.
// Missing rules are fine. The shared chains, the jumps to them and the sysctls stay. When n is
// the network as this process made it (nil: unknown, as after a restart), the transaction
// deletes exactly its rules with no iptables-save first; if that fails (the tables are not as
// made), or when n is nil, it converges from one iptables-save.
func (d *Driver) removeFirewall(ctx context.Context, br string, n *network) error {
	if d.noFW || d.fw.Check() != nil {
		return nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	if n != nil {
		var t restoreText
		fwRules(n).planDelete(&t, networkChains)
		err := d.fw.Restore(ctx, t.String())
		if err == nil || ctx.Err() != nil {
			return err
		}
		d.log.DebugContext(ctx, "firewall: delete failed, converging", "bridge", br, "err", err)
	}
	tables, err := d.fwState(ctx)
	if err != nil {
		return err
	}
	var t restoreText
	planNetwork(&t, tables, br, nil)
	return d.fw.Restore(ctx, t.String())
}

// staleFirewall removes, in one transaction, the rules in the driver's shared chains that name
// a bridge for which keep returns false (or jump to its chain), and the chains CNM-N-<bridge>
// of those bridges, and returns those bridges' names, sorted.
func (d *Driver) staleFirewall(ctx context.Context, keep func(bridge string) bool) ([]string, error) {
	if d.noFW || d.fw.Check() != nil {
		return nil, nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	tables, err := d.fwState(ctx)
	if err != nil {
		return nil, err
	}
	var stale []string
	consider := func(br string) {
		if br != "" && !keep(br) && !slices.Contains(stale, br) {
			stale = append(stale, br)
		}
	}
	for _, c := range networkChains {
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
	return stale, d.fw.Restore(ctx, t.String())
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

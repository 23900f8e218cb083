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

// networkChains are the chains that hold per-network rules, in the order rules are written.
var networkChains = []chainRef{
	{tableFilter, ChainIsolation1},
	{tableFilter, ChainIsolation2},
	{tableFilter, ChainForward},
	{tableNAT, ChainPostrouting},
}

// fwRules returns the rules of network n by chain, in order, each as iptables-save prints it
// (without "-A CHAIN"). Every rule names n's bridge with -i or -o: that is how the driver
// finds a network's rules again, after a restart too.
func fwRules(n *network) map[chainRef][]string {
	br := n.bridge
	r := make(map[chainRef][]string)
	add := func(c chainRef, rule string) { r[c] = append(r[c], rule) }
	iso1, iso2 := chainRef{tableFilter, ChainIsolation1}, chainRef{tableFilter, ChainIsolation2}
	fwd, post := chainRef{tableFilter, ChainForward}, chainRef{tableNAT, ChainPostrouting}

	// Isolation: traffic leaving any cnm bridge for another interface is checked against
	// the list of cnm bridges; going out to one of them is dropped.
	add(iso1, fmt.Sprintf("-i %s ! -o %s -j %s", br, br, ChainIsolation2))
	add(iso2, fmt.Sprintf("-o %s -j DROP", br))

	icc := "ACCEPT"
	if n.noICC {
		icc = "DROP"
	}
	if n.internal {
		add(fwd, fmt.Sprintf("-i %s -o %s -j %s", br, br, icc))
		add(fwd, fmt.Sprintf("-i %s ! -o %s -j DROP", br, br))
		add(fwd, fmt.Sprintf("! -i %s -o %s -j DROP", br, br))
		return r
	}
	add(fwd, fmt.Sprintf("-o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", br))
	add(fwd, fmt.Sprintf("-i %s -o %s -j %s", br, br, icc))
	add(fwd, fmt.Sprintf("-i %s ! -o %s -j ACCEPT", br, br))
	if n.routed {
		add(fwd, fmt.Sprintf("! -i %s -o %s -p icmp -j ACCEPT", br, br))
	}
	add(fwd, fmt.Sprintf("! -i %s -o %s -j DROP", br, br))
	for _, s := range n.subnets4 {
		if n.masquerade() {
			add(post, fmt.Sprintf("-s %s ! -o %s -j MASQUERADE", s, br))
		}
		// Hairpin: a container reaching a published port of its own network through the
		// host's address is DNATed back into the bridge; masquerading makes the reply come
		// back through the host, to be un-DNATed.
		add(post, fmt.Sprintf("-s %s -o %s -m conntrack --ctstate DNAT -j MASQUERADE", s, br))
	}
	return r
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

// planNetwork adds to t what brings the rules of bridge br to want (nil: none), given the
// tables now. A chain whose rules of br already equal want, in order, is left alone;
// otherwise all of br's rules in it are deleted and want appended, so that a partial or
// reordered set never leaves a DROP ahead of an ACCEPT. Rules of different bridges match
// disjoint traffic, so their relative order does not matter.
func planNetwork(t *restoreText, tables map[string]*iptables.Table, br string, want map[chainRef][]string) {
	for _, c := range networkChains {
		var have []string
		for _, r := range tables[c.table].ChainRules(c.chain) {
			if ruleBridge(r) == br {
				have = append(have, r)
			}
		}
		if slices.Equal(have, want[c]) {
			continue
		}
		for _, r := range have {
			t.add(c.table, "-D "+c.chain+" "+r)
		}
		for _, r := range want[c] {
			t.add(c.table, "-A "+c.chain+" "+r)
		}
	}
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
// iptables-restore transaction (none when nothing is missing), and then turns on
// net.ipv4.ip_forward (when n is not internal) and bridge-nf-call-iptables (when ICC is off)
// in the host namespace if they are off. When it turns ip_forward on itself, the same
// transaction first sets the FORWARD policy to DROP, as Docker does, so that turning
// forwarding on opens nothing but the driver's networks. It converges: calling it again
// changes nothing.
func (d *Driver) ensureFirewall(ctx context.Context, n *network) error {
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
	tables, err := d.fwState(ctx)
	if err != nil {
		return err
	}
	var t restoreText
	planBase(&t, tables)
	needFwd := !n.internal && !fwdOn
	if needFwd && tables[tableFilter].Policy("FORWARD") != "DROP" {
		t.add(tableFilter, ":FORWARD DROP [0:0]")
	}
	planNetwork(&t, tables, n.bridge, fwRules(n))
	if err := d.fw.Restore(ctx, t.String()); err != nil {
		return err
	}
	if len(t.filter)+len(t.nat) > 0 {
		d.log.DebugContext(ctx, "firewall rules written", "bridge", n.bridge, "lines", len(t.filter)+len(t.nat))
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

// removeFirewall deletes the rules of bridge br in one transaction. Missing rules are fine.
// The chains, the jumps to them and the sysctls stay.
func (d *Driver) removeFirewall(ctx context.Context, br string) error {
	if d.noFW || d.fw.Check() != nil {
		return nil
	}
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	tables, err := d.fwState(ctx)
	if err != nil {
		return err
	}
	var t restoreText
	planNetwork(&t, tables, br, nil)
	return d.fw.Restore(ctx, t.String())
}

// staleFirewall removes, in one transaction, the rules in the driver's chains that name a
// bridge for which keep returns false, and returns those bridges' names, sorted.
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
	for _, c := range networkChains {
		for _, r := range tables[c.table].ChainRules(c.chain) {
			if br := ruleBridge(r); br != "" && !keep(br) && !slices.Contains(stale, br) {
				stale = append(stale, br)
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

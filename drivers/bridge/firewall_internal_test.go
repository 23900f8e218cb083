package bridge

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/iptables"
	"github.com/google/go-cmp/cmp"
)

// applyRestore applies restore input to tables the way iptables-restore --noflush does, for
// the lines the planner writes: chain declarations (create or flush), policies, -A, -I and -D.
func applyRestore(t *testing.T, tables map[string]*iptables.Table, text string) {
	t.Helper()
	var cur *iptables.Table
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		switch {
		case line == "" || line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			if tables[name] == nil {
				tables[name] = &iptables.Table{Chains: map[string]string{}, Rules: map[string][]string{}}
			}
			cur = tables[name]
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			cur.Chains[f[0]] = f[1]
			if f[1] == "-" {
				cur.Rules[f[0]] = nil
			}
		case strings.HasPrefix(line, "-N ") || strings.HasPrefix(line, "-F ") || strings.HasPrefix(line, "-X "):
			op, chain := line[:2], line[3:]
			_, exists := cur.Chains[chain]
			switch {
			case op == "-N" && exists:
				t.Fatalf("-N of an existing chain: %s", line)
			case op != "-N" && !exists:
				t.Fatalf("%s of a missing chain: %s", op, line)
			case op == "-X" && len(cur.Rules[chain]) > 0:
				t.Fatalf("-X of a chain with rules: %s", line)
			case op == "-X":
				for c, rs := range cur.Rules {
					for _, r := range rs {
						if ruleTarget(r) == chain {
							t.Fatalf("-X of a chain %s jumps to: %s", c, line)
						}
					}
				}
				delete(cur.Chains, chain)
				delete(cur.Rules, chain)
			case op == "-N":
				cur.Chains[chain] = "-"
			default:
				cur.Rules[chain] = nil
			}
		default:
			f := strings.SplitN(line, " ", 3)
			op, chain, rule := f[0], f[1], f[2]
			if _, ok := cur.Chains[chain]; !ok && strings.HasPrefix(chain, "CNM-") {
				t.Fatalf("%s to a missing chain: %s", op, line)
			}
			switch op {
			case "-A":
				cur.Rules[chain] = append(cur.Rules[chain], rule)
			case "-I":
				num, rest, _ := strings.Cut(rule, " ")
				i := int(num[0]-'0') - 1
				cur.Rules[chain] = append(cur.Rules[chain][:i], append([]string{rest}, cur.Rules[chain][i:]...)...)
			case "-D":
				rs := cur.Rules[chain]
				found := false
				for i, r := range rs {
					if r == rule {
						cur.Rules[chain] = append(rs[:i:i], rs[i+1:]...)
						found = true
						break
					}
				}
				if !found {
					t.Fatalf("-D of a missing rule: %s", line)
				}
			default:
				t.Fatalf("unexpected line %q", line)
			}
		}
	}
}

// goldenMark separates the IPv4 listing (iptables-save) from the IPv6 one (ip6tables-save) in
// testdata/firewall.golden.
const goldenMark = "# ip6tables-save\n"

// readGolden returns the IPv4 and the IPv6 listings of testdata/firewall.golden.
func readGolden(t *testing.T) (v4, v6 string) {
	t.Helper()
	golden, err := os.ReadFile(filepath.Join("testdata", "firewall.golden"))
	if err != nil {
		t.Fatal(err)
	}
	v4, v6, ok := strings.Cut(string(golden), goldenMark)
	if !ok {
		t.Fatalf("testdata/firewall.golden has no %q line", strings.TrimSpace(goldenMark))
	}
	return v4, v6
}

// TestPlanConverges replays the planner against the golden ruleset, in the tables of each
// family: planning what is there changes nothing, and creating or deleting networks in random
// order then undoing it gives the same tables back.
func TestPlanConverges(t *testing.T) {
	golden4, golden6 := readGolden(t)
	for _, f := range []*ipFamily{ipv4Family, ipv6Family} {
		t.Run(f.name, func(t *testing.T) {
			golden := golden4
			if f.v6 {
				golden = golden6
			}
			testPlanConverges(t, f, golden)
		})
	}
}

func testPlanConverges(t *testing.T, f *ipFamily, golden string) {
	parse := func() map[string]*iptables.Table {
		tables, err := iptables.Parse(golden)
		if err != nil {
			t.Fatal(err)
		}
		return tables
	}
	p := netip.MustParsePrefix
	// The golden ruleset was written by an iptables that takes --random-fully.
	a := &network{bridge: "br-aaaaaaaaaaaa", subnets4: []netip.Prefix{p("10.10.1.0/24")}, subnets6: []netip.Prefix{p("fd00:10:1::/64")}, randomFully: true}
	b := &network{bridge: "noicc0", noICC: true, subnets4: []netip.Prefix{p("10.10.2.0/24")}, subnets6: []netip.Prefix{p("fd00:10:2::/64")}, randomFully: true}
	c := &network{bridge: "br-cccccccccccc", internal: true, subnets4: []netip.Prefix{p("10.10.3.0/24")}, subnets6: []netip.Prefix{p("fd00:10:3::/64")}, randomFully: true}
	// The golden sequence's endpoint with published ports (IPv4 only).
	eid := drivers.EndpointID(strings.Repeat("e", 64))
	ep := &endpoint{bridge: a.bridge, addr: netip.MustParseAddr("10.10.1.2"), held: []heldPort{
		{portKey: portKey{proto: "tcp", port: 8080}, cport: 80},
		{portKey: portKey{proto: "udp", addr: netip.MustParseAddr("192.0.2.1"), port: 5353}, cport: 53},
	}}
	planEP := func(t *testing.T, tables map[string]*iptables.Table, short string, want *fwObject) string {
		var rt restoreText
		if f.ports {
			planEndpoint(&rt, tables, short, want)
		}
		applyRestore(t, tables, rt.String())
		return rt.String()
	}
	tables := parse()
	for _, n := range []*network{a, b, c} {
		var rt restoreText
		planBase(&rt, tables, f)
		planNetwork(&rt, tables, n.bridge, fwRules(n, f))
		if rt.String() != "" {
			t.Errorf("plan for %s on the golden ruleset:\n%s", n.bridge, rt.String())
		}
	}
	if rt := planEP(t, tables, eid.Short(), portRules(eid, ep, f)); rt != "" {
		t.Errorf("plan for endpoint %s on the golden ruleset:\n%s", eid.Short(), rt)
	}
	// From nothing, in random orders, to the golden set (compared sorted: the order across
	// networks does not matter), and back.
	for range 20 {
		tables := map[string]*iptables.Table{}
		nets := []*network{a, b, c, {bridge: "br-dddddddddddd", routed: true, subnets6: []netip.Prefix{p("fd00:10:4::/64")}, randomFully: true}}
		rand.Shuffle(len(nets), func(i, j int) { nets[i], nets[j] = nets[j], nets[i] })
		for _, n := range nets {
			var rt restoreText
			planBase(&rt, tables, f)
			planNetwork(&rt, tables, n.bridge, fwRules(n, f))
			applyRestore(t, tables, rt.String())
			if n == a { // the endpoint's rules, and those of one deleted again
				gone := drivers.EndpointID(strings.Repeat("f", 64))
				planEP(t, tables, gone.Short(), portRules(gone, &endpoint{bridge: a.bridge, addr: netip.MustParseAddr("10.10.1.3"),
					held: []heldPort{{portKey: portKey{proto: "tcp", port: 8081}, cport: 80}}}, f))
				planEP(t, tables, eid.Short(), portRules(eid, ep, f))
				planEP(t, tables, gone.Short(), nil)
			}
		}
		var rt restoreText
		planNetwork(&rt, tables, "br-dddddddddddd", nil)
		applyRestore(t, tables, rt.String())
		if diff := cmp.Diff(sortedTables(parse()), sortedTables(tables)); diff != "" {
			t.Fatalf("tables (-golden +planned):\n%s", diff)
		}
	}
	// The fast paths: creating a network and an endpoint from nothing without reading the
	// tables gives what converging gives, and deleting them gives the golden tables back.
	tables = parse()
	e := &network{bridge: "br-eeeeeeeeeeee", subnets4: []netip.Prefix{p("10.10.5.0/24")}, subnets6: []netip.Prefix{p("fd00:10:5::/64")}}
	eid2 := drivers.EndpointID(strings.Repeat("9", 64))
	ep2 := &endpoint{bridge: e.bridge, addr: netip.MustParseAddr("10.10.5.2"), addr6: netip.MustParseAddr("fd00:10:5::2"), held: []heldPort{
		{portKey: portKey{proto: "tcp", port: 9090}, cport: 90},
		{portKey: portKey{proto: "tcp", port: 9090, v6: true}, cport: 90},
	}}
	rt := restoreText{}
	fwRules(e, f).planCreate(&rt, networkBuckets(e.bridge))
	if f.ports {
		portRules(eid2, ep2, f).planCreate(&rt, portBuckets(eid2.Short()))
	}
	applyRestore(t, tables, rt.String())
	rt = restoreText{}
	planNetwork(&rt, tables, e.bridge, fwRules(e, f))
	if f.ports {
		planEndpoint(&rt, tables, eid2.Short(), portRules(eid2, ep2, f))
	}
	if rt.String() != "" {
		t.Errorf("converging after the fast create:\n%s", rt.String())
	}
	rt = restoreText{}
	if f.ports {
		portRules(eid2, ep2, f).planDelete(&rt, portBuckets(eid2.Short()))
	}
	fwRules(e, f).planDelete(&rt, networkBuckets(e.bridge))
	applyRestore(t, tables, rt.String())
	if diff := cmp.Diff(sortedTables(parse()), sortedTables(tables)); diff != "" {
		t.Fatalf("tables after the fast create and delete (-golden +got):\n%s", diff)
	}
}

// TestFwRulesIPv6 checks the IPv6 rules of a dual-stack network against the IPv4 ones: the
// same filter rules, a MASQUERADE and a hairpin MASQUERADE per IPv6 subnet, and for a network
// without IPv6 subnets the filter rules only.
func TestFwRulesIPv6(t *testing.T) {
	p := netip.MustParsePrefix
	n := &network{bridge: "br0", subnets4: []netip.Prefix{p("10.0.0.0/24")}, subnets6: []netip.Prefix{p("fd00::/64")}}
	v4, v6 := fwRules(n, ipv4Family), fwRules(n, ipv6Family)
	if diff := cmp.Diff(v4.own[tableFilter], v6.own[tableFilter]); diff != "" {
		t.Errorf("filter rules differ between families (-v4 +v6):\n%s", diff)
	}
	hairpin := "-s fd00::/64 -o br0 -m conntrack --ctstate DNAT -j MASQUERADE"
	if diff := cmp.Diff([]string{"-s fd00::/64 ! -o br0 -j MASQUERADE", hairpin}, v6.own[tableNAT]); diff != "" {
		t.Errorf("IPv6 nat rules (-want +got):\n%s", diff)
	}
	if v4only := (&network{subnets4: n.subnets4}); v4only.routes(ipv6Family) || !v4only.routes(ipv4Family) || !n.routes(ipv6Family) {
		t.Errorf("an IPv4-only network routes IPv6, or a dual-stack one does not")
	}
	// An IPv4-only network's IPv6 rules: the same filter rules, no nat rule.
	v4only := fwRules(&network{bridge: "br0", subnets4: n.subnets4}, ipv6Family)
	if diff := cmp.Diff(v4.own[tableFilter], v4only.own[tableFilter]); diff != "" {
		t.Errorf("IPv6 filter rules of an IPv4-only network (-dual-stack +IPv4-only):\n%s", diff)
	}
	if len(v4only.own[tableNAT]) > 0 || len(v4only.shared[chainRef{tableNAT, ChainPostrouting}]) > 0 {
		t.Errorf("IPv6 nat rules of an IPv4-only network: %v %v", v4only.own, v4only.shared)
	}
	// Without masquerade, or routed (IPv4 only), or internal.
	noMasq := *n
	noMasq.noMasq = true
	if o := fwRules(&noMasq, ipv6Family); !slices.Equal(o.own[tableNAT], []string{hairpin}) {
		t.Errorf("IPv6 nat rules without masquerade: %v, want the hairpin only", o.own)
	}
	routed := *n
	routed.routed = true
	if o := fwRules(&routed, ipv6Family); len(o.own[tableNAT]) != 2 || slices.ContainsFunc(o.own[tableFilter], func(r string) bool { return strings.Contains(r, "icmp") }) {
		t.Errorf("IPv6 rules of a network with gateway_mode_ipv4=routed: %v", o.own)
	}
}

func sortedTables(tables map[string]*iptables.Table) map[string][]string {
	out := map[string][]string{}
	for name, t := range tables {
		var l []string
		for c, p := range t.Chains {
			if p == "-" { // built-in chains' policies are not the planner's
				l = append(l, ":"+c)
			}
		}
		for c, rs := range t.Rules {
			if (c == "FORWARD" || c == ChainForward) && len(rs) > 0 { // order matters at the top
				l = append(l, "first "+c+" "+rs[0])
			}
			for _, r := range rs {
				l = append(l, c+" "+r)
			}
		}
		slices.Sort(l)
		out[name] = l
	}
	return out
}

func TestRuleBridge(t *testing.T) {
	for rule, want := range map[string]string{
		"-i br0 ! -o br0 -j ACCEPT":            "br0",
		"! -i br1 -o br1 -j DROP":              "br1",
		"-s 10.0.0.0/8 ! -o br2 -j MASQUERADE": "br2",
		"-j CNM-ISOLATION-1":                   "",
	} {
		if got := ruleBridge(rule); got != want {
			t.Errorf("ruleBridge(%q) = %q, want %q", rule, got, want)
		}
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/vishvananda/netlink"
)

// The multi-host walk-through of examples/multihost/README.md, run as written: the tests read
// its fenced blocks marked "<!-- walkthrough: NAME" and type each "vmN# COMMAND" line on the
// lab VM vmN. A VM is a namespace with eth0 at 10.0.0.N/24 on an underlay bridge that lives
// in a namespace of its own. The lab's VMs share one file system, so each cnmd gets its own
// --data-dir, --run-dir and --host, and cnmctl finds it through CNM_HOST. A line ending in "&"
// starts a server (cnmd, etcd or Consul) that the test owns and stops; the other lines run in
// one bash, so a variable set on one line is there on the next, each cnmctl inside its VM's
// namespace. Before a line typed on another VM than the line before, the test waits until the
// two agree on the global networks (see convergeSh); nothing else is added.

const walkthroughReadme = "../../examples/multihost/README.md"

// walkStep is one line of a walk-through: the VM it is typed on and the command.
type walkStep struct {
	vm, cmd string
	bg      bool // ends in "&": a server
}

var walkLine = regexp.MustCompile(`^(vm[0-9]+)# (.*)$`)

// readWalkthrough returns the lines of the README's block marked "<!-- walkthrough: name".
func readWalkthrough(t testing.TB, name string) []walkStep {
	t.Helper()
	b, err := os.ReadFile(walkthroughReadme)
	if err != nil {
		t.Fatal(err)
	}
	var steps []walkStep
	state := 0 // 0: before the marker, 1: before the block, 2: in it
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && strings.HasPrefix(line, "<!-- walkthrough: "+name+" "):
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(line, "```"):
			if len(steps) == 0 {
				t.Fatalf("%s: walk-through %q is empty", walkthroughReadme, name)
			}
			return steps
		case state == 2:
			m := walkLine.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("%s: walk-through %q: line %q is not \"vmN# COMMAND\"", walkthroughReadme, name, line)
			}
			s := walkStep{vm: m[1], cmd: strings.TrimSpace(m[2])}
			if c, ok := strings.CutSuffix(s.cmd, "&"); ok {
				s.cmd, s.bg = strings.TrimSpace(c), true
			}
			steps = append(steps, s)
		}
	}
	t.Fatalf("%s: no walk-through %q", walkthroughReadme, name)
	return nil
}

// vmLab is the lab the walk-through runs in: VMs vm1..vmN on an underlay bridge, the servers
// the walk-through started, and the bash transcript.
type vmLab struct {
	t       testing.TB
	dir     string // the VMs' shared working directory
	vms     map[string]*netns.NS
	daemons map[string]*daemon
	order   []string // the VMs in the order their cnmd started
	servers []*exec.Cmd
	logs    map[*exec.Cmd]*syncBuffer
}

func newVMLab(t testing.TB, n int) *vmLab {
	t.Helper()
	// The walk-through's tools, which the README asks the VMs to have.
	for _, tool := range []string{"bash", "openssl", "iperf3", "curl", "ping", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the multi-host walk-through needs %s (Debian: apt-get install openssl iperf3 curl iputils-ping util-linux): %v", tool, err)
		}
	}
	l := &vmLab{t: t, dir: t.TempDir(), vms: map[string]*netns.NS{}, daemons: map[string]*daemon{}, logs: map[*exec.Cmd]*syncBuffer{}}
	under := nstest.NewNS(t)
	uh, err := netlink.NewHandleAt(under.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer uh.Close()
	if err := uh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "underlay"}}); err != nil {
		t.Fatal(err)
	}
	br, err := uh.LinkByName("underlay")
	if err != nil {
		t.Fatal(err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("vm%d", i)
		ns := nstest.NewNS(t)
		l.vms[name] = ns
		if err := l.plug(uh, under, br, ns, name, fmt.Sprintf("10.0.0.%d/24", i)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	t.Cleanup(l.cleanup)
	return l
}

// plug gives the VM ns an eth0 at addr whose peer is on the underlay bridge.
func (l *vmLab) plug(uh *netlink.Handle, under *netns.NS, br netlink.Link, ns *netns.NS, name, addr string) error {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "ul-" + name, PeerNamespace: netlink.NsFd(under.FD())}); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth0, a); err != nil {
		return err
	}
	for _, link := range []netlink.Link{eth0, &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}} {
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
	}
	peer, err := uh.LinkByName("ul-" + name)
	if err != nil {
		return err
	}
	if err := uh.LinkSetMaster(peer, br); err != nil {
		return err
	}
	return uh.LinkSetUp(peer)
}

// vm returns the namespace of VM name, failing the test for a VM the lab lacks.
func (l *vmLab) vm(name string) *netns.NS {
	ns, ok := l.vms[name]
	if !ok {
		l.t.Fatalf("the walk-through uses %s; the lab has %d VMs", name, len(l.vms))
	}
	return ns
}

// sock is the cnmd socket of VM name.
func (l *vmLab) sock(name string) string { return filepath.Join(l.dir, name, "cnm.sock") }

// run types the steps in order: a server line starts the server and waits until it serves; a
// run of other lines goes to one bash. It returns each step's output (servers: "").
func (l *vmLab) run(steps []walkStep) []string {
	t := l.t
	t.Helper()
	out := make([]string, len(steps))
	var script strings.Builder
	var pending []int
	flush := func() {
		if len(pending) == 0 {
			return
		}
		outs := l.bash(script.String(), steps, pending)
		for i, idx := range pending {
			out[idx] = outs[i]
		}
		script.Reset()
		pending = nil
	}
	prev := ""
	for i, s := range steps {
		ns := l.vm(s.vm)
		if !s.bg {
			fmt.Fprintf(&script, "echo '@@step %d'\n", i)
			if _, ok := l.daemons[prev]; ok && prev != s.vm && l.daemons[s.vm] != nil {
				// Another terminal: the VMs agree on the global networks first.
				fmt.Fprintf(&script, "converge %s %s %d\n", l.sock(prev), l.sock(s.vm), i)
			}
			fmt.Fprintf(&script, "VMNS=%s; export CNM_HOST=unix://%s\n%s\n", ns.Path(), l.sock(s.vm), s.cmd)
			pending = append(pending, i)
			prev = s.vm
			continue
		}
		flush()
		l.server(s)
	}
	flush()
	if b, err := os.ReadFile(filepath.Join(l.dir, "converge.log")); err == nil {
		t.Logf("waits for the VMs to agree on the global networks (step ms):\n%s", b)
	}
	return out
}

// bash runs script in one bash (set -e) whose cnmctl runs inside $VMNS, and splits its output
// at the step markers.
func (l *vmLab) bash(script string, steps []walkStep, idx []int) []string {
	t := l.t
	t.Helper()
	_, cnmctl := binaries(t)
	pre := "set -e -o pipefail\ncnmctl() { nsenter --net=\"$VMNS\" -- " + cnmctl + " \"$@\"; }\n" + strings.ReplaceAll(convergeSh, "CNMCTL", cnmctl)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", pre+script)
	cmd.Dir = l.dir
	cmd.WaitDelay = 5 * time.Second
	b, err := cmd.CombinedOutput()
	parts := regexp.MustCompile(`(?m)^@@step ([0-9]+)\n`).Split(string(b), -1)
	outs := make([]string, len(idx))
	for i := range outs {
		if i+1 < len(parts) {
			outs[i] = parts[i+1]
		}
	}
	reached := min(max(len(parts)-1, 1), len(idx)) // the steps bash started
	var transcript strings.Builder
	for i, n := range idx[:reached] {
		fmt.Fprintf(&transcript, "%s# %s\n%s", steps[n].vm, steps[n].cmd, outs[i])
	}
	t.Logf("walk-through:\n%s", transcript.String())
	if err != nil {
		s := steps[idx[reached-1]]
		t.Fatalf("walk-through failed at %s# %s: %v\n%s", s.vm, s.cmd, err, l.serverLogs())
	}
	return outs
}

// convergeSh is the bash function "converge SOCK1 SOCK2 STEP" that the test runs before a line
// typed on another VM than the line before: it waits, at most 10 s, until the two cnmd list the
// same global networks, as an operator moving to another terminal finds them (a network made
// on one VM reaches the others through the global store's watch, in milliseconds). Each wait
// goes to converge.log as "STEP MILLISECONDS".
const convergeSh = `converge() {
  local start a b
  start=$(date +%s%N)
  for _ in $(seq 200); do
    a=$(CNM_HOST=unix://$1 CNMCTL network ls --no-trunc --format '{{.ID}} {{.Scope}}' | grep ' global$' || true)
    b=$(CNM_HOST=unix://$2 CNMCTL network ls --no-trunc --format '{{.ID}} {{.Scope}}' | grep ' global$' || true)
    if [ "$a" = "$b" ]; then
      echo "$3 $(( ($(date +%s%N) - start) / 1000000 ))" >> converge.log
      return 0
    fi
    sleep 0.05
  done
  echo "step $3: the VMs did not agree on the global networks in 10s: $a / $b" >&2
  return 1
}
`

// server starts the server of a step ending in "&" on its VM and waits until it serves.
func (l *vmLab) server(s walkStep) {
	t := l.t
	t.Helper()
	f := strings.Fields(s.cmd)
	ns := l.vm(s.vm)
	switch f[0] {
	case "cnmd":
		if _, ok := l.daemons[s.vm]; ok {
			t.Fatalf("a second cnmd on %s", s.vm)
		}
		d := &daemon{host: ns, dataDir: filepath.Join(l.dir, s.vm, "data"), runDir: filepath.Join(l.dir, s.vm, "run"),
			sock: l.sock(s.vm), extra: f[1:], dir: l.dir}
		d.start(t)
		l.daemons[s.vm] = d
		l.order = append(l.order, s.vm)
		return
	case "etcd", "consul":
	default:
		t.Fatalf("the walk-through starts %q: the test knows cnmd, etcd and consul", f[0])
	}
	bin := storetest.EtcdBinary(t)
	if f[0] == "consul" {
		bin = storetest.ConsulBinary(t)
	}
	log := &syncBuffer{}
	cmd := exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--", bin}, f[1:]...)...)
	cmd.Dir = l.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.servers = append(l.servers, cmd)
	l.logs[cmd] = log
	// Serving: etcd's /health says so; Consul has elected a leader.
	url, want := flagValue(f, "--advertise-client-urls")+"/health", `"health":"true"`
	if f[0] == "consul" {
		url, want = "http://"+net.JoinHostPort(flagValue(f, "-client"), "8500")+"/v1/status/leader", `:`
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, _ := nstest.Exec(ns, "curl", "-s", "-m", "2", url); strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s# %s: not serving %s in 60s:\n%s", s.vm, s.cmd, url, log)
		}
	}
}

// flagValue returns the value after flag name in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// serverLogs is the tail of each server's and cnmd's log, for a failure.
func (l *vmLab) serverLogs() string {
	var b strings.Builder
	tail := func(s string) string {
		if len(s) > 6000 {
			return "..." + s[len(s)-6000:]
		}
		return s
	}
	for _, vm := range l.order {
		fmt.Fprintf(&b, "--- cnmd on %s:\n%s\n", vm, tail(l.daemons[vm].log.String()))
	}
	for _, c := range l.servers {
		fmt.Fprintf(&b, "--- %s:\n%s\n", filepath.Base(c.Args[3]), tail(l.logs[c].String()))
	}
	return b.String()
}

// cleanup removes what a failed walk-through left (processes started inside sandboxes,
// sandboxes, overlay networks), stops each cnmd (which must exit 0 and remove its socket),
// then the store.
func (l *vmLab) cleanup() {
	t := l.t
	for _, vm := range l.order {
		d := l.daemons[vm]
		if d.cmd == nil {
			continue
		}
		out, err := ctl(t, d.sock, "sandbox", "ls", "-q")
		if err != nil {
			continue
		}
		for _, sb := range strings.Fields(out) {
			if key, err := ctl(t, d.sock, "sandbox", "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", sb); err == nil {
				killInNetns(t, strings.TrimSpace(key))
			}
			ctl(t, d.sock, "sandbox", "rm", "-f", sb)
		}
	}
	if len(l.order) > 0 {
		if d := l.daemons[l.order[0]]; d.cmd != nil {
			if out, err := ctl(t, d.sock, "network", "ls", "-q", "--filter", "driver=overlay"); err == nil {
				for _, id := range strings.Fields(out) {
					ctl(t, d.sock, "network", "rm", id)
				}
			}
		}
	}
	for i := len(l.order) - 1; i >= 0; i-- {
		if d := l.daemons[l.order[i]]; d.cmd != nil {
			d.stop(t)
		}
	}
	for i := len(l.servers) - 1; i >= 0; i-- {
		c := l.servers[i]
		c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
}

// killInNetns kills (SIGKILL, by pid) the processes whose network namespace is the one
// mounted at path: servers the walk-through started inside a sandbox (iperf3 -D) that a
// failure left running.
func killInNetns(t testing.TB, path string) {
	var want syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		return
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			t.Logf("killing pid %d, left in sandbox namespace %s", pid, path)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// checkWalkthrough asserts on what the walk-through printed: the overlay network seen on the
// VM that did not create it, in global scope with its VXLAN ID; db's address in the overlay's subnet; the ping
// and the iperf3 TCP test from web (vm1) to db (vm2) crossing; the network gone from both
// VMs at the end.
func checkWalkthrough(t *testing.T, l *vmLab, steps []walkStep, out []string) {
	t.Helper()
	find := func(sub string, last bool) int {
		at := -1
		for i, s := range steps {
			if strings.Contains(s.cmd, sub) {
				at = i
				if !last {
					break
				}
			}
		}
		if at < 0 {
			t.Fatalf("the walk-through has no line with %q", sub)
		}
		return at
	}
	if i := find("network ls --filter driver=overlay", false); steps[i].vm != "vm2" || !regexp.MustCompile(`(?m)^[0-9a-f]{12}\s+ov\s+overlay\s+global$`).MatchString(out[i]) {
		t.Errorf("%s# %s printed:\n%s\nwant ov, overlay, global, on the VM that did not create it", steps[i].vm, steps[i].cmd, out[i])
	}
	if i := find("network inspect -f '{{.Scope}} {{json .Options}}' ov", false); steps[i].vm != "vm2" ||
		!regexp.MustCompile(`^global \{.*"com\.docker\.network\.driver\.overlay\.vxlanid_list":"[0-9]+".*\}\n$`).MatchString(out[i]) {
		t.Errorf("%s# %s printed %q, want global and the VXLAN ID", steps[i].vm, steps[i].cmd, out[i])
	}
	i := find("DB=$(", false)
	db, err := netip.ParseAddr(strings.TrimSpace(out[i]))
	if err != nil || !netip.MustParsePrefix("10.10.0.0/24").Contains(db) {
		t.Errorf("db's address %q: %v; want one in ov's 10.10.0.0/24", out[i], err)
	}
	if i := find("ping -c 3 $DB", false); steps[i].vm != "vm1" || !strings.Contains(out[i], "bytes from "+db.String()) {
		t.Errorf("%s# %s printed:\n%s\nwant replies from db (%s)", steps[i].vm, steps[i].cmd, out[i], db)
	}
	if i := find("iperf3 -c $DB", false); steps[i].vm != "vm1" || !regexp.MustCompile(`(?m)connected to `+regexp.QuoteMeta(db.String())+` port 5201`).MatchString(out[i]) ||
		!regexp.MustCompile(`(?m)\s[0-9.]+ [KMG]?bits/sec\s.*receiver$`).MatchString(out[i]) {
		t.Errorf("%s# %s printed:\n%s\nwant a TCP connection to db (%s) and the receiver's rate", steps[i].vm, steps[i].cmd, out[i], db)
	} else if m := regexp.MustCompile(`([0-9.]+ [KMG]?bits/sec)\s.*receiver`).FindStringSubmatch(out[i]); m != nil {
		t.Logf("iperf3 web (vm1) -> db (vm2) over the overlay: %s", m[1])
	}
	if i := find("network ls --filter driver=overlay", true); strings.Contains(out[i], " ov ") {
		t.Errorf("%s# %s printed:\n%s\nwant ov gone", steps[i].vm, steps[i].cmd, out[i])
	}
	for _, vm := range l.order {
		if got := mustCtl(t, l.sock(vm), "network", "ls", "-q", "--filter", "driver=overlay"); got != "" {
			t.Errorf("overlay networks left on %s: %q", vm, got)
		}
		if got := mustCtl(t, l.sock(vm), "sandbox", "ls", "-q"); got != "" {
			t.Errorf("sandboxes left on %s: %q", vm, got)
		}
	}
}

// TestPrivilegedMultihostWalkthrough runs examples/multihost/README.md's cnmd and cnmctl
// walk-through with etcd, as written, on two lab VMs: etcd and cnmd on vm1, cnmd on vm2
// joining vm1's gossip; an overlay network made on vm1 is seen on vm2; web (vm1) pings db
// (vm2) and an iperf3 TCP test crosses; the network removed on vm1 is gone on vm2.
func TestPrivilegedMultihostWalkthrough(t *testing.T) {
	nstest.Privileged(t)
	steps := readWalkthrough(t, "etcd")
	l := newVMLab(t, 2)
	checkWalkthrough(t, l, steps, l.run(steps))
}

// TestPrivilegedMultihostWalkthroughConsul is the walk-through with Consul as cnmd's
// --global-store: the README's Consul lines (a Consul server and the two cnmd) take the place
// of the etcd block's server lines, one for one, and the cnmctl lines are the same.
func TestPrivilegedMultihostWalkthroughConsul(t *testing.T) {
	nstest.Privileged(t)
	etcdSteps, consul := readWalkthrough(t, "etcd"), readWalkthrough(t, "consul")
	var steps []walkStep
	for _, s := range etcdSteps {
		if s.bg {
			if len(consul) == 0 || !consul[0].bg {
				t.Fatalf("the Consul walk-through must have one server line for each of the etcd one's, in order")
			}
			s, consul = consul[0], consul[1:]
			if !strings.Contains(s.cmd, "consul") {
				t.Fatalf("Consul walk-through line %q does not use Consul", s.cmd)
			}
		}
		steps = append(steps, s)
	}
	if len(consul) != 0 {
		t.Fatalf("the Consul walk-through has %d lines more than the etcd one has servers", len(consul))
	}
	l := newVMLab(t, 2)
	checkWalkthrough(t, l, steps, l.run(steps))
	// The cluster's state is in Consul: both hosts' registry entries are under the prefix.
	keys, err := nstest.Exec(l.vm("vm1"), "curl", "-s", "-m", "5", "http://10.0.0.1:8500/v1/kv/cnm/?keys")
	if err != nil || !strings.Contains(keys, "vm1") || !strings.Contains(keys, "vm2") {
		t.Errorf("Consul's keys under cnm/: %v: %s; want both hosts' entries", err, keys)
	}
}

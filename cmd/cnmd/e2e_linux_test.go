package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
)

// The end-to-end tests run the real binaries as a user would: cnmd inside a throwaway "host"
// namespace with temporary directories, cnmctl against its socket.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds cnmd and cnmctl once per test process and returns their directory.
func binaries(t testing.TB) (cnmd, cnmctl string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "cnm-e2e-bin")
		if buildErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg string }{{"cnmd", "."}, {"cnmctl", "../cnmctl"}} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "cnmd"), filepath.Join(binDir, "cnmctl")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is a cnmd process in a host namespace.
type daemon struct {
	host                  *netns.NS
	dataDir, runDir, sock string
	extra                 []string
	dir                   string // the working directory; "" is the test's
	cmd                   *exec.Cmd
	log                   *syncBuffer
	done                  chan error
}

func newDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{host: nstest.NewNS(t), dataDir: filepath.Join(dir, "data"), runDir: filepath.Join(dir, "run"), sock: filepath.Join(dir, "cnm.sock"), extra: extra}
	d.start(t)
	t.Cleanup(func() {
		if d.cmd != nil {
			// Whatever the test left: remove the sandboxes so no namespace stays mounted.
			if out, err := ctl(t, d.sock, "sandbox", "ls", "-q"); err == nil {
				for _, sb := range strings.Fields(out) {
					ctl(t, d.sock, "sandbox", "rm", "-f", sb)
				}
			}
			d.stop(t)
		}
	})
	return d
}

// args are cnmd's arguments for this daemon.
func (d *daemon) args() []string {
	return append([]string{"--host", "unix://" + d.sock, "--data-dir", d.dataDir, "--run-dir", d.runDir, "--log-level", "debug"}, d.extra...)
}

// start runs cnmd in the host namespace and waits until /health answers.
func (d *daemon) start(t testing.TB) {
	t.Helper()
	cnmd, _ := binaries(t)
	d.log = &syncBuffer{}
	d.cmd = exec.Command("nsenter", append([]string{"--net=" + d.host.Path(), "--", cnmd}, d.args()...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.Dir = d.dir
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan error, 1)
	go func() { d.done <- d.cmd.Wait() }()
	cl, err := client.New(client.Config{Host: "unix://" + d.sock})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := cl.Health(t.Context()); err == nil {
			return
		}
		select {
		case err := <-d.done:
			d.cmd = nil
			t.Fatalf("cnmd exited at start: %v\n%s", err, d.log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("cnmd did not answer in 30s:\n%s", d.log)
		}
	}
}

// stop sends SIGTERM and checks cnmd exits 0 and removes its socket.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("cnmd exited with %v after SIGTERM:\n%s", err, d.log)
		}
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		t.Fatalf("cnmd did not stop 30s after SIGTERM:\n%s", d.log)
	}
	d.cmd = nil
	if _, err := os.Stat(d.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s still there after SIGTERM: %v", d.sock, err)
	}
}

// ctl runs cnmctl against sock and returns its standard output; a failure's error holds the
// exit status and standard error.
func ctl(t testing.TB, sock string, args ...string) (string, error) {
	t.Helper()
	_, cnmctl := binaries(t)
	// Not t.Context(): cleanups (which remove what a test left) run after it is cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cnmctl, args...)
	cmd.Env = append(os.Environ(), "CNM_HOST=unix://"+sock)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("cnmctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// mustCtl is ctl that fails the test on error, returning the trimmed output.
func mustCtl(t testing.TB, sock string, args ...string) string {
	t.Helper()
	out, err := ctl(t, sock, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// ipOf returns the sandbox's address on network, through cnmctl's template.
func ipOf(t *testing.T, sock, sandbox, network string) string {
	t.Helper()
	ip := mustCtl(t, sock, "sandbox", "inspect", "--format", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), sandbox)
	if _, err := netip.ParseAddr(ip); err != nil {
		t.Fatalf("address of %s on %s = %q", sandbox, network, ip)
	}
	return ip
}

// pings reports whether from reaches ip, through cnmctl exec.
func pings(t *testing.T, sock, from, ip string) bool {
	t.Helper()
	_, err := ctl(t, sock, "exec", from, "--", "ping", "-n", "-q", "-c", "1", "-W", "1", ip)
	return err == nil
}

// TestPrivilegedCLIWalkthrough is the seed's walk-through, typed as Docker users type it:
// the default bridge with two sandboxes and inspect; disconnect; myNetwork and new_bridge;
// db on new_bridge and web on bridge cannot reach each other until web is connected to
// new_bridge; inspect templates; a network in use cannot be removed, then can. cnmd is
// restarted in the middle, and the state after is the same as before.
func TestPrivilegedCLIWalkthrough(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t)
	s := d.sock

	ls := mustCtl(t, s, "network", "ls")
	lines := strings.Split(ls, "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "NETWORK ID NAME DRIVER SCOPE" {
		t.Fatalf("network ls:\n%s", ls)
	}
	for i, want := range []string{"bridge bridge local", "host host local", "none null local"} {
		f := strings.Fields(lines[i+1])
		if len(f) != 4 || len(f[0]) != 12 || strings.Join(f[1:], " ") != want {
			t.Errorf("network ls line %d = %q, want a 12-character ID and %q", i+1, lines[i+1], want)
		}
	}

	mustCtl(t, s, "sandbox", "create", "alpine1")
	mustCtl(t, s, "sandbox", "create", "alpine2")
	var nets []api.NetworkInspect
	if err := json.Unmarshal([]byte(mustCtl(t, s, "network", "inspect", "bridge")), &nets); err != nil || len(nets) != 1 {
		t.Fatalf("network inspect bridge: %v, %d elements", err, len(nets))
	}
	br := nets[0]
	if len(br.Containers) != 2 || br.Options["com.docker.network.bridge.default_bridge"] != "true" || br.Options["com.docker.network.bridge.name"] != "cnm0" {
		t.Errorf("network inspect bridge = %+v: want alpine1 and alpine2 and Docker's default options", br)
	}
	ip2 := ipOf(t, s, "alpine2", "bridge")
	if !pings(t, s, "alpine1", ip2) {
		t.Errorf("alpine1 cannot ping alpine2 (%s) on the default bridge", ip2)
	}
	if got := mustCtl(t, s, "network", "inspect", "--format", "{{range $id, $c := .Containers}}{{$c.Name}} {{end}}", "bridge"); got != "alpine1 alpine2" {
		t.Errorf("containers on bridge = %q", got)
	}

	mustCtl(t, s, "network", "disconnect", "bridge", "alpine2")
	if got := mustCtl(t, s, "network", "inspect", "--format", "{{len .Containers}}", "bridge"); got != "1" {
		t.Errorf("bridge has %s containers after disconnect, want 1", got)
	}
	if got := mustCtl(t, s, "sandbox", "inspect", "--format", "{{len .NetworkSettings.Networks}}", "alpine2"); got != "0" {
		t.Errorf("alpine2 has %s networks after disconnect, want 0", got)
	}

	id := mustCtl(t, s, "network", "create", "-d", "bridge", "--subnet", "172.25.0.0/16", "--gateway", "172.25.0.1", "--label", "env=test", "myNetwork")
	if len(id) != 64 {
		t.Errorf("network create printed %q, want the ID", id)
	}
	mustCtl(t, s, "network", "create", "-d", "bridge", "new_bridge")
	mustCtl(t, s, "sandbox", "create", "--net", "new_bridge", "db")
	mustCtl(t, s, "sandbox", "create", "--net", "bridge", "web")
	dbIP := ipOf(t, s, "db", "new_bridge")
	if pings(t, s, "web", dbIP) {
		t.Errorf("web (bridge) pings db (%s, new_bridge): the networks are not isolated", dbIP)
	}

	// Restart in the middle: everything the CLI shows stays the same.
	snapshot := func() string {
		var b strings.Builder
		for _, args := range [][]string{
			{"network", "ls", "--no-trunc"}, {"sandbox", "ls"},
			{"network", "inspect", "bridge", "host", "none", "myNetwork", "new_bridge"},
			{"sandbox", "inspect", "alpine1", "alpine2", "db", "web"},
		} {
			b.WriteString(mustCtl(t, s, args...) + "\n")
		}
		return b.String()
	}
	before := snapshot()
	d.stop(t)
	d.start(t)
	if after := snapshot(); after != before {
		t.Errorf("state after a restart differs:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	mustCtl(t, s, "network", "connect", "--alias", "www", "new_bridge", "web")
	if !pings(t, s, "web", dbIP) {
		t.Errorf("web cannot ping db (%s) once connected to new_bridge", dbIP)
	}

	// The templates users already type.
	addrs := strings.Fields(mustCtl(t, s, "sandbox", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", "web"))
	if len(addrs) != 2 {
		t.Errorf("web's addresses = %v, want two", addrs)
	}
	var settings map[string]api.EndpointSettings
	if err := json.Unmarshal([]byte(mustCtl(t, s, "sandbox", "inspect", "--format", "{{json .NetworkSettings.Networks}}", "web")), &settings); err != nil {
		t.Fatal(err)
	}
	nb := settings["new_bridge"]
	if len(settings) != 2 || nb.IPPrefixLen != 16 || nb.Gateway == "" || nb.MacAddress == "" || nb.EndpointID == "" || nb.NetworkID == "" {
		t.Errorf("{{json .NetworkSettings.Networks}} = %+v", settings)
	}
	if got := mustCtl(t, s, "sandbox", "inspect", "-f", `{{join (index .NetworkSettings.Networks "new_bridge").Aliases ","}}`, "web"); got != "www" {
		t.Errorf("web's aliases on new_bridge = %q, want www", got)
	}
	if got := mustCtl(t, s, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{index .Labels \"env\"}}", "myNetwork"); got != "172.25.0.0/16 172.25.0.1 test" {
		t.Errorf("myNetwork's IPAM and label = %q", got)
	}
	if got := mustCtl(t, s, "network", "ls", "--filter", "label=env=test", "--format", "{{.Name}}"); got != "myNetwork" {
		t.Errorf("ls --filter label=env=test = %q", got)
	}
	if got := mustCtl(t, s, "network", "ls", "-q", "--filter", "driver=bridge", "--filter", "name=new"); len(got) != 12 {
		t.Errorf("ls -q --filter driver=bridge --filter name=new = %q, want one short ID", got)
	}

	// A network in use cannot be removed; the message names its endpoints.
	if _, err := ctl(t, s, "network", "rm", "new_bridge"); err == nil || !strings.Contains(err.Error(), "active endpoints") || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("network rm new_bridge in use: %v, want exit 1 with the server's message", err)
	}
	mustCtl(t, s, "sandbox", "rm", "db", "web")
	if got := mustCtl(t, s, "network", "rm", "new_bridge", "myNetwork"); got != "new_bridge\nmyNetwork" {
		t.Errorf("network rm printed %q", got)
	}
	if got := strings.Fields(mustCtl(t, s, "network", "ls", "-q")); len(got) != 3 {
		t.Errorf("networks left: %v, want bridge, host and none", got)
	}

	// Bad input: the server's message, exit 1, nothing made.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "create", "../x"}, `invalid network name "../x"`},
		{[]string{"network", "create", "--subnet", "10.9.0.1/24", "x"}, "host bits set"},
		{[]string{"network", "create", "-o", "com.docker.network.bridge.enable_icc=maybe", "x"}, "not a boolean"},
		{[]string{"sandbox", "create", "-p", "99999:80", "x"}, `invalid port "99999"`},
		{[]string{"sandbox", "inspect", "nosuch"}, `sandbox "nosuch" not found`},
	} {
		if _, err := ctl(t, s, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cnmctl %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if got := strings.Fields(mustCtl(t, s, "sandbox", "ls", "-q")); strings.Join(got, " ") != "alpine1 alpine2" {
		t.Errorf("sandboxes after bad input: %v", got)
	}
}

// TestPrivilegedCLIModes: --net none (loopback only), host (the host's interfaces) and
// container:NAME (another sandbox's namespace, removed with it by rm -f).
func TestPrivilegedCLIModes(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t)
	s := d.sock
	links := func(sb string) string {
		return mustCtl(t, s, "exec", sb, "--", "ip", "-o", "link", "show")
	}
	mustCtl(t, s, "sandbox", "create", "--net", "none", "lonely")
	if l := links("lonely"); strings.Count(l, "\n") != 0 || !strings.Contains(l, ": lo:") {
		t.Errorf("none mode links:\n%s\nwant lo only", l)
	}
	mustCtl(t, s, "sandbox", "create", "--net", "host", "hosty")
	if l := links("hosty"); !strings.Contains(l, ": cnm0:") {
		t.Errorf("host mode links lack the host's cnm0:\n%s", l)
	}
	if got := mustCtl(t, s, "sandbox", "inspect", "-f", "{{.Mode}}", "hosty"); got != "host" {
		t.Errorf("hosty mode %q", got)
	}
	mustCtl(t, s, "sandbox", "create", "main")
	mainIP := ipOf(t, s, "main", "bridge")
	mustCtl(t, s, "sandbox", "create", "--net", "container:main", "side")
	if a := mustCtl(t, s, "exec", "side", "--", "ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(a, mainIP+"/16") {
		t.Errorf("side (container:main) eth0: %q, want main's %s", a, mainIP)
	}
	if _, err := ctl(t, s, "sandbox", "rm", "main"); err == nil || !strings.Contains(err.Error(), "shared by sandbox") {
		t.Errorf("rm main shared by side: %v, want a conflict", err)
	}
	mustCtl(t, s, "sandbox", "rm", "-f", "main")
	if got := mustCtl(t, s, "sandbox", "ls", "-q"); strings.Join(strings.Fields(got), " ") != "hosty lonely" {
		t.Errorf("sandboxes after rm -f main: %q", got)
	}
	if _, err := ctl(t, s, "sandbox", "create", "--net", "none", "-p", "80", "x"); err == nil || !strings.Contains(err.Error(), "published only on a network") {
		t.Errorf("-p with --net none: %v", err)
	}
}

// TestPrivilegedCLIPorts: -p publishes a port that a TCP client on the host reaches; -P with
// --expose publishes on an ephemeral port.
func TestPrivilegedCLIPorts(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t)
	s := d.sock
	// A host address to reach the published ports at (loopback is not DNATed).
	for _, args := range [][]string{
		{"link", "add", "uplink0", "type", "veth", "peer", "name", "peer0"},
		{"addr", "add", "192.0.2.1/24", "dev", "uplink0"},
		{"link", "set", "uplink0", "up"},
	} {
		if out, err := nstest.Exec(d.host, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	mustCtl(t, s, "sandbox", "create", "-p", "8080:80", "-P", "--expose", "70", "web")
	var ports map[string][]api.PortMap
	if err := json.Unmarshal([]byte(mustCtl(t, s, "sandbox", "inspect", "-f", "{{json .NetworkSettings.Ports}}", "web")), &ports); err != nil {
		t.Fatal(err)
	}
	if p := ports["80/tcp"]; len(p) != 1 || p[0].HostPort != "8080" || p[0].HostIP != "0.0.0.0" {
		t.Errorf("80/tcp published as %v, want 0.0.0.0:8080", p)
	}
	var eph uint16
	if p := ports["70/tcp"]; len(p) != 1 {
		t.Fatalf("70/tcp published as %v, want one ephemeral port", p)
	} else if _, err := fmt.Sscan(p[0].HostPort, &eph); err != nil || eph < 49153 {
		t.Errorf("70/tcp on host port %q, want an ephemeral one", p[0].HostPort)
	}
	webIP := netip.MustParseAddr(ipOf(t, s, "web", "bridge"))
	key := mustCtl(t, s, "sandbox", "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web")
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for _, c := range []struct {
		ctr, host uint16
	}{{80, 8080}, {70, eph}} {
		var ln net.Listener
		if err := ns.Do(func() error {
			var err error
			ln, err = net.Listen("tcp4", netip.AddrPortFrom(webIP, c.ctr).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := exchange(d.host, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), c.host), ln); err != nil {
			t.Errorf("host to 192.0.2.1:%d (web's %d): %v", c.host, c.ctr, err)
		}
		ln.Close()
	}
}

// exchange dials to from the namespace from, sends "hello", and expects the listener ln
// (the other end) to read it and answer "world".
func exchange(from *netns.NS, to netip.AddrPort, ln net.Listener) error {
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", to.String(), 3*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
	srv, err := ln.Accept()
	if err != nil {
		return err
	}
	defer srv.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := srv.Read(buf); err != nil || string(buf) != "hello" {
		return fmt.Errorf("server read %q: %v", buf, err)
	}
	if _, err := srv.Write([]byte("world")); err != nil {
		return err
	}
	if _, err := c.Read(buf); err != nil || string(buf) != "world" {
		return fmt.Errorf("client read %q: %v", buf, err)
	}
	return nil
}

// TestPrivilegedCNMDLifecycle: the socket is mode 0660, owned by root and --group; a second
// cnmd on the same data dir refuses with a clear message and leaves the first serving; tcp:// without the TLS files is refused before
// anything is made.
func TestPrivilegedCNMDLifecycle(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t, "--group", "daemon")
	cnmd, _ := binaries(t)
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup("daemon")
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 || st.Uid != 0 || fmt.Sprint(st.Gid) != g.Gid {
		t.Errorf("socket %s: mode %v, owner %d:%d; want a socket of mode 0660 owned by root:daemon (0:%s)", d.sock, fi.Mode(), st.Uid, st.Gid, g.Gid)
	}
	out, err := exec.Command("nsenter", "--net="+d.host.Path(), "--", cnmd, "--host", "unix://"+d.sock+"2", "--data-dir", d.dataDir, "--run-dir", d.runDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is in use by another cnmd (pid") {
		t.Errorf("second cnmd on the data dir: %v: %s", err, out)
	}
	mustCtl(t, d.sock, "network", "ls")
	fresh := filepath.Join(t.TempDir(), "fresh")
	out, err = exec.Command(cnmd, "--host", "tcp://127.0.0.1:23760", "--data-dir", fresh).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "without mutual TLS") {
		t.Errorf("cnmd on tcp:// without TLS: %v: %s", err, out)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused start made its data dir: %v", err)
	}
}

// TestPrivilegedCNMDDrain: SIGTERM while creates are in flight and an event stream is open:
// cnmd ends the stream, lets the requests it took finish, and exits; after a restart the
// networks are exactly those whose create succeeded, and no request was half done.
func TestPrivilegedCNMDDrain(t *testing.T) {
	nstest.Privileged(t)
	d := newDaemon(t)
	cl, err := client.New(client.Config{Host: "unix://" + d.sock})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	streamDone := make(chan error, 1)
	go func() {
		streamDone <- cl.Events(context.Background(), func(api.Event) error { return nil })
	}()
	const n = 16
	type result struct {
		name string
		err  error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			name := fmt.Sprintf("drain%d", i)
			_, err := cl.NetworkCreate(context.Background(), api.NetworkCreate{Name: name})
			results <- result{name, err}
		}()
	}
	first := <-results
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	created := map[string]bool{}
	for _, r := range append([]result{first}, collect(results, n-1)...) {
		if r.err == nil {
			created[r.name] = true
		}
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("cnmd exited with %v:\n%s", err, d.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("cnmd did not exit after SIGTERM with a stream open:\n%s", d.log)
	}
	d.cmd = nil
	select {
	case <-streamDone:
	case <-time.After(5 * time.Second):
		t.Error("the event stream did not end when cnmd stopped")
	}
	t.Logf("%d of %d creates succeeded across the SIGTERM", len(created), n)
	if len(created) == 0 {
		t.Fatal("no create succeeded before SIGTERM")
	}
	d.start(t)
	got := map[string]bool{}
	for _, name := range strings.Fields(mustCtl(t, d.sock, "network", "ls", "--format", "{{.Name}}", "--filter", "name=drain")) {
		got[name] = true
	}
	if fmt.Sprint(got) != fmt.Sprint(created) {
		t.Errorf("networks after restart %v, want exactly the creates that succeeded %v", got, created)
	}
}

func collect[T any](ch <-chan T, n int) []T {
	out := make([]T, 0, n)
	for range n {
		out = append(out, <-ch)
	}
	return out
}

// TestPrivilegedCNMDGossip: --gossip-key-file starts the gossip plane: /health reports it with
// this member alive, and /metrics counts it and the key's age.
func TestPrivilegedCNMDGossip(t *testing.T) {
	nstest.Privileged(t)
	keyFile := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, "--gossip-key-file", keyFile, "--gossip-port", "17946", "--hostname", "node1", "--advertise-addr", "127.0.0.1")
	cl, err := client.New(client.Config{Host: "unix://" + d.sock})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	h, err := cl.Health(t.Context())
	if err != nil || h.Gossip != "ok" || h.GossipMembers != 1 || h.Store != "ok" || h.GlobalStore != "none" {
		t.Errorf("health = %+v, %v; want gossip ok with 1 member, store ok, no global store", h, err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.sock)
	}}}
	mustCtl(t, d.sock, "network", "ls")
	resp, err := hc.Get("http://cnmd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"cnm_gossip_members 1", "cnm_gossip_key_age_seconds", "cnm_networks 3", `cnm_api_requests_total{code="200",op="network.list"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	out, err := exec.Command("nsenter", "--net="+d.host.Path(), "--", "ss", "-lnu").CombinedOutput()
	if err != nil || !strings.Contains(string(out), ":17946") {
		t.Errorf("no gossip listener on UDP 17946 in cnmd's namespace: %v\n%s", err, out)
	}
}

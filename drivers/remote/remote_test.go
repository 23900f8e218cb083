package remote_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/drivers/remote"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/ipam"
)

const (
	nid = drivers.NetworkID("1111111111111111111111111111111111111111111111111111111111111111")
	eid = drivers.EndpointID("2222222222222222222222222222222222222222222222222222222222222222")
)

// hostSide is a Fake that also joins on the host side, as the bridge does.
type hostSide struct{ *driverstest.Fake }

func (h hostSide) JoinHostSide(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	res, err := h.Join(ctx, req)
	if err != nil {
		return res, err
	}
	return drivers.JoinResult{SrcName: req.IfName, Gateway: res.Gateway,
		StaticRoutes: []drivers.Route{{Destination: netip.MustParsePrefix("192.0.2.0/24"), NextHop: netip.MustParseAddr("10.9.0.254")}}}, nil
}

// serve serves h on dir/name.sock until the test ends.
func serve(t *testing.T, dir, name string, h http.Handler) {
	t.Helper()
	l, err := server.Listen(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(l) })
	t.Cleanup(func() {
		hs.Close()
		wg.Wait()
	})
}

// TestRoundTrip drives cnm's server (a fake driver and the default IPAM) through cnm's client:
// every call crosses a real Unix socket as JSON.
func TestRoundTrip(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	fake := driverstest.NewFake(drivers.Capabilities{})
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Driver: hostSide{fake}, IPAM: alloc})
	if err != nil {
		t.Fatal(err)
	}
	l, err := server.Listen(dir, "cnmtest")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(sctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	defer func() {
		stop()
		wg.Wait()
		if _, err := os.Stat(filepath.Join(dir, "cnmtest.sock")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Serve returned: %v", err)
		}
	}()

	cfg := remote.Config{Name: "cnmtest", SocketDirs: []string{dir}, SpecDirs: []string{}}
	d, err := remote.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := d.Capabilities(); got.DataScope != drivers.LocalScope || got.Sandbox != drivers.NamespaceSandbox {
		t.Errorf("Capabilities = %+v, want local scope, namespace sandbox", got)
	}
	a, err := remote.OpenIPAM(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	pool, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.9.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if pool.Subnet != netip.MustParsePrefix("10.9.0.0/24") {
		t.Errorf("pool subnet = %v", pool.Subnet)
	}
	gw, err := a.RequestAddress(ctx, pool.ID, netip.MustParseAddr("10.9.0.1"))
	if err != nil || gw != netip.MustParseAddr("10.9.0.1") {
		t.Fatalf("gateway = %v, %v", gw, err)
	}
	addr, err := a.RequestAddress(ctx, pool.ID, netip.Addr{})
	if err != nil || addr != netip.MustParseAddr("10.9.0.2") {
		t.Fatalf("dynamic address = %v, %v; want 10.9.0.2", addr, err)
	}
	if _, err := a.RequestAddress(ctx, pool.ID, addr); !errors.Is(err, drivers.ErrConflict) {
		t.Errorf("requesting a taken address: %v, want a conflict", err)
	}
	if _, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.9.0.0/25")}); !errors.Is(err, drivers.ErrConflict) {
		t.Errorf("an overlapping pool: %v, want a conflict", err)
	}

	opts, err := d.ParseNetworkOptions(map[string]string{"k": "v"})
	if err != nil || opts.DriverType() != "cnmtest" {
		t.Fatalf("ParseNetworkOptions = %v, %v", opts, err)
	}
	err = d.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "n", Options: opts,
		IPv4: []drivers.IPAMData{{Subnet: pool.Subnet, Gateway: gw}}})
	if !errors.Is(err, drivers.ErrInvalidParameter) {
		t.Errorf("CreateNetwork with options to a driver that takes none: %v, want invalid parameter", err)
	}
	if err := d.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "n",
		IPv4: []drivers.IPAMData{{Subnet: pool.Subnet, Gateway: gw}}}); err != nil {
		t.Fatal(err)
	}
	ip := netip.PrefixFrom(addr, 24)
	mac := net.HardwareAddr{2, 0x42, 10, 9, 0, 2}
	if _, err := d.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: ip, MAC: mac}); err != nil {
		t.Fatal(err)
	}
	res, err := d.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/run/netns/x", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	want := drivers.JoinResult{SrcName: "cnm" + string(eid)[:12], Gateway: gw,
		StaticRoutes: []drivers.Route{{Destination: netip.MustParsePrefix("192.0.2.0/24"), NextHop: netip.MustParseAddr("10.9.0.254")}}}
	if res.SrcName != want.SrcName || res.Gateway != want.Gateway || !slices.Equal(res.StaticRoutes, want.StaticRoutes) || res.InterfaceInSandbox || res.NoInterface {
		t.Errorf("Join = %+v, want %+v", res, want)
	}
	info, err := d.EndpointOperInfo(ctx, nid, eid)
	if err != nil || info["Address"] != ip.String() || info["MacAddress"] != mac.String() {
		t.Errorf("EndpointOperInfo = %v, %v", info, err)
	}
	if err := d.DiscoverNew(ctx, remote.Node{Address: "192.0.2.7", Self: false}); err != nil {
		t.Errorf("DiscoverNew: %v", err)
	}
	if err := d.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Errorf("DeleteNetwork twice: %v", err)
	}
	for _, a2 := range []netip.Addr{addr, gw} {
		if err := a.ReleaseAddress(ctx, pool.ID, a2); err != nil {
			t.Error(err)
		}
	}
	if err := a.ReleasePool(ctx, pool.ID); err != nil {
		t.Error(err)
	}
	if err := a.ReleasePool(ctx, pool.ID); err != nil {
		t.Errorf("ReleasePool twice: %v", err)
	}

	var got []string
	for _, c := range fake.Calls() {
		got = append(got, strings.Fields(c)[0])
	}
	wantCalls := []string{"Capabilities", "CreateNetwork", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint", "DeleteNetwork", "DeleteNetwork"}
	if !slices.Equal(got, wantCalls) {
		t.Errorf("driver calls = %q\nwant %q\n(full: %q)", got, wantCalls, fake.Calls())
	}
	if c := fake.Calls(); len(c) < 3 || !strings.Contains(c[2], "mac="+mac.String()) {
		t.Errorf("CreateEndpoint reached the driver as %q, want the MAC", c[2])
	}
	// The pool is free again.
	if p, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.9.0.0/24")}); err != nil {
		t.Errorf("pool not freed: %v", err)
	} else if err := a.ReleasePool(ctx, p.ID); err != nil {
		t.Error(err)
	}
}

// plugin serves a fake plugin answering method with the handler given for it, and 404 for
// any other.
func plugin(t *testing.T, implements []string, methods map[string]http.HandlerFunc) remote.Config {
	t.Helper()
	dir := t.TempDir()
	serve(t, dir, "fake", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := strings.TrimPrefix(r.URL.Path, "/")
		if r.Header.Get("Accept") != wire.MediaType {
			t.Errorf("%s: Accept %q, want %q", m, r.Header.Get("Accept"), wire.MediaType)
		}
		if m == wire.Activate {
			json.NewEncoder(w).Encode(wire.Manifest{Implements: implements})
			return
		}
		if h := methods[m]; h != nil {
			h(w, r)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(wire.ErrorResponse{Err: "no method " + m})
	}))
	return remote.Config{Name: "fake", SocketDirs: []string{dir}, SpecDirs: []string{}}
}

func answer(status int, v any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
}

var localCaps = answer(200, wire.CapabilitiesResponse{Scope: "local"})

// TestPluginErrors checks how the plugin's errors reach cnm: typed, converging deletes, the
// optional methods optional, and a Join rolled back when its answer is bad.
func TestPluginErrors(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	var left int
	cfg := plugin(t, []string{wire.NetworkDriver}, map[string]http.HandlerFunc{
		wire.NetworkGetCapabilities: answer(200, wire.CapabilitiesResponse{Scope: "global"}),
		wire.NetworkCreateNetwork:   answer(500, wire.ErrorResponse{Err: "invalid option foo"}),
		wire.NetworkDeleteNetwork:   answer(200, wire.Response{Err: "network 1111 not found"}),
		wire.NetworkDeleteEndpoint:  answer(500, wire.ErrorResponse{Err: "endpoint is busy"}),
		wire.NetworkCreateEndpoint:  answer(200, wire.CreateEndpointResponse{Interface: &wire.EndpointInterface{Address: "10.0.0.99/24"}}),
		wire.NetworkJoin:            answer(200, wire.JoinResponse{InterfaceName: &wire.InterfaceName{SrcName: "tap/bad"}}),
		wire.NetworkLeave: func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			left++
			mu.Unlock()
			json.NewEncoder(w).Encode(wire.Response{})
		},
	})
	d, err := remote.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := d.Capabilities().DataScope; got != drivers.GlobalScope {
		t.Errorf("scope %v, want global", got)
	}
	err = d.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid})
	var pe *remote.PluginError
	if !errors.Is(err, drivers.ErrInvalidParameter) || !errors.As(err, &pe) || pe.Status != 500 || pe.Msg != "invalid option foo" || pe.Method != wire.NetworkCreateNetwork {
		t.Errorf("CreateNetwork: %v (%+v), want the plugin's invalid-parameter error", err, pe)
	}
	if err := d.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Errorf("DeleteNetwork of a network the plugin does not know: %v, want nil", err)
	}
	_, err = d.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.0.0.2/24")})
	if !errors.Is(err, drivers.ErrNotSupported) || !strings.Contains(err.Error(), "endpoint is busy") {
		t.Errorf("CreateEndpoint with a changed address: %v, want not supported and the failed rollback", err)
	}
	_, err = d.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"})
	if !errors.Is(err, drivers.ErrInvalidParameter) {
		t.Errorf("Join naming a bad interface: %v, want invalid parameter", err)
	}
	mu.Lock()
	if left != 1 {
		t.Errorf("Leave sent %d times after the bad Join, want 1 (rollback)", left)
	}
	mu.Unlock()
	if err := d.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Errorf("Leave with a plugin without RevokeExternalConnectivity: %v", err)
	}
	if _, err := d.EndpointOperInfo(ctx, nid, eid); !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("EndpointOperInfo of a plugin without it: %v, want not supported (404)", err)
	}
	if err := d.DiscoverNew(ctx, remote.Node{Address: "192.0.2.1"}); err != nil {
		t.Errorf("DiscoverNew of a plugin without it: %v, want nil", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	_, err := remote.Open(ctx, remote.Config{Name: "missing", SocketDirs: []string{dir}, SpecDirs: []string{dir}})
	if !errors.Is(err, drivers.ErrNotFound) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing plugin: %v, want not found naming it", err)
	}
	ipamOnly := plugin(t, []string{wire.IpamDriver}, nil)
	if _, err := remote.Open(ctx, ipamOnly); !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("an IPAM plugin as a network driver: %v, want not supported", err)
	}
	badScope := plugin(t, []string{wire.NetworkDriver}, map[string]http.HandlerFunc{wire.NetworkGetCapabilities: answer(200, wire.CapabilitiesResponse{Scope: "galaxy"})})
	if _, err := remote.Open(ctx, badScope); !errors.Is(err, drivers.ErrInvalidParameter) {
		t.Errorf("a plugin of scope galaxy: %v, want invalid parameter", err)
	}
	malformed := plugin(t, []string{wire.NetworkDriver}, map[string]http.HandlerFunc{wire.NetworkGetCapabilities: func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{not json")) }})
	if _, err := remote.Open(ctx, malformed); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("a malformed answer: %v, want unavailable", err)
	}
	// A socket nobody listens on: a stale file left by a crashed plugin.
	l, err := net.Listen("unix", filepath.Join(dir, "dead.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := remote.Open(ctx, remote.Config{Name: "dead", SocketDirs: []string{dir}, SpecDirs: []string{}}); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("a dead socket: %v, want unavailable", err)
	}
	// A plugin that does not answer in time.
	release := make(chan struct{})
	slow := plugin(t, []string{wire.NetworkDriver}, map[string]http.HandlerFunc{wire.NetworkGetCapabilities: func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}})
	defer close(release)
	slow.Timeout = 50 * time.Millisecond
	start := time.Now()
	_, err = remote.Open(ctx, slow)
	if !errors.Is(err, drivers.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a slow plugin: %v, want unavailable, deadline exceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("timeout took %v", el)
	}
}

func TestDiscover(t *testing.T) {
	socks, specs, specs2 := t.TempDir(), t.TempDir(), t.TempDir()
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(specs, "a.spec"), "unix:///run/a.sock\n")
	write(filepath.Join(specs, "b", "b.json"), `{"Name":"b","Addr":"tcp://127.0.0.1:9999"}`)
	write(filepath.Join(specs, "tls.json"), `{"Name":"tls","Addr":"tcp://127.0.0.1:1","TLSConfig":{"CAFile":"/x"}}`)
	write(filepath.Join(specs, "bad.spec"), "no-scheme")
	write(filepath.Join(specs2, "a.spec"), "unix:///second.sock")
	write(filepath.Join(specs2, "c.spec"), "unix:///c.sock")
	l, err := net.Listen("unix", filepath.Join(socks, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dirs := []string{specs, specs2}
	for _, tc := range []struct {
		name, want string
		err        error
	}{
		{"a", "unix://" + filepath.Join(socks, "a.sock"), nil}, // the socket wins over the spec
		{"b", "tcp://127.0.0.1:9999", nil},
		{"c", "unix:///c.sock", nil},
		{"tls", "", drivers.ErrNotSupported},
		{"bad", "", drivers.ErrInvalidParameter},
		{"none", "", drivers.ErrNotFound},
		{"../a", "", drivers.ErrInvalidParameter},
	} {
		got, err := remote.Discover(tc.name, []string{socks}, dirs)
		if got != tc.want || (tc.err == nil) != (err == nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
			t.Errorf("Discover(%q) = %q, %v; want %q, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if got, err := remote.Discover("a", []string{}, dirs); got != "unix:///run/a.sock" || err != nil {
		t.Errorf("Discover(a) without sockets = %q, %v; want the first spec directory's", got, err)
	}
}

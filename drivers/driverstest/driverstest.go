// Package driverstest checks that a network driver keeps the [drivers.Driver] contract, and
// holds [Fake], a driver that records its calls for tests of the layers above.
//
// Every driver's tests call [Run] (the precedent is testing/fstest.TestFS):
//
//	func TestConformance(t *testing.T) {
//		driverstest.Run(t, driverstest.Harness{
//			New: func(t *testing.T) drivers.Driver { return null.New() },
//		})
//	}
//
// A driver that touches the kernel runs it from a privileged test, with the driver's "host"
// namespace and the sandboxes all made by internal/nstest.
package driverstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

// Harness tells [Run] how to make and use the driver under test.
type Harness struct {
	// New returns a fresh driver. It is called once per subtest; Run closes the driver at the
	// end of the subtest when it implements [drivers.Closer].
	New func(t *testing.T) drivers.Driver
	// Options, when not nil, is passed in every CreateNetworkRequest. It must suit several
	// networks at once (a fixed bridge name does not).
	Options drivers.NetworkOptions
	// IPv4 is the IPAM data of every network, for drivers whose Capabilities do not say NoIPAM
	// (for example subnet 10.123.0.0/24, gateway 10.123.0.1). Run gives endpoints the first
	// address of the first subnet that is neither the subnet's own address nor the gateway.
	IPv4 []drivers.IPAMData
	// Sandbox, when not nil, returns a fresh sandbox for a Join: the path of a network
	// namespace and an open descriptor of it, both valid until the end of the test. When it is
	// nil, Join gets SandboxKey "" and NetnsFD -1, and the join checks are skipped for a driver
	// whose endpoints join a namespace sandbox ([drivers.NamespaceSandbox]).
	Sandbox func(t *testing.T) (key string, fd int)
}

// Run runs the conformance checks against the driver made by h.New, each as a subtest:
//   - the capabilities are valid;
//   - creating a network twice with the same request returns nil both times (converges);
//   - an endpoint goes through CreateEndpoint, Join, Leave, Leave again, DeleteEndpoint and
//     DeleteEndpoint again, each returning nil, and Join's result sets exactly one of
//     InterfaceInSandbox, SrcName and NoInterface (NoInterface for a driver whose sandbox
//     kind is not [drivers.NamespaceSandbox]), with gateways of the right family;
//   - deleting a network twice, and deleting an unknown network, return nil;
//   - CreateEndpoint and Join on an unknown network fail with an error matching
//     cnm.ErrNotFound;
//   - five networks can be created (and deleted) concurrently;
//   - when the driver is a [drivers.OptionParser]: nil labels parse, unknown labels are refused
//     with an error matching cnm.ErrInvalidParameter, and h.Options survive Labels and
//     ParseNetworkOptions unchanged.
//
// Each subtest deletes the networks it made. Run uses t.Context() for its calls.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("driverstest: Harness.New is nil")
	}
	t.Run("Capabilities", func(t *testing.T) {
		r := newRunner(t, h)
		caps := r.d.Capabilities()
		if s := caps.DataScope; s != 0 && s != drivers.LocalScope && s != drivers.GlobalScope {
			t.Errorf("Capabilities().DataScope = %v, want 0, local or global", s)
		}
		if s := caps.ConnectivityScope; s != 0 && s != drivers.LocalScope && s != drivers.GlobalScope {
			t.Errorf("Capabilities().ConnectivityScope = %v, want 0, local or global", s)
		}
		switch caps.Sandbox {
		case drivers.NamespaceSandbox, drivers.HostSandbox, drivers.IsolatedSandbox:
		default:
			t.Errorf("Capabilities().Sandbox = %d, want a known SandboxKind", caps.Sandbox)
		}
		if !caps.NoIPAM && len(h.IPv4) == 0 {
			t.Errorf("the driver needs IPAM (NoIPAM is false) but Harness.IPv4 is empty")
		}
	})
	t.Run("CreateNetworkConverges", func(t *testing.T) {
		r := newRunner(t, h)
		req := r.networkRequest(t)
		for i := range 2 {
			if err := r.d.CreateNetwork(t.Context(), req); err != nil {
				t.Fatalf("CreateNetwork (call %d): %v", i+1, err)
			}
		}
		r.deleteNetwork(t, req.NetworkID)
	})
	t.Run("EndpointLifecycle", func(t *testing.T) {
		r := newRunner(t, h)
		r.endpointLifecycle(t)
	})
	t.Run("DeleteNetworkTwice", func(t *testing.T) {
		r := newRunner(t, h)
		req := r.networkRequest(t)
		if err := r.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatalf("CreateNetwork: %v", err)
		}
		for i := range 2 {
			if err := r.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
				t.Fatalf("DeleteNetwork (call %d): %v", i+1, err)
			}
		}
	})
	t.Run("DeleteUnknownNetwork", func(t *testing.T) {
		r := newRunner(t, h)
		if err := r.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: NewNetworkID()}); err != nil {
			t.Fatalf("DeleteNetwork of an unknown network: %v, want nil", err)
		}
	})
	t.Run("UnknownNetwork", func(t *testing.T) {
		r := newRunner(t, h)
		nid, eid := NewNetworkID(), NewEndpointID()
		_, err := r.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{
			NetworkID: nid, EndpointID: eid, IPv4: r.endpointAddr(),
		})
		if !errors.Is(err, errclass.ErrNotFound) {
			t.Errorf("CreateEndpoint on an unknown network: %v, want an error matching ErrNotFound", err)
		}
		key, fd := r.sandbox(t)
		_, err = r.d.Join(t.Context(), drivers.JoinRequest{
			NetworkID: nid, EndpointID: eid, SandboxKey: key, NetnsFD: fd, IfName: "eth0",
			MAC: testMAC, IPv4: r.endpointAddr(),
		})
		if !errors.Is(err, errclass.ErrNotFound) {
			t.Errorf("Join on an unknown network: %v, want an error matching ErrNotFound", err)
		}
	})
	t.Run("ConcurrentCreateNetwork", func(t *testing.T) {
		r := newRunner(t, h)
		const n = 5
		reqs := make([]drivers.CreateNetworkRequest, n)
		for i := range reqs {
			reqs[i] = r.networkRequest(t)
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range reqs {
			wg.Go(func() { errs[i] = r.d.CreateNetwork(t.Context(), reqs[i]) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("CreateNetwork %d of %d: %v", i+1, n, err)
			}
		}
		for i := range reqs {
			wg.Go(func() {
				errs[i] = r.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: reqs[i].NetworkID})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("DeleteNetwork %d of %d: %v", i+1, n, err)
			}
		}
	})
	t.Run("OptionParser", func(t *testing.T) {
		r := newRunner(t, h)
		p, ok := r.d.(drivers.OptionParser)
		if !ok {
			t.Skip("the driver takes no options")
		}
		if _, err := p.ParseNetworkOptions(nil); err != nil {
			t.Errorf("ParseNetworkOptions(nil): %v, want the defaults", err)
		}
		const bad = "com.example.driverstest.unknown"
		if _, err := p.ParseNetworkOptions(map[string]string{bad: "1"}); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParseNetworkOptions with unknown key %q: %v, want an error matching ErrInvalidParameter", bad, err)
		}
		if h.Options == nil {
			return
		}
		got, err := p.ParseNetworkOptions(h.Options.Labels())
		if err != nil {
			t.Fatalf("ParseNetworkOptions(Harness.Options.Labels()): %v", err)
		}
		if got.DriverType() != h.Options.DriverType() {
			t.Errorf("parsed options are for driver type %q, want %q", got.DriverType(), h.Options.DriverType())
		}
		if g, w := fmt.Sprint(got.Labels()), fmt.Sprint(h.Options.Labels()); g != w {
			t.Errorf("labels after a round trip = %s, want %s", g, w)
		}
	})
}

type runner struct {
	h    Harness
	d    drivers.Driver
	caps drivers.Capabilities
}

func newRunner(t *testing.T, h Harness) *runner {
	t.Helper()
	d := h.New(t)
	if d == nil {
		t.Fatal("driverstest: Harness.New returned nil")
	}
	if c, ok := d.(drivers.Closer); ok {
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	return &runner{h: h, d: d, caps: d.Capabilities()}
}

// networkRequest returns a request for a new network, and deletes the network (ignoring the
// error, which the subtests check themselves) when t ends.
func (r *runner) networkRequest(t *testing.T) drivers.CreateNetworkRequest {
	t.Helper()
	req := drivers.CreateNetworkRequest{
		NetworkID: NewNetworkID(),
		Name:      "driverstest",
		Options:   r.h.Options,
	}
	if !r.caps.NoIPAM {
		req.IPv4 = r.h.IPv4
	}
	t.Cleanup(func() {
		_ = r.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID})
	})
	return req
}

func (r *runner) deleteNetwork(t *testing.T, id drivers.NetworkID) {
	t.Helper()
	if err := r.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: id}); err != nil {
		t.Errorf("DeleteNetwork: %v", err)
	}
}

// endpointAddr returns the endpoint address for the harness's first IPv4 subnet, or the zero
// prefix for drivers without IPAM.
func (r *runner) endpointAddr() netip.Prefix {
	if r.caps.NoIPAM || len(r.h.IPv4) == 0 {
		return netip.Prefix{}
	}
	s := r.h.IPv4[0]
	for a := s.Subnet.Masked().Addr().Next(); a.IsValid() && s.Subnet.Contains(a); a = a.Next() {
		if a != s.Gateway {
			return netip.PrefixFrom(a, s.Subnet.Bits())
		}
	}
	return netip.Prefix{}
}

func (r *runner) sandbox(t *testing.T) (string, int) {
	if r.h.Sandbox == nil {
		return "", -1
	}
	return r.h.Sandbox(t)
}

var testMAC = net.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}

func (r *runner) endpointLifecycle(t *testing.T) {
	ctx := t.Context()
	nreq := r.networkRequest(t)
	if err := r.d.CreateNetwork(ctx, nreq); err != nil {
		t.Fatalf("CreateNetwork: %v", err)
	}
	nid, eid := nreq.NetworkID, NewEndpointID()
	ereq := drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: r.endpointAddr()}
	res, err := r.d.CreateEndpoint(ctx, ereq)
	if err != nil {
		t.Fatalf("CreateEndpoint: %v", err)
	}
	mac := testMAC
	if res.MAC != nil {
		if len(res.MAC) != 6 || res.MAC[0]&1 != 0 {
			t.Errorf("CreateEndpoint returned MAC %v, want a 6-byte unicast address", res.MAC)
		} else {
			mac = res.MAC
		}
	}

	if r.h.Sandbox != nil || r.caps.Sandbox != drivers.NamespaceSandbox {
		key, fd := r.sandbox(t)
		jreq := drivers.JoinRequest{
			NetworkID: nid, EndpointID: eid, SandboxKey: key, NetnsFD: fd,
			IfName: "eth0", MAC: mac, IPv4: ereq.IPv4,
		}
		jres, err := r.d.Join(ctx, jreq)
		if err != nil {
			t.Fatalf("Join: %v", err)
		}
		checkJoinResult(t, r.caps, jres)
		lreq := drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: key, IfName: "eth0"}
		for i := range 2 {
			if err := r.d.Leave(ctx, lreq); err != nil {
				t.Fatalf("Leave (call %d): %v", i+1, err)
			}
		}
	} else {
		t.Log("Harness.Sandbox is nil: Join and Leave not checked")
	}

	for i := range 2 {
		if err := r.d.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Fatalf("DeleteEndpoint (call %d): %v", i+1, err)
		}
	}
	r.deleteNetwork(t, nid)
}

func checkJoinResult(t *testing.T, caps drivers.Capabilities, res drivers.JoinResult) {
	t.Helper()
	n := 0
	for _, b := range []bool{res.InterfaceInSandbox, res.SrcName != "", res.NoInterface} {
		if b {
			n++
		}
	}
	if n != 1 {
		t.Errorf("Join result %+v: want exactly one of InterfaceInSandbox, SrcName and NoInterface", res)
	}
	if caps.Sandbox != drivers.NamespaceSandbox && !res.NoInterface {
		t.Errorf("Join result %+v: a driver whose sandbox kind is %d plumbs no interface: want NoInterface", res, caps.Sandbox)
	}
	if res.Gateway.IsValid() && !res.Gateway.Is4() {
		t.Errorf("Join result Gateway = %v, want an IPv4 address", res.Gateway)
	}
	if res.GatewayIPv6.IsValid() && !res.GatewayIPv6.Is6() {
		t.Errorf("Join result GatewayIPv6 = %v, want an IPv6 address", res.GatewayIPv6)
	}
}

// NewNetworkID returns a random network ID: 64 lowercase hex characters.
func NewNetworkID() drivers.NetworkID { return drivers.NetworkID(randomHex()) }

// NewEndpointID returns a random endpoint ID: 64 lowercase hex characters.
func NewEndpointID() drivers.EndpointID { return drivers.EndpointID(randomHex()) }

func randomHex() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand docs)
	return hex.EncodeToString(b[:])
}

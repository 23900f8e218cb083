// Package epobj is the implementation of endpoint.Endpoint, internal to the module.
//
// The network makes an Ep (New) once it created the endpoint's record, or read it back on a
// restart. The endpoint's record in the store holds its addresses and, while joined, the
// sandbox and interface name: it is the only copy of those facts, from which IPAM and the
// sandboxes are rebuilt after a restart. The exported methods beyond endpoint.Endpoint
// (Record, Rewrite, LeaveGone, Remove, ReleaseAddresses, Restore, Forget) are for the network,
// the cluster and the Controller: an orchestrator holds an endpoint.Endpoint and cannot name
// this package, so it cannot call them.
//
// Every operation that changes an endpoint's record is published, once committed, to the
// Controller's event stream (Config.Publish, package events).
//
// Every method is safe for concurrent use. Join and Leave of one endpoint are serialized; an
// endpoint busy with one refuses the other with an error matching cnm.ErrConflict.
package epobj

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/sandbox"
)

// Record is an endpoint as kept in the store, under Key(networkID, id).
type Record struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	NetworkID string       `json:"network_id"`
	MAC       string       `json:"mac,omitempty"`
	IPv4      netip.Prefix `json:"ipv4,omitzero"`
	IPv6      netip.Prefix `json:"ipv6,omitzero"`
	Created   time.Time    `json:"created"`
	// Host is the host that owns the endpoint, on a global-scope network (whose endpoint
	// records every host sees): when that host leaves the cluster for good, a survivor
	// reclaims its addresses. Empty on a local-scope network.
	Host string `json:"host,omitempty"`
	// Connected marks an endpoint made by Controller.Connect (create and join in one): it
	// lives as long as its join, so a restart that finds its interface gone deletes it.
	Connected bool `json:"connected,omitempty"`
	// Ports are the published ports as the driver bound them; a restart asks the driver to
	// bind them again.
	Ports []drivers.PortBinding `json:"ports,omitempty"`
	// Aliases are the endpoint's extra names on its network (--alias).
	Aliases []string `json:"aliases,omitempty"`
	// WantIfName is the interface name asked for in the sandbox ("" lets the sandbox pick).
	WantIfName string `json:"want_ifname,omitempty"`
	// While joined:
	SandboxID   string          `json:"sandbox_id,omitempty"`
	IfName      string          `json:"ifname,omitempty"`
	Gateway     netip.Addr      `json:"gateway,omitzero"`
	GatewayIPv6 netip.Addr      `json:"gateway_ipv6,omitzero"`
	Routes      []sandbox.Route `json:"routes,omitempty"`
	JoinSeq     uint64          `json:"join_seq,omitempty"` // orders the interfaces of a sandbox
	// GatewayService marks a join whose driver asked for a way out (JoinResult.NeedGateway):
	// the sandbox holds a gateway-network attachment on its behalf.
	GatewayService bool `json:"gateway_service,omitempty"`
}

// GatewayService connects sandboxes to a network that gives them a way out, on behalf of the
// endpoints whose driver asks for one. The Controller implements it.
type GatewayService interface {
	// Attach makes sure sandbox sb has a way out, claimed by endpoint epID, with ports
	// published on it (those of an endpoint whose driver has Capabilities.GatewayPorts), and
	// returns them as bound. Attaching twice for one endpoint is one claim.
	Attach(ctx context.Context, sb sandbox.Sandbox, epID string, ports []drivers.PortBinding) ([]drivers.PortBinding, error)
	// Detach drops epID's claim on sandbox sbID's way out; the way out goes with the last claim.
	Detach(ctx context.Context, sbID, epID string) error
}

// KeyPrefix is the store prefix of every endpoint record.
const KeyPrefix = "cnm/v1/endpoints/"

// Key returns the store key of an endpoint record.
func Key(networkID, id string) string { return KeyPrefix + networkID + "/" + id }

// Config is what an endpoint needs from its network. All fields are required except IPAM and
// pools (nil and zero for drivers without IPAM), OnDelete, Publish, NetworkName and Logger.
type Config struct {
	Driver     drivers.Driver
	DriverName string
	Caps       drivers.Capabilities
	Store      kvstore.Store
	IPAM       ipam.Allocator
	PoolV4     ipam.PoolID
	PoolV6     ipam.PoolID
	// Gateway and GatewayIPv6 are the gateways the network offers (zero for none): what Join
	// expects its driver to return, so that it can commit the join record before asking.
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	// GatewayService gives the sandbox a way out when the driver's Join asks for one
	// (JoinResult.NeedGateway). Nil: such a join fails with an error matching ErrNotSupported.
	GatewayService GatewayService
	// OnDelete is called once the endpoint is deleted, to drop it from its network.
	OnDelete func(id string)
	// NetworkName is the name of the endpoint's network, for its events.
	NetworkName string
	// Publish, when set, is given the endpoint's events once each operation is committed to
	// the store: events.EndpointJoined, EndpointLeft and EndpointDeleted, and EndpointCreated
	// when a Join writes the endpoint's first record (see netobj.Net.CreateEndpointForJoin).
	// It is called while the endpoint is busy, so the events of one endpoint are published in
	// the order of its operations. It must not block.
	Publish func(events.Event)
	// CreateRecord, when set, writes the endpoint's first record (b, under key) in place of a
	// create-only Store.AtomicPut: the network's Records fence it against the network's
	// deletion (netobj.Records.CreateEndpoint). A Join of an endpoint without a record yet
	// (Controller.Connect) writes it so, beside its kernel work.
	CreateRecord func(ctx context.Context, key string, b []byte) (uint64, error)
	// InlineCommit says that Store commits in less time than a goroutine takes to start
	// and run beside the kernel work (a store without fsync on a tmpfs, such as the
	// Controller's run store): Join then commits its record before its kernel work instead of
	// beside it, which on a busy machine saves the goroutine's wake-up and the two competing
	// for the CPUs.
	InlineCommit bool
	// Republish, when set, writes the global copy of the endpoint's record again (Rewrite),
	// the record's own copy being in Store (netobj.WriteBehind); its revision stays.
	Republish func(ctx context.Context, key string, b []byte) error
	// Seq returns a number larger than any it returned before; it orders joins.
	Seq    func() uint64
	Logger *slog.Logger
	// Begin, when set, is called first by Join, Leave and Delete, after their arguments are
	// checked: an error refuses the operation before it touches anything (the Controller's
	// is one matching cnm.ErrUnavailable once it is closing or closed); otherwise the
	// operation calls end when it returns (the Controller's Close waits for that).
	Begin func() (end func(), err error)
}

// Ep is the implementation of Endpoint.
type Ep struct {
	cfg Config
	id  string // immutable
	nid string // immutable

	mu       sync.Mutex // guards following
	rec      Record
	revision uint64
	busy     bool // a Join, Leave or Delete is running
	deleted  bool
	sb       sandbox.Sandbox // the joined sandbox, when rec.SandboxID != ""
}

var _ endpoint.Endpoint = (*Ep)(nil)

// New returns the endpoint for rec, stored at revision rev. The network calls it after it
// created the record (or read it back on restart).
func New(cfg Config, rec Record, rev uint64) *Ep {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Ep{cfg: cfg, id: rec.ID, nid: rec.NetworkID, rec: rec, revision: rev}
}

// ID implements Endpoint.
func (e *Ep) ID() string { return e.id }

// NetworkID implements Endpoint.
func (e *Ep) NetworkID() string { return e.nid }

// Name implements Endpoint.
func (e *Ep) Name() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rec.Name
}

// Info implements Endpoint.
func (e *Ep) Info() endpoint.Info {
	e.mu.Lock()
	defer e.mu.Unlock()
	return infoOf(e.rec)
}

// Rewrite writes the endpoint's record again, create-only, after it vanished from the store
// (on a global network, other hosts reclaimed it while this host's registration had lapsed),
// and adopts the new revision. The caller has taken the addresses back from IPAM.
func (e *Ep) Rewrite(ctx context.Context) error {
	e.mu.Lock()
	if err := e.beginLocked("rewrite"); err != nil {
		e.mu.Unlock()
		return err
	}
	rec := e.rec
	e.mu.Unlock()
	defer e.end()
	if e.cfg.Republish != nil {
		b, err := json.Marshal(rec)
		if err == nil {
			err = e.cfg.Republish(ctx, Key(rec.NetworkID, rec.ID), b)
		}
		if err != nil {
			return fmt.Errorf("endpoint %s: rewrite record: %w", rec.Name, err)
		}
		return nil
	}
	rev, err := e.store(ctx, rec, 0)
	if err != nil {
		return fmt.Errorf("endpoint %s: rewrite record: %w", rec.Name, err)
	}
	e.mu.Lock()
	e.revision = rev
	e.mu.Unlock()
	return nil
}

// Scope returns the data scope of the endpoint's network: where its record lives.
func (e *Ep) Scope() drivers.Scope { return e.cfg.Caps.DataScope }

// Store returns the store that holds the endpoint's record: the global store for an endpoint
// of a global-scope network, else the local one.
func (e *Ep) Store() kvstore.Store { return e.cfg.Store }

// Record returns a copy of the endpoint's record.
func (e *Ep) Record() Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rec
	r.Routes = append([]sandbox.Route(nil), r.Routes...)
	r.Ports = slices.Clone(r.Ports)
	r.Aliases = slices.Clone(r.Aliases)
	return r
}

// publish gives cfg.Publish an event of kind about rec, with sandboxID.
func (e *Ep) publish(kind events.Kind, rec Record, sandboxID string) {
	if e.cfg.Publish == nil {
		return
	}
	e.cfg.Publish(events.Event{
		Kind: kind, NetworkID: rec.NetworkID, Network: e.cfg.NetworkName,
		EndpointID: rec.ID, Endpoint: rec.Name, IPv4: rec.IPv4, IPv6: rec.IPv6, SandboxID: sandboxID,
	})
}

func infoOf(r Record) endpoint.Info {
	mac, _ := net.ParseMAC(r.MAC)
	return endpoint.Info{
		ID: r.ID, Name: r.Name, NetworkID: r.NetworkID, MAC: mac,
		IPv4: r.IPv4, IPv6: r.IPv6, SandboxID: r.SandboxID, IfName: r.IfName,
		Gateway: r.Gateway, GatewayIPv6: r.GatewayIPv6, Ports: slices.Clone(r.Ports),
		Aliases: slices.Clone(r.Aliases),
	}
}

// begin marks the endpoint busy; the caller must call end.
func (e *Ep) beginLocked(op string) error {
	if e.deleted {
		return &errclass.NotFoundError{Kind: "endpoint", Name: e.rec.Name}
	}
	if e.busy {
		return &errclass.ConflictError{Kind: "endpoint", Name: e.rec.Name, Reason: op + ": another operation is in progress"}
	}
	e.busy = true
	return nil
}

// beginOp runs Config.Begin, if any: an error refuses the operation op, else the caller must
// call the returned func when done.
func (e *Ep) beginOp(op string) (func(), error) {
	if e.cfg.Begin == nil {
		return func() {}, nil
	}
	end, err := e.cfg.Begin()
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %s: %w", e.Name(), op, err)
	}
	return end, nil
}

func (e *Ep) end() {
	e.mu.Lock()
	e.busy = false
	e.mu.Unlock()
}

// checkSandbox refuses a sandbox the driver's endpoints cannot join.
func (e *Ep) checkSandbox(sb sandbox.Sandbox, name string) error {
	mode := sb.Mode()
	switch e.cfg.Caps.Sandbox {
	case drivers.HostSandbox:
		if mode != sandbox.ModeHost {
			return &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(), Reason: fmt.Sprintf("only a host-mode sandbox can join host network endpoint %q", name)}
		}
	default:
		if mode == sandbox.ModeHost {
			return &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(), Reason: fmt.Sprintf("a host-mode sandbox can join only the host network, not endpoint %q (driver %s)", name, e.cfg.DriverName)}
		}
		if mode == sandbox.ModeContainer {
			return &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(), Reason: "it shares another sandbox's namespace: connect that sandbox instead"}
		}
	}
	return nil
}

// Join implements Endpoint.
func (e *Ep) Join(ctx context.Context, sb sandbox.Sandbox) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("endpoint %s: join: %w", e.Name(), err)
	}
	if sb == nil {
		return errclass.Invalid("sandbox", "<nil>", "a sandbox is required")
	}
	endOp, err := e.beginOp("join")
	if err != nil {
		return err
	}
	defer endOp()
	e.mu.Lock()
	name := e.rec.Name
	if e.rec.SandboxID != "" {
		joined := e.rec.SandboxID
		e.mu.Unlock()
		if joined == sb.ID() {
			return nil
		}
		return &errclass.ConflictError{Kind: "endpoint", Name: name, Reason: fmt.Sprintf("already joined to sandbox %q", joined)}
	}
	if err := e.beginLocked("join"); err != nil {
		e.mu.Unlock()
		return err
	}
	rec := e.rec
	rev := e.revision
	e.mu.Unlock()
	defer e.end()

	if err := e.checkSandbox(sb, name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("endpoint %s: join %s: %w", name, sb.ID(), err)
	}
	rb := context.WithoutCancel(ctx)
	mac, _ := net.ParseMAC(rec.MAC)
	req := drivers.JoinRequest{
		NetworkID: drivers.NetworkID(rec.NetworkID), EndpointID: drivers.EndpointID(rec.ID),
		SandboxID: sb.ID(), Hostname: sb.Hostname(), Endpoint: rec.Name, Aliases: slices.Clone(rec.Aliases),
		SandboxKey: sb.Key(), NetnsFD: sb.NetnsFD(), MAC: mac, IPv4: rec.IPv4, IPv6: rec.IPv6,
	}
	var release func()
	if e.cfg.Caps.Sandbox == drivers.NamespaceSandbox {
		var err error
		req.IfName, release, err = sb.ReserveName(rec.WantIfName)
		if err != nil {
			return fmt.Errorf("endpoint %s: join %s: %w", name, sb.ID(), err)
		}
		defer release()
	}
	// The join record is committed while the kernel work runs: the fsync overlaps the netlink
	// calls (with Config.InlineCommit, a cheap commit is made first instead). It is written
	// with the gateways the network offers (Config.Gateway), which is what the driver returns
	// but for drivers that choose otherwise; then it is written again. A crash at any point is
	// repaired on restart: a record whose interface is missing is left, an interface without a
	// record is removed.
	old := rec
	rec.SandboxID = sb.ID()
	rec.IfName = req.IfName
	rec.Gateway, rec.GatewayIPv6, rec.Routes = e.cfg.Gateway, e.cfg.GatewayIPv6, nil
	if e.cfg.Seq != nil {
		rec.JoinSeq = e.cfg.Seq()
	}
	type stored struct {
		rev uint64
		err error
	}
	done := make(chan stored, 1)
	predicted := rec
	if e.cfg.InlineCommit {
		r, err := e.store(rb, predicted, rev)
		if err != nil {
			return fmt.Errorf("endpoint %s: join %s: store: %w", name, sb.ID(), err) // nothing made yet
		}
		done <- stored{r, nil}
	} else {
		go func() {
			r, err := e.store(rb, predicted, rev)
			done <- stored{r, err}
		}()
	}
	// undoRecord puts the record back as it was before the join, once its commit is done.
	undoRecord := func(st stored) error {
		if st.err != nil {
			return nil
		}
		if rev == 0 {
			return e.cfg.Store.Delete(rb, Key(rec.NetworkID, rec.ID))
		}
		_, err := e.store(rb, old, st.rev)
		return err
	}

	res, err := e.cfg.Driver.Join(ctx, req)
	if err != nil {
		return errors.Join(fmt.Errorf("endpoint %s: join %s: driver %s: %w", name, sb.ID(), e.cfg.DriverName, err), undoRecord(<-done))
	}
	leave := func() error {
		return e.cfg.Driver.Leave(rb, drivers.LeaveRequest{
			NetworkID: req.NetworkID, EndpointID: req.EndpointID, SandboxKey: req.SandboxKey, IfName: req.IfName,
		})
	}
	if !res.NoInterface && req.IfName == "" {
		return errors.Join(fmt.Errorf("endpoint %s: join %s: driver %s returned an interface for a sandbox kind without one", name, sb.ID(), e.cfg.DriverName), leave(), undoRecord(<-done))
	}
	var routes []sandbox.Route
	for _, r := range res.StaticRoutes {
		routes = append(routes, sandbox.Route{Destination: r.Destination, NextHop: r.NextHop})
	}
	rec.Gateway, rec.GatewayIPv6, rec.Routes = res.Gateway, res.GatewayIPv6, routes
	rec.GatewayService = res.NeedGateway
	var addErr error
	if res.NeedGateway && e.cfg.GatewayService == nil {
		addErr = &errclass.NotSupportedError{What: "a way out of the sandbox (the driver asks for a gateway service)"}
	}
	if !res.NoInterface && addErr == nil {
		addErr = sb.AddInterface(ctx, sandbox.InterfaceConfig{
			Name: req.IfName, InSandbox: res.InterfaceInSandbox, SrcName: res.SrcName, MAC: mac,
			IPv4: rec.IPv4, IPv6: rec.IPv6, Gateway: res.Gateway, GatewayIPv6: res.GatewayIPv6, Routes: routes,
		})
	}
	st := <-done
	if st.err == nil && addErr == nil && (rec.Gateway != predicted.Gateway || rec.GatewayIPv6 != predicted.GatewayIPv6 || len(routes) > 0 || rec.GatewayService) {
		st.rev, st.err = e.store(rb, rec, st.rev) // the driver chose other gateways or routes
	}
	removeIface := func() error {
		if res.NoInterface {
			return nil
		}
		return sb.RemoveInterface(rb, req.IfName)
	}
	switch {
	case addErr != nil:
		return errors.Join(fmt.Errorf("endpoint %s: join %s: %w", name, sb.ID(), addErr), leave(), undoRecord(st))
	case st.err != nil:
		return errors.Join(fmt.Errorf("endpoint %s: join %s: store: %w", name, sb.ID(), st.err), removeIface(), leave())
	}
	if rec.GatewayService {
		bound, err := e.cfg.GatewayService.Attach(ctx, sb, rec.ID, rec.Ports)
		if err != nil {
			return errors.Join(fmt.Errorf("endpoint %s: join %s: gateway service: %w", name, sb.ID(), err), removeIface(), leave(), undoRecord(st))
		}
		if len(rec.Ports) > 0 && !slices.Equal(bound, rec.Ports) {
			// Ports published through the gateway: the record says how they were bound
			// (ephemeral ports chosen, ranges split).
			rec.Ports = bound
			if st.rev, err = e.store(rb, rec, st.rev); err != nil {
				return errors.Join(fmt.Errorf("endpoint %s: join %s: store: %w", name, sb.ID(), err),
					e.cfg.GatewayService.Detach(rb, sb.ID(), rec.ID), removeIface(), leave())
			}
		}
	}
	e.mu.Lock()
	e.rec, e.revision, e.sb = rec, st.rev, sb
	e.mu.Unlock()
	if rev == 0 {
		e.publish(events.EndpointCreated, rec, "") // this join wrote its first record
	}
	e.publish(events.EndpointJoined, rec, sb.ID())
	return nil
}

func (e *Ep) store(ctx context.Context, rec Record, rev uint64) (uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	if rev == 0 && e.cfg.CreateRecord != nil {
		return e.cfg.CreateRecord(ctx, Key(rec.NetworkID, rec.ID), b)
	}
	return e.cfg.Store.AtomicPut(ctx, Key(rec.NetworkID, rec.ID), b, rev)
}

// Leave implements Endpoint.
func (e *Ep) Leave(ctx context.Context, sb sandbox.Sandbox) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("endpoint %s: leave: %w", e.Name(), err)
	}
	if sb == nil {
		return errclass.Invalid("sandbox", "<nil>", "a sandbox is required")
	}
	endOp, err := e.beginOp("leave")
	if err != nil {
		return err
	}
	defer endOp()
	return e.leave(ctx, sb.ID(), false)
}

// LeaveGone records that the endpoint's sandbox was removed (its namespace and the interfaces
// in it are gone) and tells the driver. The Controller calls it when it deletes a sandbox.
func (e *Ep) LeaveGone(ctx context.Context) error {
	e.mu.Lock()
	sbID := e.rec.SandboxID
	e.mu.Unlock()
	if sbID == "" {
		return nil
	}
	return e.leave(ctx, sbID, true)
}

func (e *Ep) leave(ctx context.Context, sbID string, gone bool) error {
	e.mu.Lock()
	name := e.rec.Name
	if e.rec.SandboxID != sbID || e.deleted {
		e.mu.Unlock()
		return nil
	}
	if err := e.beginLocked("leave"); err != nil {
		e.mu.Unlock()
		return err
	}
	rec, rev, sb := e.rec, e.revision, e.sb
	e.mu.Unlock()
	defer e.end()

	var errs []error
	if !gone && rec.IfName != "" && sb != nil {
		if err := sb.RemoveInterface(ctx, rec.IfName); err != nil {
			return fmt.Errorf("endpoint %s: leave %s: %w", name, sbID, err)
		}
	}
	if err := e.cfg.Driver.Leave(ctx, drivers.LeaveRequest{
		NetworkID: drivers.NetworkID(rec.NetworkID), EndpointID: drivers.EndpointID(rec.ID),
		SandboxKey: sandboxKey(sb), IfName: rec.IfName, SandboxGone: gone,
	}); err != nil {
		errs = append(errs, fmt.Errorf("driver %s: %w", e.cfg.DriverName, err))
	}
	claimed := rec.GatewayService
	rec.SandboxID, rec.IfName, rec.Gateway, rec.GatewayIPv6, rec.Routes, rec.JoinSeq, rec.GatewayService = "", "", netip.Addr{}, netip.Addr{}, nil, 0, false
	newRev, err := e.store(context.WithoutCancel(ctx), rec, rev)
	if err != nil {
		errs = append(errs, err)
	} else {
		e.mu.Lock()
		e.rec, e.revision, e.sb = rec, newRev, nil
		e.mu.Unlock()
		e.publish(events.EndpointLeft, rec, sbID)
	}
	if claimed && e.cfg.GatewayService != nil {
		// A sandbox that is gone took its gateway attachment with it: the claim only goes.
		if err := e.cfg.GatewayService.Detach(context.WithoutCancel(ctx), sbID, rec.ID); err != nil && !gone {
			errs = append(errs, fmt.Errorf("gateway service: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("endpoint %s: leave %s: %w", name, sbID, err)
	}
	return nil
}

func sandboxKey(sb sandbox.Sandbox) string {
	if sb == nil {
		return ""
	}
	return sb.Key()
}

// Delete implements Endpoint.
func (e *Ep) Delete(ctx context.Context) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("endpoint %s: delete: %w", e.Name(), err)
	}
	endOp, err := e.beginOp("delete")
	if err != nil {
		return err
	}
	defer endOp()
	e.mu.Lock()
	if e.deleted {
		e.mu.Unlock()
		return nil
	}
	name := e.rec.Name
	if e.rec.SandboxID != "" {
		sbID := e.rec.SandboxID
		e.mu.Unlock()
		return &errclass.ConflictError{Kind: "endpoint", Name: name, Reason: fmt.Sprintf("joined to sandbox %q: leave it first", sbID)}
	}
	if err := e.beginLocked("delete"); err != nil {
		e.mu.Unlock()
		return err
	}
	rec, rev := e.rec, e.revision
	e.mu.Unlock()
	defer e.end()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("endpoint %s: delete: %w", name, err)
	}
	if err := e.cfg.Driver.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{
		NetworkID: drivers.NetworkID(rec.NetworkID), EndpointID: drivers.EndpointID(rec.ID),
	}); err != nil {
		return fmt.Errorf("endpoint %s: delete: driver %s: %w", name, e.cfg.DriverName, err)
	}
	// The record is the lease: once it is gone the addresses are free.
	err = e.cfg.Store.AtomicDelete(ctx, Key(rec.NetworkID, rec.ID), rev)
	if err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
		return fmt.Errorf("endpoint %s: delete: %w", name, err)
	}
	e.mu.Lock()
	e.deleted = true
	e.mu.Unlock()
	e.ReleaseAddresses(context.WithoutCancel(ctx))
	if rev != 0 {
		// A record existed, so its creation was published; an endpoint that Connect created
		// and never stored (its Join failed) had none.
		e.publish(events.EndpointDeleted, rec, "")
	}
	if e.cfg.OnDelete != nil {
		e.cfg.OnDelete(e.id)
	}
	return nil
}

// BeginRemove starts ending an endpoint whose sandbox was removed (its interface went with the
// namespace), without touching the store. It claims the endpoint and returns the key of its
// record, for the caller to delete batched with others, and drive, which tells the driver the
// endpoint left and is deleted (Leave with SandboxGone, then DeleteEndpoint) and returns a
// finish function to call once the record is gone: it releases the addresses, publishes
// EndpointLeft and EndpointDeleted, and drops the endpoint from its network.
// Controller.DeleteSandbox deletes the records of a sandbox and its endpoints in one commit
// while the drivers work. The caller must call drive exactly once: until then the endpoint
// refuses other operations. A deleted endpoint returns "" and no drive.
func (e *Ep) BeginRemove() (key string, drive func(ctx context.Context) (finish func(), err error), err error) {
	e.mu.Lock()
	if e.deleted {
		e.mu.Unlock()
		return "", nil, nil
	}
	if err := e.beginLocked("remove"); err != nil {
		e.mu.Unlock()
		return "", nil, err
	}
	rec, rev := e.rec, e.revision
	e.mu.Unlock()
	drive = func(ctx context.Context) (func(), error) {
		defer e.end()
		return e.removeInDriver(ctx, rec, rev)
	}
	return Key(rec.NetworkID, rec.ID), drive, nil
}

// removeInDriver is BeginRemove's driver work for the endpoint as rec and rev describe it.
func (e *Ep) removeInDriver(ctx context.Context, rec Record, rev uint64) (finish func(), err error) {
	nid, eid := drivers.NetworkID(rec.NetworkID), drivers.EndpointID(rec.ID)
	var errs []error
	if rec.SandboxID != "" {
		if err := e.cfg.Driver.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, IfName: rec.IfName, SandboxGone: true}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := e.cfg.Driver.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("endpoint %s: remove: driver %s: %w", rec.Name, e.cfg.DriverName, err)
	}
	return func() {
		e.mu.Lock()
		e.deleted = true
		e.rec.SandboxID, e.sb = "", nil
		e.mu.Unlock()
		e.ReleaseAddresses(context.WithoutCancel(ctx))
		if rec.SandboxID != "" {
			e.publish(events.EndpointLeft, rec, rec.SandboxID)
		}
		if rev != 0 {
			e.publish(events.EndpointDeleted, rec, "")
		}
		if e.cfg.OnDelete != nil {
			e.cfg.OnDelete(e.id)
		}
	}, nil
}

// SandboxID returns the ID of the sandbox the endpoint is joined to, "" for none. Unlike
// Info it copies nothing.
func (e *Ep) SandboxID() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rec.SandboxID
}

// ReleaseAddresses gives the endpoint's addresses back to IPAM. Delete calls it; the network
// calls it to roll back an endpoint it could not create.
func (e *Ep) ReleaseAddresses(ctx context.Context) {
	if e.cfg.IPAM == nil {
		return
	}
	rec := e.Record()
	if rec.IPv4.IsValid() {
		if err := e.cfg.IPAM.ReleaseAddress(ctx, e.cfg.PoolV4, rec.IPv4.Addr()); err != nil {
			e.cfg.Logger.Warn("release address", "endpoint", rec.Name, "address", rec.IPv4.Addr(), "err", err)
		}
	}
	if rec.IPv6.IsValid() {
		if err := e.cfg.IPAM.ReleaseAddress(ctx, e.cfg.PoolV6, rec.IPv6.Addr()); err != nil {
			e.cfg.Logger.Warn("release address", "endpoint", rec.Name, "address", rec.IPv6.Addr(), "err", err)
		}
	}
}

// Restore re-attaches a restored endpoint to its sandbox object after a restart, without any
// kernel or store work.
func (e *Ep) Restore(sb sandbox.Sandbox) {
	e.mu.Lock()
	e.sb = sb
	e.mu.Unlock()
}

// Forget clears the join state of an endpoint whose interface was lost (found missing on
// restart), writes the record and tells the driver the sandbox side is gone.
func (e *Ep) Forget(ctx context.Context) error { return e.LeaveGone(ctx) }

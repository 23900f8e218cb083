// Package server serves cnmd's REST API (package api) over a cnm.Controller: the handler that
// cmd/cnmd listens with, and that a Go program embedding cnm (with drivers of its own, see
// examples/customdriver) can serve itself. Unlike package api it imports the core.
//
// Every versioned route decodes its body strictly (api.Decode: at most api.MaxBodyBytes, no
// unknown fields), checks names with api.CheckName before looking anything up (a path whose
// segments are "." or "..", or a name holding '/', is refused with 400 and touches nothing),
// and answers errors as an api.Error with the status of their class. /v1/events streams the
// Controller's events as newline-delimited JSON; /health reports the stores and the gossip
// plane; /metrics serves Prometheus metrics: requests by operation and status, their
// latencies, networks, endpoints, sandboxes, repairs, gossip members and the age of the
// gossip key.
//
// A Server is safe for concurrent use. Close ends the event streams (so that an
// http.Server's Shutdown, which waits for in-flight requests, does not wait for them) and
// stops the goroutine that follows the gossip keyring.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a Server.
type Config struct {
	// Controller is the Controller the API drives. Required; the Server does not close it.
	Controller *cnm.Controller
	// Logger receives a line per request at debug level (operation, status, duration) and
	// the failures with status 500 and up at error level. Nil discards them.
	Logger *slog.Logger
	// StoreCheck and GlobalStoreCheck, when set, are called by /health to see that the local
	// and the global store answer. Nil: the part is reported "none".
	StoreCheck       func(context.Context) error
	GlobalStoreCheck func(context.Context) error
	// Registry is where the metrics are registered; nil means a new registry with the Go and
	// process collectors, served on /metrics.
	Registry *prometheus.Registry
}

// Server is the API's handler.
type Server struct {
	c       *cnm.Controller
	log     *slog.Logger
	cfg     Config
	mux     *http.ServeMux
	reg     *prometheus.Registry
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec

	ctx    context.Context // ended by Close: event streams and the key watcher stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the key watcher

	mu        sync.Mutex // guards following
	keyChange time.Time  // when the gossip primary key last changed (or the Server started)
	primary   string
}

// New returns a Server for cfg.Controller.
func New(cfg Config) (*Server, error) {
	if cfg.Controller == nil {
		return nil, api.Invalid("controller", "<nil>", "a Controller is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{c: cfg.Controller, log: cfg.Logger, cfg: cfg, mux: http.NewServeMux(), reg: cfg.Registry, keyChange: time.Now()}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.registerMetrics(); err != nil {
		s.cancel()
		return nil, err
	}
	s.routes()
	s.watchKeys()
	return s, nil
}

// Close ends the event streams and stops the Server's goroutine. It does not close the
// Controller. Close is idempotent.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

// ServeHTTP implements http.Handler. A path with a "." or ".." segment (escaped or not) is
// refused with 400 before routing.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for seg := range strings.SplitSeq(r.URL.EscapedPath(), "/") {
		if low := strings.ToLower(seg); low == "." || low == ".." || strings.Contains(low, "%2e%2e") || low == "%2e" {
			s.fail(w, r, "path", api.Invalid("path", r.URL.EscapedPath(), "a path segment is '.' or '..'"))
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	v := "/" + api.Version
	s.route("GET "+v+"/networks", "network.list", s.networkList)
	s.route("POST "+v+"/networks", "network.create", s.networkCreate)
	s.route("POST "+v+"/networks/prune", "network.prune", s.networkPrune)
	s.route("GET "+v+"/networks/{name}", "network.inspect", s.networkInspect)
	s.route("DELETE "+v+"/networks/{name}", "network.remove", s.networkRemove)
	s.route("POST "+v+"/networks/{name}/connect", "network.connect", s.networkConnect)
	s.route("POST "+v+"/networks/{name}/disconnect", "network.disconnect", s.networkDisconnect)
	s.route("GET "+v+"/sandboxes", "sandbox.list", s.sandboxList)
	s.route("POST "+v+"/sandboxes", "sandbox.create", s.sandboxCreate)
	s.route("GET "+v+"/sandboxes/{name}", "sandbox.inspect", s.sandboxInspect)
	s.route("DELETE "+v+"/sandboxes/{name}", "sandbox.remove", s.sandboxRemove)
	s.mux.HandleFunc("GET "+v+"/events", s.events)
	s.mux.HandleFunc("GET /events", s.events) // the unversioned name, as /health and /metrics
	s.mux.HandleFunc("GET /health", s.health)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, "unknown", &api.Error{Message: fmt.Sprintf("no route %s %s (the API is under /%s)", r.Method, r.URL.Path, api.Version), Class: api.ClassNotFound, Status: http.StatusNotFound})
	})
}

// statusWriter records the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// route registers h for pattern as operation op: counted, timed and logged; an error h
// returns is written as an api.Error.
func (s *Server) route(pattern, op string, h func(http.ResponseWriter, *http.Request) error) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		if err := h(sw, r); err != nil {
			s.fail(sw, r, op, err)
		}
		d := time.Since(start)
		s.ops.WithLabelValues(op, fmt.Sprint(sw.status)).Inc()
		s.latency.WithLabelValues(op).Observe(d.Seconds())
		s.log.Debug("request", "op", op, "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", d)
	})
}

// fail writes err as an api.Error with its class's status.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, op string, err error) {
	e, ok := errors.AsType[*api.Error](err)
	if !ok {
		e = api.NewError(err)
	}
	if e.Status >= 500 {
		s.log.Error("request failed", "op", op, "path", r.URL.Path, "status", e.Status, "err", err)
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) // compact, as Docker's API answers; cnmctl indents
}

// pathName returns the {name} of the path, checked as a name of kind.
func pathName(r *http.Request, kind string) (string, error) {
	name := r.PathValue("name")
	return name, api.CheckName(kind, name)
}

func (s *Server) networkList(w http.ResponseWriter, r *http.Request) error {
	ins := s.c.InspectNetworks()
	out := make([]api.NetworkInspect, len(ins))
	for i, in := range ins {
		out[i] = NetworkInspect(in)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) networkInspect(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "network")
	if err != nil {
		return err
	}
	in, err := s.c.InspectNetwork(name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, NetworkInspect(in))
	return nil
}

// NetworkOptions returns the network options that req asks for (its subnets checked).
func NetworkOptions(req api.NetworkCreate) ([]network.Option, error) {
	subnets, err := req.Subnets()
	if err != nil {
		return nil, err
	}
	var opts []network.Option
	for _, sn := range subnets {
		opts = append(opts, network.WithSubnet(sn.Subnet))
		if sn.IPRange.IsValid() {
			opts = append(opts, network.WithIPRange(sn.IPRange))
		}
		if sn.Gateway.IsValid() {
			opts = append(opts, network.WithGateway(sn.Gateway))
		}
		for name, a := range sn.AuxAddresses {
			opts = append(opts, network.WithAuxAddress(name, a))
		}
	}
	if req.EnableIPv6 {
		opts = append(opts, network.WithIPv6())
	}
	if req.Internal {
		opts = append(opts, network.WithInternal())
	}
	if req.Attachable {
		opts = append(opts, network.WithAttachable())
	}
	if len(req.Labels) > 0 {
		opts = append(opts, network.WithLabels(req.Labels))
	}
	if len(req.Options) > 0 {
		opts = append(opts, network.WithDriverLabels(req.Options))
	}
	if req.IPAM != nil && req.IPAM.Driver != "" {
		opts = append(opts, network.WithIPAMDriver(req.IPAM.Driver))
	}
	return opts, nil
}

func (s *Server) networkCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.NetworkCreate
	if err := api.Decode(r.Body, &req); err != nil {
		return err
	}
	opts, err := NetworkOptions(req)
	if err != nil {
		return err
	}
	driver := req.Driver
	if driver == "" {
		driver = "bridge"
	}
	n, err := s.c.NewNetwork(r.Context(), req.Name, driver, opts...)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.NetworkCreated{ID: n.ID(), Name: n.Name()})
	return nil
}

func (s *Server) networkRemove(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "network")
	if err != nil {
		return err
	}
	if err := s.c.DeleteNetwork(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// predefined are the networks prune never removes.
var predefined = []string{cnm.DefaultNetwork, cnm.HostNetwork, cnm.NoneNetwork}

func (s *Server) networkPrune(w http.ResponseWriter, r *http.Request) error {
	out := api.PruneReport{NetworksDeleted: []string{}}
	for _, n := range s.c.Networks() {
		if slices.Contains(predefined, n.Name()) || len(n.Endpoints()) > 0 {
			continue
		}
		err := s.c.DeleteNetwork(r.Context(), n.ID())
		switch {
		case err == nil:
			out.NetworksDeleted = append(out.NetworksDeleted, n.Name())
		case errors.Is(err, cnm.ErrConflict), errors.Is(err, cnm.ErrNotFound):
			// An endpoint came, or another caller removed it, meanwhile.
		default:
			return err
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) networkConnect(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "network")
	if err != nil {
		return err
	}
	var req api.Connect
	if err := api.Decode(r.Body, &req); err != nil {
		return err
	}
	v4, v6, err := req.Addresses()
	if err != nil {
		return err
	}
	var opts []endpoint.Option
	if v4.IsValid() {
		opts = append(opts, endpoint.WithIPv4(v4))
	}
	if v6.IsValid() {
		opts = append(opts, endpoint.WithIPv6(v6))
	}
	if len(req.Aliases) > 0 {
		opts = append(opts, endpoint.WithAliases(req.Aliases...))
	}
	if req.IfName != "" {
		opts = append(opts, endpoint.WithIfName(req.IfName))
	}
	ep, err := s.c.Connect(r.Context(), name, req.Sandbox, opts...)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cnm.EndpointSettings(ep))
	return nil
}

func (s *Server) networkDisconnect(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "network")
	if err != nil {
		return err
	}
	var req api.Disconnect
	if err := api.Decode(r.Body, &req); err != nil {
		return err
	}
	if err := req.Check(); err != nil {
		return err
	}
	err = s.c.Disconnect(r.Context(), name, req.Sandbox)
	if err != nil && req.Force && errors.Is(err, cnm.ErrNotFound) {
		// -f: a sandbox that is gone or not connected is disconnected; the network must exist.
		if _, nerr := s.c.Network(name); nerr == nil {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) sandboxList(w http.ResponseWriter, r *http.Request) error {
	out := []api.SandboxInspect{}
	for _, sb := range s.c.Sandboxes() {
		in, err := s.c.InspectSandbox(sb.ID())
		if errors.Is(err, cnm.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		out = append(out, in)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) sandboxInspect(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "sandbox")
	if err != nil {
		return err
	}
	in, err := s.c.InspectSandbox(name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, in)
	return nil
}

// SandboxOptions returns the sandbox options and, for a sandbox joined to a network at
// creation, the network and the endpoint options that req asks for.
func SandboxOptions(req api.SandboxCreate) (opts []cnm.SandboxOption, net string, epOpts []endpoint.Option, err error) {
	spec, err := req.Spec()
	if err != nil {
		return nil, "", nil, err
	}
	switch spec.Mode {
	case api.ModeHost:
		opts = append(opts, cnm.HostMode())
		net = cnm.HostNetwork
	case api.ModeContainer:
		opts = append(opts, cnm.ContainerMode(spec.Target))
	case api.ModeNone:
		net = cnm.NoneNetwork
	default:
		net = spec.Target
	}
	if req.Hostname != "" {
		opts = append(opts, cnm.WithHostname(req.Hostname))
	}
	if req.Domainname != "" {
		opts = append(opts, cnm.WithDomainname(req.Domainname))
	}
	if len(spec.DNS) > 0 {
		opts = append(opts, cnm.WithDNS(spec.DNS...))
	}
	if len(req.DNSSearch) > 0 {
		opts = append(opts, cnm.WithDNSSearch(req.DNSSearch...))
	}
	if len(req.DNSOptions) > 0 {
		opts = append(opts, cnm.WithDNSOptions(req.DNSOptions...))
	}
	for _, h := range spec.ExtraHosts {
		opts = append(opts, cnm.WithExtraHost(h.Name, h.Addr))
	}
	if len(req.Ports) > 0 {
		epOpts = append(epOpts, endpoint.WithPorts(req.Ports...))
	}
	if req.PublishAll && len(req.Expose) > 0 {
		epOpts = append(epOpts, endpoint.WithPublishAll(req.Expose...))
	}
	if len(req.Aliases) > 0 {
		epOpts = append(epOpts, endpoint.WithAliases(req.Aliases...))
	}
	if req.Netns != "" {
		opts = append(opts, cnm.WithNetns(req.Netns))
	}
	if req.IfName != "" {
		epOpts = append(epOpts, endpoint.WithIfName(req.IfName))
	}
	return opts, net, epOpts, nil
}

func (s *Server) sandboxCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.SandboxCreate
	if err := api.Decode(r.Body, &req); err != nil {
		return err
	}
	opts, net, epOpts, err := SandboxOptions(req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := s.c.NewSandbox(ctx, req.Name, opts...); err != nil {
		return err
	}
	if net != "" {
		if _, err := s.c.Connect(ctx, net, req.Name, epOpts...); err != nil {
			return errors.Join(err, s.c.DeleteSandbox(context.WithoutCancel(ctx), req.Name))
		}
	}
	in, err := s.c.InspectSandbox(req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, in)
	return nil
}

// sandboxRemove removes a sandbox as docker rm does (its endpoints are disconnected and
// deleted). ?force=1 removes the sandboxes that share its namespace (container mode) first,
// which are otherwise a conflict.
func (s *Server) sandboxRemove(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "sandbox")
	if err != nil {
		return err
	}
	force := r.URL.Query().Get("force")
	if force != "" && force != "1" && force != "true" && force != "0" && force != "false" {
		return api.Invalid("force", force, "want 1, true, 0 or false")
	}
	if force == "1" || force == "true" {
		for _, sb := range s.c.Sandboxes() {
			in, err := s.c.InspectSandbox(sb.ID())
			if err == nil && in.Share == name {
				if err := s.c.DeleteSandbox(r.Context(), sb.ID()); err != nil && !errors.Is(err, cnm.ErrNotFound) {
					return err
				}
			}
		}
	}
	if err := s.c.DeleteSandbox(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// events streams the Controller's events as newline-delimited api.Event values until the
// client goes, the Controller closes, or the Server closes.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	ch := s.c.Events(ctx)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	for ev := range ch {
		if err := enc.Encode(api.EventOf(ev)); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	h := api.Health{Status: "ok", Store: "none", GlobalStore: "none", Gossip: "none"}
	check := func(f func(context.Context) error) string {
		if f == nil {
			return "none"
		}
		if err := f(ctx); err != nil {
			h.Status = "degraded"
			return err.Error()
		}
		return "ok"
	}
	h.Store = check(s.cfg.StoreCheck)
	h.GlobalStore = check(s.cfg.GlobalStoreCheck)
	if node := s.c.GossipNode(); node != nil {
		h.Gossip, h.GossipMembers = "ok", node.NumAlive()
		if h.GossipMembers < 1 {
			h.Gossip, h.Status = "no member alive", "degraded"
		}
	}
	status := http.StatusOK
	if h.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}

// NetworkInspect returns the wire form of a network's inspect.
func NetworkInspect(in network.Inspect) api.NetworkInspect {
	out := api.NetworkInspect{
		Name: in.Name, ID: in.ID, Created: in.Created, Scope: in.Scope, Driver: in.Driver, EnableIPv6: in.EnableIPv6,
		IPAM:     api.IPAM{Driver: in.IPAM.Driver, Options: in.IPAM.Options, Config: make([]api.IPAMConfig, len(in.IPAM.Config))},
		Internal: in.Internal, Attachable: in.Attachable, Options: in.Options, Labels: in.Labels,
		Containers: make(map[string]api.NetworkContainer, len(in.Containers)),
	}
	for i, c := range in.IPAM.Config {
		out.IPAM.Config[i] = api.IPAMConfig{Subnet: c.Subnet, IPRange: c.IPRange, Gateway: c.Gateway, AuxiliaryAddresses: c.AuxiliaryAddresses}
	}
	for id, c := range in.Containers {
		out.Containers[id] = api.NetworkContainer{Name: c.Name, EndpointID: c.EndpointID, MacAddress: c.MacAddress, IPv4Address: c.IPv4Address, IPv6Address: c.IPv6Address}
	}
	return out
}

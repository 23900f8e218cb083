// Package server serves a cnm network driver and an IPAM allocator to Docker (or any other
// client of Docker's plugin protocol) as a Docker network and IPAM plugin: HTTP POST of JSON
// on a Unix socket, the messages of package [github.com/cnmkit/cnm/drivers/remote/wire].
//
// A [Server] is an http.Handler. [Listen] makes the socket where Docker's discovery looks
// (/run/docker/plugins/NAME.sock), and [Server.Serve] serves it until its context ends. The
// command cnm-plugin serves the bridge driver and the default IPAM this way.
//
// # What it answers
//
// /Plugin.Activate lists NetworkDriver when a driver is served and IpamDriver when an
// allocator is. Every NetworkDriver and IpamDriver method of the protocol is answered:
// CreateNetwork, DeleteNetwork, CreateEndpoint, DeleteEndpoint, Join and Leave go to the
// driver; GetCapabilities reports its scope; EndpointOperInfo reports the endpoint's
// addresses and MAC; DiscoverNew, DiscoverDelete, ProgramExternalConnectivity and
// RevokeExternalConnectivity succeed and do nothing (cnm drivers publish ports and reach
// out through their own means). AllocateNetwork, FreeNetwork and GwAllocCheck, and any other
// path, are answered with status 404 and {"Err": "..."}, which Docker's client takes as a
// method the plugin does not have. A failed call is answered with status 500 and
// {"Err": "<the cnm error>"}; a body that is not the method's JSON, with status 400. No
// payload makes the server panic (FuzzServer).
//
// Join uses the driver's host-side path ([drivers.HostSideJoiner]): the interface is made in
// the host namespace, named "cnm" and the first 12 characters of the endpoint ID, and
// answered as InterfaceName{SrcName, DstPrefix}; Docker moves it into the sandbox and names
// it. A driver without that path cannot be joined through the protocol (the error matches
// cnm.ErrNotSupported).
//
// # State
//
// The server keeps the endpoints' addresses (from CreateEndpoint, which Join needs) and the
// pools' subnets in memory, as the driver and the allocator keep theirs: a restarted server
// starts empty, and Docker does not replay its networks to a remote plugin.
//
// A Server is safe for concurrent use.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/ipam"
)

// maxRequest bounds the size of a request body.
const maxRequest = 1 << 20

// DefaultDstPrefix is the interface name prefix Join answers when Config.DstPrefix is "".
const DefaultDstPrefix = "eth"

// Config says what a Server serves.
type Config struct {
	// Driver is the network driver to serve. Nil serves no NetworkDriver.
	Driver drivers.Driver
	// IPAM is the allocator to serve. Nil serves no IpamDriver.
	IPAM ipam.Allocator
	// DstPrefix is the prefix Join asks Docker to name the interface with (eth0, eth1...).
	// "" means DefaultDstPrefix.
	DstPrefix string
	// Logger receives the server's logs. Nil means none.
	Logger *slog.Logger
}

// Server answers Docker's plugin protocol for one driver and one allocator. Create one with
// [New].
type Server struct {
	drv    drivers.Driver
	parser drivers.OptionParser // nil when the driver takes no options
	joiner drivers.HostSideJoiner
	alloc  ipam.Allocator
	prefix string
	log    *slog.Logger

	mu        sync.Mutex // guards following
	endpoints map[drivers.EndpointID]*endpoint
	pools     map[ipam.PoolID]netip.Prefix
}

// endpoint is what CreateEndpoint told the server, for Join.
type endpoint struct {
	nid    drivers.NetworkID
	mac    []byte
	v4, v6 netip.Prefix
	ifName string // the host-side link of a joined endpoint; "" when not joined
}

// New returns a Server for cfg. It fails with an error matching cnm.ErrInvalidParameter when
// cfg serves nothing or DstPrefix is not the start of an interface name.
func New(cfg Config) (*Server, error) {
	if cfg.Driver == nil && cfg.IPAM == nil {
		return nil, fmt.Errorf("server: %w", drivers.Invalid("config", "{}", "neither a driver nor an IPAM to serve"))
	}
	prefix := cfg.DstPrefix
	if prefix == "" {
		prefix = DefaultDstPrefix
	}
	if err := drivers.CheckIfName("interface name prefix", prefix+"0"); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{drv: cfg.Driver, alloc: cfg.IPAM, prefix: prefix, log: cfg.Logger,
		endpoints: map[drivers.EndpointID]*endpoint{}, pools: map[ipam.PoolID]netip.Prefix{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.parser, _ = cfg.Driver.(drivers.OptionParser)
	s.joiner, _ = cfg.Driver.(drivers.HostSideJoiner)
	return s, nil
}

// Listen makes the Unix socket dir/name.sock (dir "" means /run/docker/plugins, where
// Docker's discovery looks first), replacing a stale socket left by a crash, readable and
// writable by its owner only.
func Listen(dir, name string) (net.Listener, error) {
	if dir == "" {
		dir = "/run/docker/plugins"
	}
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("server: %w", drivers.Invalid("plugin name", name, "want a non-empty name without '/'"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("server: plugin directory: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("server: %w", &drivers.ConflictError{Kind: "file", Name: path, Reason: "exists and is not a socket"})
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("server: %w", &drivers.ConflictError{Kind: "socket", Name: path, Reason: "another plugin serves it"})
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("server: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	return l, nil
}

// Serve answers requests on l until ctx ends, then stops accepting, waits up to 5 seconds for
// the calls in flight, and closes l (which removes a Unix socket). It returns nil after ctx
// ended, or the error that stopped it.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}()
	err := hs.Serve(l)
	close(done)
	<-stopped
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// httpError is an error with the status to answer it with.
type httpError struct {
	status int
	err    error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

// ServeHTTP answers one call of the protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := strings.TrimPrefix(r.URL.Path, "/")
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, wire.ErrorResponse{Err: "method " + r.Method + " not allowed: the plugin protocol uses POST"})
		return
	}
	h := s.handler(method)
	if h == nil {
		writeJSON(w, http.StatusNotFound, wire.ErrorResponse{Err: fmt.Sprintf("%s: not implemented by this plugin", method)})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	if err == nil && len(body) > maxRequest {
		err = fmt.Errorf("request larger than %d bytes", maxRequest)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, wire.ErrorResponse{Err: method + ": bad request: " + err.Error()})
		return
	}
	out, err := h(r.Context(), body)
	if err != nil {
		status := http.StatusInternalServerError
		var he *httpError
		if errors.As(err, &he) {
			status = he.status
		}
		s.log.InfoContext(r.Context(), "plugin call failed", "method", method, "err", err)
		writeJSON(w, status, wire.ErrorResponse{Err: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", wire.MediaType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

type handlerFunc func(ctx context.Context, body []byte) (any, error)

// decode reads body into v; an empty body leaves v zero.
func decode(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &httpError{http.StatusBadRequest, fmt.Errorf("bad request: %w", err)}
	}
	return nil
}

// handle returns the handler of a method that decodes its request into In.
func handle[In any](f func(context.Context, In) (any, error)) handlerFunc {
	return func(ctx context.Context, body []byte) (any, error) {
		var in In
		if err := decode(body, &in); err != nil {
			return nil, err
		}
		return f(ctx, in)
	}
}

func (s *Server) handler(method string) handlerFunc {
	if method == wire.Activate {
		return func(context.Context, []byte) (any, error) {
			m := wire.Manifest{Implements: []string{}}
			if s.drv != nil {
				m.Implements = append(m.Implements, wire.NetworkDriver)
			}
			if s.alloc != nil {
				m.Implements = append(m.Implements, wire.IpamDriver)
			}
			return m, nil
		}
	}
	if s.drv != nil {
		switch method {
		case wire.NetworkGetCapabilities:
			return func(context.Context, []byte) (any, error) { return s.capabilities(), nil }
		case wire.NetworkCreateNetwork:
			return handle(s.createNetwork)
		case wire.NetworkDeleteNetwork:
			return handle(s.deleteNetwork)
		case wire.NetworkCreateEndpoint:
			return handle(s.createEndpoint)
		case wire.NetworkDeleteEndpoint:
			return handle(s.deleteEndpoint)
		case wire.NetworkEndpointOperInfo:
			return handle(s.endpointInfo)
		case wire.NetworkJoin:
			return handle(s.join)
		case wire.NetworkLeave:
			return handle(s.leave)
		case wire.NetworkDiscoverNew, wire.NetworkDiscoverDelete,
			wire.NetworkProgramExternalConnectivity, wire.NetworkRevokeExternalConnectivity:
			return func(_ context.Context, body []byte) (any, error) {
				var in map[string]any
				if err := decode(body, &in); err != nil {
					return nil, err
				}
				return wire.Response{}, nil
			}
		}
	}
	if s.alloc != nil {
		switch method {
		case wire.IpamGetCapabilities:
			return func(context.Context, []byte) (any, error) { return wire.IPAMCapabilitiesResponse{}, nil }
		case wire.IpamGetDefaultAddressSpaces:
			return func(context.Context, []byte) (any, error) {
				return wire.AddressSpacesResponse{LocalDefaultAddressSpace: string(ipam.LocalSpace), GlobalDefaultAddressSpace: string(ipam.GlobalSpace)}, nil
			}
		case wire.IpamRequestPool:
			return handle(s.requestPool)
		case wire.IpamReleasePool:
			return handle(s.releasePool)
		case wire.IpamRequestAddress:
			return handle(s.requestAddress)
		case wire.IpamReleaseAddress:
			return handle(s.releaseAddress)
		}
	}
	return nil
}

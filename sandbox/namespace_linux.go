package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/sandbox/internal/iftable"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds every netlink request of a sandbox: the kernel can not cancel them,
// so a socket timeout is what keeps a call from hanging.
const netlinkTimeout = 10 * time.Second

// Namespace is the Linux implementation of [Sandbox]. Its methods are safe for concurrent use.
//
// Lock order: filesMu, then mu. hostMu and nlMu are taken alone. No lock is held across a
// netlink call, except hostMu and nlMu while their handles are being made (and the
// cnl.Conn's own, across each of its batches).
type Namespace struct {
	// Immutable after New or Open.
	id         string
	mode       Mode
	external   bool      // ModeNamespace on Config.Netns: the namespace is the caller's
	key        string    // the namespace path Key returns
	shareID    string    // ModeContainer: the ID of the shared sandbox
	ns         *netns.NS // the sandbox's namespace, open until Close or Delete
	conn       *cnl.Conn // in ns: link lookups by ioctl, the requests of New, AddInterface and RemoveInterface; ModeNamespace only
	hostNS     *netns.NS // the host namespace; SrcName links move from here. May be ns (ModeHost) or nil (ModeContainer)
	filesDir   string
	hostsPath  string
	resolvPath string
	hostname   string
	domainname string
	extraHosts []Host
	log        *slog.Logger

	// ops counts the AddInterface and RemoveInterface calls using the handles; Close and
	// Delete wait for them before they close the handles. Add is only called under mu with
	// closed false.
	ops sync.WaitGroup

	// filesMu serializes writes of the hosts file, so the last writer writes the newest state.
	filesMu sync.Mutex

	hostMu sync.Mutex      // guards following
	hostNL *netlink.Handle // netlink in hostNS, made on first use

	nlMu sync.Mutex      // guards following
	nlh  *netlink.Handle // netlink in ns for the rarer paths, made on first use (handle); ModeNamespace only

	mu       sync.Mutex            // guards following
	closed   bool                  // by Close or Delete: the handles are (being) closed
	deleted  bool                  // by Delete
	ifaces   iftable.Table[*iface] // configured interfaces in the order added, and the names' states
	gw4, gw6 string                // the interface providing the IPv4/IPv6 default route; "" for none
}

var _ Sandbox = (*Namespace)(nil)

// iface is a configured interface with its kernel index.
type iface struct {
	Interface
	index int
}

// New creates a sandbox as cfg describes: for ModeNamespace a new network namespace,
// bind-mounted at RunDir/netns/<ID>, with loopback up; for ModeHost the host namespace; for
// ModeContainer the namespace of cfg.Share. It then writes the hosts and resolv.conf files.
//
// New returns an [errclass.InvalidParameterError] for a bad cfg, an error matching
// [errclass.ErrAlreadyExists] when the bind mount path exists, and one matching
// [errclass.ErrNotFound] when cfg.Share's namespace no longer exists. On error nothing is
// left behind: no mount, no file and no directory that New made (RunDir/netns, shared by all
// sandboxes, may stay).
func New(ctx context.Context, cfg Config) (*Namespace, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := newNamespace(&cfg)
	if err := s.create(ctx, &cfg); err != nil {
		return nil, fmt.Errorf("sandbox %s: create: %w", cfg.ID, err)
	}
	s.log.Debug("sandbox created", "sandbox", s.id, "mode", s.mode, "key", s.key)
	return s, nil
}

func newNamespace(cfg *Config) *Namespace {
	s := &Namespace{
		id:         cfg.ID,
		mode:       cfg.Mode,
		external:   cfg.Netns != "",
		filesDir:   filepath.Clean(cfg.FilesDir),
		hostname:   cfg.Hostname,
		domainname: cfg.Domainname,
		extraHosts: slices.Clone(cfg.ExtraHosts),
		log:        cfg.Logger,
	}
	s.ifaces.Init(&s.mu)
	if s.hostname == "" {
		s.hostname = cfg.ID
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.hostsPath = filepath.Join(s.filesDir, hostsName)
	s.resolvPath = filepath.Join(s.filesDir, resolvName)
	return s
}

// create does New's work; on error it undoes what it did.
func (s *Namespace) create(ctx context.Context, cfg *Config) (err error) {
	resolv, err := resolvConfFor(cfg)
	if err != nil {
		return err
	}
	var undo []func() error
	defer func() {
		if err != nil {
			for _, f := range slices.Backward(undo) {
				err = errors.Join(err, f())
			}
		}
	}()
	undo = append(undo, s.closeHandles)

	if err := ctx.Err(); err != nil {
		return err
	}
	made, err := mkdirAllTracked(s.filesDir)
	if err != nil {
		return fmt.Errorf("create files dir: %w", err)
	}
	undo = append(undo, func() error {
		var errs []error
		for _, d := range slices.Backward(made) {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})

	if err := s.openNamespaces(cfg); err != nil {
		return err
	}
	if s.mode == ModeNamespace {
		path := s.key
		if s.external {
			ns, err := openExternal(s.id, path)
			if err != nil {
				return err
			}
			s.ns = ns
		} else {
			ns, err := netns.New(path)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("namespace %s: %w", path, &errclass.AlreadyExistsError{Kind: "sandbox", Name: s.id})
			}
			if err != nil {
				return err
			}
			s.ns = ns
			undo = append(undo, func() error { return netns.Remove(path) })
		}
		if err := s.openHandle(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// Loopback is always index 1 in a namespace (LOOPBACK_IFINDEX): one call. In a
		// caller's namespace too: the embedded DNS server listens there.
		if err := s.conn.Batch(cnl.LinkUpRequest(1))[0]; err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{s.resolvPath, resolv}, {s.hostsPath, s.hostsContent()}} {
		if _, err := os.Lstat(f.path); errors.Is(err, fs.ErrNotExist) {
			undo = append(undo, func() error { return removeIfExists(f.path) })
		}
		if err := writeFileInPlace(f.path, f.data); err != nil {
			return err
		}
	}
	return nil
}

// openNamespaces opens the host namespace and, for ModeHost and ModeContainer, sets the
// sandbox's namespace and key. For ModeNamespace it sets the key only.
func (s *Namespace) openNamespaces(cfg *Config) error {
	switch s.mode {
	case ModeNamespace:
		s.key = filepath.Join(cfg.RunDir, "netns", s.id)
		if cfg.Netns != "" {
			s.key = cfg.Netns
		}
		host, err := openHost(cfg.HostNetns)
		if err != nil {
			return err
		}
		s.hostNS = host
	case ModeHost:
		host, err := openHost(cfg.HostNetns)
		if err != nil {
			return err
		}
		s.ns, s.hostNS = host, host
		s.key = cfg.HostNetns
		if s.key == "" {
			// The calling thread's namespace has no lasting path of its own: the open
			// descriptor names it for as long as the sandbox lives.
			s.key = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), host.FD())
		}
	case ModeContainer:
		s.shareID = cfg.Share.ID()
		s.key = cfg.Share.Key()
		ns, err := netns.Open(s.key)
		if err != nil {
			return &errclass.NotFoundError{Kind: "sandbox", Name: s.shareID, Err: fmt.Errorf("shared namespace: %w", err)}
		}
		s.ns = ns
	}
	return nil
}

// openExternal opens the caller's namespace at path for sandbox id: a path that is not a
// network namespace is not found.
func openExternal(id, path string) (*netns.NS, error) {
	ns, err := netns.Open(path)
	if err != nil {
		return nil, &errclass.NotFoundError{Kind: "sandbox", Name: id, Err: fmt.Errorf("namespace %s: %w", path, err)}
	}
	return ns, nil
}

// openHost opens the host namespace at path, or the calling thread's when path is "".
func openHost(path string) (*netns.NS, error) {
	if path == "" {
		ns, err := netns.Current()
		if err != nil {
			return nil, fmt.Errorf("open host namespace: %w", err)
		}
		return ns, nil
	}
	ns, err := netns.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open host namespace: %w", err)
	}
	return ns, nil
}

// openHandle opens the sandbox's long-lived netlink socket, its cnl.Conn. The netlink library's
// handle, for the rarer paths, is made on first use (handle).
func (s *Namespace) openHandle() error {
	var c *cnl.Conn
	err := s.ns.Do(func() (err error) {
		c, err = cnl.OpenConn(netlinkTimeout)
		return err
	})
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", s.key, err)
	}
	s.conn = c
	return nil
}

// handle returns the netlink library's handle in the sandbox's namespace, making it on first
// use: restoring interfaces, a MAC to set, a link to move in, a lookup the ioctls can not
// answer.
func (s *Namespace) handle() (*netlink.Handle, error) {
	s.nlMu.Lock()
	defer s.nlMu.Unlock()
	if s.nlh == nil {
		h, err := newHandle(s.ns)
		if err != nil {
			return nil, fmt.Errorf("netlink handle in %s: %w", s.key, err)
		}
		s.nlh = h
	}
	return s.nlh, nil
}

// newHandle returns a route netlink handle in ns with the socket timeout set.
func newHandle(ns *netns.NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// hostHandle returns the netlink handle in the host namespace, making it on first use.
func (s *Namespace) hostHandle() (*netlink.Handle, error) {
	s.hostMu.Lock()
	defer s.hostMu.Unlock()
	if s.hostNL == nil {
		h, err := newHandle(s.hostNS)
		if err != nil {
			return nil, fmt.Errorf("netlink handle in host namespace: %w", err)
		}
		s.hostNL = h
	}
	return s.hostNL, nil
}

// closeHandles closes the netlink handles and namespace descriptors. It does not unmount.
func (s *Namespace) closeHandles() error {
	s.hostMu.Lock()
	if s.hostNL != nil {
		s.hostNL.Close()
		s.hostNL = nil
	}
	s.hostMu.Unlock()
	s.nlMu.Lock()
	if s.nlh != nil {
		s.nlh.Close()
		s.nlh = nil
	}
	s.nlMu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
	var errs []error
	if s.ns != nil {
		errs = append(errs, s.ns.Close())
	}
	if s.hostNS != nil && s.hostNS != s.ns {
		errs = append(errs, s.hostNS.Close())
	}
	return errors.Join(errs...)
}

// Open re-opens an existing sandbox after a restart: cfg must be the Config it was created
// with. For ModeNamespace the bind mount at RunDir/netns/<ID> must exist, else Open returns
// an error matching [errclass.ErrNotFound]. Open adopts ifaces, in the given order, as the
// configured interfaces; one whose link is no longer in the namespace is dropped, and its
// name is returned in dropped, in order. The first adopted interface with a gateway gets the
// default route (it is replaced, so one already there is kept). Open then rewrites the hosts
// and resolv.conf files. ModeHost and ModeContainer sandboxes have no interfaces: ifaces must
// be empty. On error Open leaves the sandbox as it found it, apart from the default routes.
func Open(ctx context.Context, cfg Config, ifaces []Interface) (sb *Namespace, dropped []string, err error) {
	if err := cfg.ValidateOpen(ifaces); err != nil {
		return nil, nil, err
	}
	s := newNamespace(&cfg)
	dropped, err = s.open(ctx, &cfg, ifaces)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: open: %w", cfg.ID, errors.Join(err, s.closeHandles()))
	}
	s.log.Debug("sandbox opened", "sandbox", s.id, "mode", s.mode, "interfaces", s.ifaces.Len(), "dropped", dropped)
	return s, dropped, nil
}

func (s *Namespace) open(ctx context.Context, cfg *Config, ifaces []Interface) ([]string, error) {
	resolv, err := resolvConfFor(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.openNamespaces(cfg); err != nil {
		return nil, err
	}
	var dropped []string
	if s.mode == ModeNamespace {
		if s.external {
			if s.ns, err = openExternal(s.id, s.key); err != nil {
				return nil, err
			}
		} else {
			if !netns.IsMounted(s.key) {
				return nil, &errclass.NotFoundError{Kind: "sandbox", Name: s.id, Err: fmt.Errorf("no namespace mounted at %s", s.key)}
			}
			if s.ns, err = netns.Open(s.key); err != nil {
				return nil, err
			}
		}
		if err := s.openHandle(); err != nil {
			return nil, err
		}
		var h *netlink.Handle
		if len(ifaces) > 0 {
			if h, err = s.handle(); err != nil {
				return nil, err
			}
		}
		for _, ifc := range ifaces {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			link, err := h.LinkByName(ifc.Name)
			if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
				s.log.Warn("sandbox interface gone: dropped", "sandbox", s.id, "interface", ifc.Name)
				dropped = append(dropped, ifc.Name)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("interface %s: %w", ifc.Name, err)
			}
			if !configured(h, link, ifc) {
				// A join cut short (a crash between the driver making the link and the sandbox
				// configuring it): the link goes, and the caller hears it was dropped.
				s.log.Warn("sandbox interface half-configured: removed", "sandbox", s.id, "interface", ifc.Name)
				if err := h.LinkDel(link); err != nil {
					return nil, fmt.Errorf("interface %s: remove half-configured link: %w", ifc.Name, err)
				}
				dropped = append(dropped, ifc.Name)
				continue
			}
			ifc = ifc.Clone()
			if len(ifc.MAC) == 0 {
				ifc.MAC = slices.Clone(link.Attrs().HardwareAddr)
			}
			s.ifaces.Add(ifc.Name, &iface{Interface: ifc, index: link.Attrs().Index})
		}
		if err := s.ensureDefaultRoutes(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(s.filesDir, 0o755); err != nil {
		return nil, fmt.Errorf("create files dir: %w", err)
	}
	if err := writeFileInPlace(s.resolvPath, resolv); err != nil {
		return nil, err
	}
	if err := writeFileInPlace(s.hostsPath, s.hostsContent()); err != nil {
		return nil, err
	}
	return dropped, nil
}

// configured reports whether link is up and holds the addresses ifc says it has.
func configured(h *netlink.Handle, link netlink.Link, ifc Interface) bool {
	if link.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	has := func(p netip.Prefix) bool {
		if !p.IsValid() {
			return true
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == p.Addr() {
				return true
			}
		}
		return false
	}
	return has(ifc.IPv4) && has(ifc.IPv6)
}

// ID returns the sandbox's ID.
func (s *Namespace) ID() string { return s.id }

// Mode returns how the sandbox gets its namespace.
func (s *Namespace) Mode() Mode { return s.mode }

// Key returns the path of the sandbox's network namespace: RunDir/netns/<ID> for
// ModeNamespace (Config.Netns for a caller's namespace); for ModeHost, Config.HostNetns or, when that was empty, /proc/<pid>/fd/<fd>
// of the descriptor the sandbox holds (valid until Delete); for ModeContainer, the shared
// sandbox's key.
func (s *Namespace) Key() string { return s.key }

// NetnsFD returns an open descriptor of the sandbox's namespace, valid until Delete.
func (s *Namespace) NetnsFD() int { return s.ns.FD() }

// HostsPath returns the path of the hosts file, FilesDir/hosts.
func (s *Namespace) HostsPath() string { return s.hostsPath }

// ResolvConfPath returns the path of the resolv.conf file, FilesDir/resolv.conf.
func (s *Namespace) ResolvConfPath() string { return s.resolvPath }

// Hostname returns the container's host name: Config.Hostname, or the ID when it was empty.
func (s *Namespace) Hostname() string { return s.hostname }

// Interfaces returns copies of the configured interfaces in the order they were added. The
// caller owns the slice.
func (s *Namespace) Interfaces() []Interface {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Interface, 0, s.ifaces.Len())
	for _, ifc := range s.ifaces.All() {
		out = append(out, ifc.Interface.Clone())
	}
	return out
}

// sharedErr is the error for adding interfaces to a sandbox without its own namespace.
func (s *Namespace) sharedErr() error {
	reason := "uses the host's network namespace: no interface can be added"
	if s.mode == ModeContainer {
		reason = fmt.Sprintf("shares the namespace of sandbox %q: connect %q instead", s.shareID, s.shareID)
	}
	return &errclass.ConflictError{Kind: "sandbox", Name: s.id, Reason: reason}
}

// closedErrLocked is the error for using a closed or deleted sandbox.
func (s *Namespace) closedErrLocked() error {
	why := "closed"
	if s.deleted {
		why = "deleted"
	}
	return &errclass.NotFoundError{Kind: "sandbox", Name: s.id, Err: errors.New(why)}
}

// ReserveName reserves the interface name want, or when want is "" the lowest name ethN,
// that is neither configured, being added or removed, nor reserved, and returns it with a
// function that releases the reservation. A want that is taken fails with an
// [errclass.AlreadyExistsError], a bad one with an [errclass.InvalidParameterError]. The release function may be called any number of times and from any
// goroutine; it does nothing once AddInterface has taken the name. ModeHost and
// ModeContainer sandboxes refuse with an [errclass.ConflictError]; a closed or deleted
// sandbox with an error matching [errclass.ErrNotFound].
func (s *Namespace) ReserveName(want string) (string, func(), error) {
	if s.mode != ModeNamespace {
		return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.id, s.sharedErr())
	}
	if want != "" {
		if err := validIfname("interface name", want); err != nil {
			return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.id, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.id, s.closedErrLocked())
	}
	name, release, err := s.ifaces.Reserve(want)
	if err != nil {
		return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.id, err)
	}
	return name, release, nil
}

// addState is what AddInterface has done so far, for its rollback.
type addState struct {
	inSandbox bool // the link is in the sandbox: delete it on rollback
	index     int  // its index in the sandbox, when known
	ownGW4    bool // this interface was given the IPv4 default route
	ownGW6    bool
}

// AddInterface configures an interface in a ModeNamespace sandbox, as InterfaceConfig
// describes: it moves, renames and sets the MAC of a SrcName link (an InSandbox link is
// used as it is), adds the addresses (IPv6 without duplicate address detection, so it is
// usable at once), sets the link up, adds the default routes when this is the first
// interface with a gateway, and the extra routes. Then it rewrites the hosts file.
//
// It refuses with an [errclass.ConflictError] in a ModeHost or ModeContainer sandbox, an
// [errclass.AlreadyExistsError] when the name is configured or being added or removed, and
// an [errclass.InvalidParameterError] for a bad cfg. Apart from a bad or busy name, any error
// deletes the link from the sandbox (when InSandbox, or once it was moved in) and leaves
// nothing else; the error names the sandbox and the interface. ctx is checked between
// netlink calls, which themselves can not be canceled.
func (s *Namespace) AddInterface(ctx context.Context, cfg InterfaceConfig) error {
	if err := s.addInterface(ctx, &cfg); err != nil {
		return fmt.Errorf("sandbox %s: add interface %s: %w", s.id, cfg.Name, err)
	}
	s.log.Debug("interface added", "sandbox", s.id, "interface", cfg.Name)
	return nil
}

func (s *Namespace) addInterface(ctx context.Context, cfg *InterfaceConfig) error {
	if s.mode != ModeNamespace {
		return s.sharedErr()
	}
	if err := validIfname("interface name", cfg.Name); err != nil {
		return err
	}
	verr := validateInterface(cfg)

	// Claim the name and, if free, the default routes.
	st := &addState{inSandbox: cfg.InSandbox}
	s.mu.Lock()
	if s.closed {
		defer s.mu.Unlock()
		return s.closedErrLocked()
	}
	if err := s.ifaces.Claim(cfg.Name); err != nil {
		s.mu.Unlock()
		return err
	}
	if verr == nil && cfg.Gateway.IsValid() && s.gw4 == "" {
		s.gw4, st.ownGW4 = cfg.Name, true
	}
	if verr == nil && cfg.GatewayIPv6.IsValid() && s.gw6 == "" {
		s.gw6, st.ownGW6 = cfg.Name, true
	}
	s.ops.Add(1)
	s.mu.Unlock()
	defer s.ops.Done()

	err := verr
	if err == nil {
		err = s.configure(ctx, cfg, st)
	}
	if err != nil {
		return errors.Join(err, s.rollbackAdd(cfg, st))
	}

	// Commit, then write the hosts file; if that fails, undo the whole interface.
	s.mu.Lock()
	ifc := &iface{Interface: Interface{
		Name:        cfg.Name,
		MAC:         cfg.MAC,
		IPv4:        cfg.IPv4,
		IPv6:        cfg.IPv6,
		Gateway:     cfg.Gateway,
		GatewayIPv6: cfg.GatewayIPv6,
		Routes:      maskedRoutes(cfg.Routes),
	}.Clone(), index: st.index}
	s.ifaces.Add(cfg.Name, ifc)
	s.mu.Unlock()
	if err := s.writeHosts(); err != nil {
		return errors.Join(fmt.Errorf("write hosts: %w", err), s.removeInterface(cfg.Name))
	}
	return nil
}

// configure makes the kernel calls of AddInterface. It records in st what needs undoing and
// sets cfg.MAC to the link's when it was empty.
func (s *Namespace) configure(ctx context.Context, cfg *InterfaceConfig, st *addState) error {
	var link netlink.Link
	var err error
	if cfg.InSandbox {
		if link, err = s.linkInSandbox(cfg.Name); err != nil {
			if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
				st.inSandbox = false // not there: nothing to delete
			}
			return fmt.Errorf("find link: %w", err)
		}
		st.index = link.Attrs().Index
	} else {
		if link, err = s.moveIn(ctx, cfg, st); err != nil {
			return err
		}
	}
	if len(cfg.MAC) == 0 {
		cfg.MAC = slices.Clone(link.Attrs().HardwareAddr)
	} else if !slices.Equal(link.Attrs().HardwareAddr, cfg.MAC) {
		h, err := s.handle()
		if err != nil {
			return err
		}
		if err := h.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return fmt.Errorf("set mac %s: %w", cfg.MAC, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The addresses, link up, the default routes and the extra routes in one message: the
	// kernel handles them in order.
	var reqs []*cnl.Request
	var what []string
	if cfg.IPv4.IsValid() {
		reqs = append(reqs, cnl.AddrRequest(st.index, cfg.IPv4, 0))
		what = append(what, "add address "+cfg.IPv4.String())
	}
	if cfg.IPv6.IsValid() {
		reqs = append(reqs, cnl.AddrRequest(st.index, cfg.IPv6, unix.IFA_F_NODAD))
		what = append(what, "add address "+cfg.IPv6.String())
	}
	reqs = append(reqs, cnl.LinkUpRequest(st.index))
	what = append(what, "set link up")
	if st.ownGW4 {
		reqs = append(reqs, defaultRoute(st.index, cfg.Gateway))
		what = append(what, "add default route via "+cfg.Gateway.String())
	}
	if st.ownGW6 {
		reqs = append(reqs, defaultRoute(st.index, cfg.GatewayIPv6))
		what = append(what, "add default route via "+cfg.GatewayIPv6.String())
	}
	for _, r := range cfg.Routes {
		reqs = append(reqs, cnl.RouteRequest(st.index, r.Destination.Masked(), r.NextHop, false))
		what = append(what, "add route "+r.Destination.String())
	}
	for i, err := range s.conn.Batch(reqs...) {
		if err != nil {
			return fmt.Errorf("%s: %w", what[i], err)
		}
	}
	return nil
}

// linkInSandbox returns the sandbox's link name with its index and MAC, all that configure
// needs of it. It asks with ioctls, which do not wait for the RTNL lock (busy with the link's
// creation a moment ago) and return no full link message to parse. A link without an
// Ethernet address, or not found, is looked up with netlink, whose answer names it (a
// netlink.LinkNotFoundError when it is missing).
func (s *Namespace) linkInSandbox(name string) (netlink.Link, error) {
	index, mac, err := s.conn.LinkByName(name)
	if err != nil || mac == nil {
		h, herr := s.handle()
		if herr != nil {
			return nil, herr
		}
		return h.LinkByName(name)
	}
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index, Name: name, HardwareAddr: mac}}, nil
}

// moveIn moves the host link cfg.SrcName into the sandbox and renames it to cfg.Name. It
// returns the link as the sandbox sees it.
func (s *Namespace) moveIn(ctx context.Context, cfg *InterfaceConfig, st *addState) (netlink.Link, error) {
	hnl, err := s.hostHandle()
	if err != nil {
		return nil, err
	}
	link, err := hnl.LinkByName(cfg.SrcName)
	if err != nil {
		return nil, fmt.Errorf("find host link %s: %w", cfg.SrcName, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := hnl.LinkSetNsFd(link, s.ns.FD()); err != nil {
		return nil, fmt.Errorf("move host link %s in: %w", cfg.SrcName, err)
	}
	st.inSandbox = true
	h, err := s.handle()
	if err != nil {
		return nil, err
	}
	// The kernel keeps the index when it is free in the sandbox, else picks another.
	moved, err := h.LinkByName(cfg.SrcName)
	if err != nil {
		return nil, fmt.Errorf("find moved link %s: %w", cfg.SrcName, err)
	}
	st.index = moved.Attrs().Index
	if cfg.Name != cfg.SrcName {
		if err := h.LinkSetName(moved, cfg.Name); err != nil {
			return nil, fmt.Errorf("rename %s: %w", cfg.SrcName, err)
		}
		moved.Attrs().Name = cfg.Name
	}
	return moved, nil
}

// rollbackAdd undoes a failed AddInterface: it deletes the link from the sandbox when it is
// there, releases the name and any default route claim, and hands the default routes to
// another interface if one can take them. It runs whatever the context.
func (s *Namespace) rollbackAdd(cfg *InterfaceConfig, st *addState) error {
	var errs []error
	if st.inSandbox {
		if err := s.deleteLink(st.index, cfg.Name, cfg.SrcName); err != nil {
			errs = append(errs, fmt.Errorf("rollback: %w", err))
		}
	}
	s.mu.Lock()
	s.ifaces.Unclaim(cfg.Name)
	handOver := false
	if s.gw4 == cfg.Name && st.ownGW4 {
		s.gw4, handOver = "", true
	}
	if s.gw6 == cfg.Name && st.ownGW6 {
		s.gw6, handOver = "", true
	}
	s.mu.Unlock()
	if handOver {
		if err := s.ensureDefaultRoutes(); err != nil {
			errs = append(errs, fmt.Errorf("rollback: %w", err))
		}
	}
	return errors.Join(errs...)
}

// deleteLink deletes the sandbox link with index (when non-zero) or else the first of names
// found. A link already gone is not an error.
func (s *Namespace) deleteLink(index int, names ...string) error {
	if index > 0 {
		if err := s.conn.Batch(cnl.DelLinkIndexRequest(index))[0]; err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete link: %w", err)
		}
		return nil
	}
	for _, n := range names {
		if n == "" {
			continue
		}
		err := s.conn.Batch(cnl.DelLinkRequest(n))[0]
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete link %s: %w", n, err)
		}
	}
	return nil
}

// RemoveInterface deletes the configured interface name from the sandbox: it deletes the
// link if it is still in the namespace (a veth takes its peer with it), gives the default
// routes it provided to the next interface with a gateway, in the order added, and rewrites
// the hosts file. Removing an interface that is not configured (never added, being added,
// already removed, or the sandbox deleted) returns nil; in a sandbox closed by Close it
// returns an error matching [errclass.ErrNotFound]. ctx is checked once, before anything is
// done.
func (s *Namespace) RemoveInterface(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, err)
	}
	s.mu.Lock()
	if s.deleted || s.ifaces.Index(name) < 0 {
		s.mu.Unlock()
		return nil
	}
	if s.closed {
		defer s.mu.Unlock()
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, s.closedErrLocked())
	}
	s.ops.Add(1)
	s.mu.Unlock()
	defer s.ops.Done()
	if err := s.removeInterface(name); err != nil {
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, err)
	}
	s.log.Debug("interface removed", "sandbox", s.id, "interface", name)
	return nil
}

// removeInterface does RemoveInterface's work; the caller holds an ops count. If the link
// can not be deleted, the interface stays configured.
func (s *Namespace) removeInterface(name string) error {
	s.mu.Lock()
	ifc, i, ok := s.ifaces.Take(name)
	if !ok {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()

	// Delete by name: the index recorded at Open or AddInterface may since have gone to
	// another link if this one vanished.
	err := s.deleteLink(0, name)

	s.mu.Lock()
	if err != nil {
		s.ifaces.Put(i, name, ifc)
		s.mu.Unlock()
		return err
	}
	s.ifaces.Unclaim(name)
	if s.gw4 == name {
		s.gw4 = ""
	}
	if s.gw6 == name {
		s.gw6 = ""
	}
	s.mu.Unlock()
	return errors.Join(s.ensureDefaultRoutes(), s.writeHosts())
}

// ensureDefaultRoutes gives each default route (IPv4, IPv6) that no interface provides to
// the first configured interface with a gateway of that family.
func (s *Namespace) ensureDefaultRoutes() error {
	type pick struct {
		name string
		gw   netip.Addr
		idx  int
		v6   bool
	}
	var picks []pick
	s.mu.Lock()
	for _, f := range s.ifaces.All() {
		if s.gw4 == "" && f.Gateway.IsValid() {
			s.gw4 = f.Name
			picks = append(picks, pick{f.Name, f.Gateway, f.index, false})
		}
	}
	for _, f := range s.ifaces.All() {
		if s.gw6 == "" && f.GatewayIPv6.IsValid() {
			s.gw6 = f.Name
			picks = append(picks, pick{f.Name, f.GatewayIPv6, f.index, true})
		}
	}
	s.mu.Unlock()

	var errs []error
	for _, p := range picks {
		err := s.conn.Batch(defaultRoute(p.idx, p.gw))[0]
		if err == nil {
			s.log.Debug("default route set", "sandbox", s.id, "interface", p.name, "gateway", p.gw)
			continue
		}
		errs = append(errs, fmt.Errorf("default route via %s dev %s: %w", p.gw, p.name, err))
		s.mu.Lock()
		if !p.v6 && s.gw4 == p.name {
			s.gw4 = ""
		}
		if p.v6 && s.gw6 == p.name {
			s.gw6 = ""
		}
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// hostsContent returns the hosts file for the configured interfaces.
func (s *Namespace) hostsContent() []byte {
	s.mu.Lock()
	var addrs []netip.Addr
	for _, ifc := range s.ifaces.All() {
		if ifc.IPv4.IsValid() {
			addrs = append(addrs, ifc.IPv4.Addr())
		}
		if ifc.IPv6.IsValid() {
			addrs = append(addrs, ifc.IPv6.Addr())
		}
	}
	s.mu.Unlock()
	return hostsFile(s.hostname, s.domainname, addrs, s.extraHosts)
}

// writeHosts rewrites the hosts file with the current interfaces.
func (s *Namespace) writeHosts() error {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	return writeFileInPlace(s.hostsPath, s.hostsContent())
}

// Delete removes the sandbox. For ModeNamespace it unmounts and removes the namespace's bind
// mount; the kernel then deletes the namespace with every interface in it (and each veth's
// peer), asynchronously. A sandbox on a caller's namespace (Config.Netns) instead deletes the
// interfaces it configured and leaves the namespace. For every mode it closes the sandbox's descriptors and handles and
// removes the hosts and resolv.conf files, then FilesDir if it is empty.
//
// Delete waits for running AddInterface and RemoveInterface calls (each bounded by netlink
// socket timeouts); later calls see the sandbox as deleted. It continues past errors and
// returns them joined. Calling it again, or after Close, retries the unmount and file
// removal and returns nil once all is gone. ctx is not used: the removal is not canceled
// half-way.
func (s *Namespace) Delete(ctx context.Context) error {
	first := !s.isDeleted()
	var errs []error
	s.mu.Lock()
	open := !s.closed
	s.mu.Unlock()
	if s.external && open {
		for _, ifc := range s.Interfaces() {
			errs = append(errs, s.RemoveInterface(context.WithoutCancel(ctx), ifc.Name))
		}
	}
	errs = append(errs, s.shutdown(true))
	if s.mode == ModeNamespace && !s.external {
		errs = append(errs, netns.Remove(s.key))
	}
	errs = append(errs, removeIfExists(s.hostsPath), removeIfExists(s.resolvPath))
	if err := os.Remove(s.filesDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			s.log.Debug("files dir not empty: kept", "sandbox", s.id, "dir", s.filesDir)
		} else {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox %s: delete: %w", s.id, err)
	}
	if first {
		s.log.Debug("sandbox deleted", "sandbox", s.id)
	}
	return nil
}

// Close releases the sandbox's descriptors and netlink handles and leaves the sandbox in
// place: the namespace, its interfaces and the files stay, for [Open] to adopt after a
// restart. It waits for running AddInterface and RemoveInterface calls; later calls fail with
// an error matching [errclass.ErrNotFound]. Close after Close or Delete returns nil.
func (s *Namespace) Close() error {
	if err := s.shutdown(false); err != nil {
		return fmt.Errorf("sandbox %s: close: %w", s.id, err)
	}
	return nil
}

func (s *Namespace) isDeleted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deleted
}

// shutdown marks the sandbox closed (and deleted if deleting) and, the first time, waits for
// the running operations and closes the handles.
func (s *Namespace) shutdown(deleting bool) error {
	s.mu.Lock()
	first := !s.closed
	s.closed = true
	if deleting {
		s.deleted = true
	}
	s.mu.Unlock()
	if !first {
		return nil
	}
	s.ops.Wait()
	// A netlink socket holds its namespace: close them all before any unmount.
	return s.closeHandles()
}

// ListNamespaces returns the IDs of the sandboxes with a namespace file under
// runDir/netns, mounted or stale (left by a crash), sorted. The Controller's restart
// reconciliation removes those it does not know with [RemoveNamespace]. A missing directory
// returns none.
func ListNamespaces(runDir string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(runDir, "netns"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox: list namespaces: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() && validID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// RemoveNamespace unmounts and removes the namespace file of sandbox id under runDir/netns,
// one left behind by a crash. A missing one returns nil. It does not touch the sandbox's
// files directory.
func RemoveNamespace(runDir, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := netns.Remove(filepath.Join(runDir, "netns", id)); err != nil {
		return fmt.Errorf("sandbox %s: remove namespace: %w", id, err)
	}
	return nil
}

// defaultRoute returns the request for the route `default via gw dev <index>`, replacing one
// there.
func defaultRoute(index int, gw netip.Addr) *cnl.Request {
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if gw.Is6() {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return cnl.RouteRequest(index, dst, gw, true)
}

// maskedRoutes returns a copy of rs with the destinations masked.
func maskedRoutes(rs []Route) []Route {
	out := slices.Clone(rs)
	for i := range out {
		out[i].Destination = out[i].Destination.Masked()
	}
	return out
}

// mkdirAllTracked is os.MkdirAll(dir, 0o755) that returns the directories it made, from
// the top down.
func mkdirAllTracked(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	slices.Reverse(missing)
	return missing, nil
}

// removeIfExists removes path; a missing path is not an error.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

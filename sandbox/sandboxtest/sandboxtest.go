// Package sandboxtest is an in-memory [sandbox.Machine]: sandboxes without network
// namespaces, for testing without root the code that uses cnm's Controller (Config.Machine)
// or package sandbox.
//
// A [Machine] keeps, in memory, the namespaces its sandboxes would have and the interfaces
// configured in them. They outlive the Handle that made them, as namespaces outlive a process:
// a sandbox let go of with Close is found again by Open on the same Machine value (a new
// Controller sharing it restores its sandboxes), List and Remove see the namespaces under a
// RunDir, and the test helpers [Machine.Remove] and [Machine.DeleteLink] make a namespace or
// an interface vanish as a reboot or an outside hand would. [Machine.FailOn] makes a method
// fail.
//
// The sandboxes keep the contract of [sandbox.Namespace] that needs no kernel, with the same
// code where it can: configurations are validated by the sandbox package ([sandbox.Config.Validate],
// [sandbox.InterfaceConfig.Validate]); interface names are reserved, claimed and freed by the
// bookkeeping [sandbox.Namespace] uses; the hosts and resolv.conf files are written in
// FilesDir with the contents the real sandbox writes, and removed by Delete.
//
// What it does not model: there are no links, addresses, routes or firewall rules. AddInterface
// records the interface it is given (InSandbox or SrcName alike; no link must exist), gives it
// a locally administered MAC when it has none, and sets nothing up; default routes are not
// chosen. A sandbox on a caller's namespace (Config.Netns) makes that namespace on New when
// no sandbox has it yet, and Delete leaves it with the links of other sandboxes in it.
// NetnsFD returns -1, and Key, for ModeNamespace, is RunDir/netns/<ID> though no file
// is there: a driver used with a Machine must not enter or open the sandbox's namespace (use
// drivers/driverstest's Fake). Path is [HostPath], no namespace either: the bridge driver,
// which opens it, cannot be used (cnm.Config.Drivers replaces it). Routes returns what
// [Machine.SetRoutes] set. Namespace files are not written under RunDir.
//
// A Machine and its sandboxes are safe for concurrent use.
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
)

// HostPath is the Path of every Machine: the Key of its ModeHost sandboxes. No file is there.
const HostPath = "/sandboxtest/host"

var _ sandbox.Machine = (*Machine)(nil)

// Machine is an in-memory [sandbox.Machine]. Create one with [NewMachine]; share the value
// between Controllers to model one machine across restarts.
type Machine struct {
	mu     sync.Mutex // guards following, and the spaces' links; never held with a sandbox's lock
	routes []netip.Prefix
	spaces map[string]*space // the namespaces that exist, by path (RunDir/netns/<ID>)
	fail   map[string]error
	macs   uint32 // MACs handed out
}

// space is a namespace: the links in it, by name. Its fields are guarded by Machine.mu.
type space struct {
	links map[string]sandbox.Interface
}

// NewMachine returns a Machine with no namespace and no route.
func NewMachine() *Machine {
	return &Machine{spaces: map[string]*space{}, fail: map[string]error{}}
}

// FailOn makes every later call of the named method return err (wrapped as the real sandbox
// wraps its errors) and change nothing, until FailOn is called again for it with a nil err.
// The methods are those of Machine ("New", "Open", "List", "Remove", "Routes") and of its
// sandboxes ("AddInterface", "RemoveInterface", "Delete"). An error matching
// cnm.ErrNotFound from "Open" is what a vanished namespace gives.
func (m *Machine) FailOn(method string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		delete(m.fail, method)
		return
	}
	m.fail[method] = err
}

func (m *Machine) failure(method string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fail[method]
}

// SetRoutes sets the destinations Routes returns. The Machine keeps a copy.
func (m *Machine) SetRoutes(dsts ...netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes = slices.Clone(dsts)
}

// Path returns [HostPath].
func (m *Machine) Path() string { return HostPath }

// Routes returns the destinations given to SetRoutes, in a slice the caller owns.
func (m *Machine) Routes() ([]netip.Prefix, error) {
	if err := m.failure("Routes"); err != nil {
		return nil, fmt.Errorf("sandboxtest: host routes: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.routes), nil
}

func nsPath(runDir, id string) string { return filepath.Join(runDir, "netns", id) }

// List returns the IDs of the namespaces under runDir, sorted, as [sandbox.ListNamespaces]
// does.
func (m *Machine) List(runDir string) ([]string, error) {
	if err := m.failure("List"); err != nil {
		return nil, fmt.Errorf("sandbox: list namespaces: %w", err)
	}
	dir := filepath.Join(runDir, "netns")
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for p := range m.spaces {
		if filepath.Dir(p) == dir {
			ids = append(ids, filepath.Base(p))
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Remove removes the namespace of sandbox id under runDir, as [sandbox.RemoveNamespace] does:
// a missing one returns nil, a bad id an error matching cnm.ErrInvalidParameter. A sandbox
// still open on it keeps working, as one holding a real namespace's descriptor would, but
// Open no longer finds it: this is how a test makes a namespace vanish.
func (m *Machine) Remove(runDir, id string) error {
	if err := sandbox.ValidateID(id); err != nil {
		return err
	}
	if err := m.failure("Remove"); err != nil {
		return fmt.Errorf("sandbox %s: remove namespace: %w", id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.spaces, nsPath(runDir, id))
	return nil
}

// Links returns the names of the interfaces in the namespace of sandbox id under runDir,
// sorted, and whether that namespace exists. Loopback is not modelled.
func (m *Machine) Links(runDir, id string) ([]string, bool) { return m.LinksAt(nsPath(runDir, id)) }

// LinksAt returns, sorted, the interfaces in the namespace at path (a caller's, given as
// Config.Netns), and whether that namespace exists.
func (m *Machine) LinksAt(path string) ([]string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sp := m.spaces[path]
	if sp == nil {
		return nil, false
	}
	return slices.Sorted(maps.Keys(sp.links)), true
}

// DeleteLink removes the interface name from the namespace of sandbox id under runDir, as if
// it vanished: a sandbox that has it configured still lists it, and Open drops it. It
// reports whether the link was there.
func (m *Machine) DeleteLink(runDir, id, name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	sp := m.spaces[nsPath(runDir, id)]
	if sp == nil {
		return false
	}
	_, ok := sp.links[name]
	delete(sp.links, name)
	return ok
}

// newMAC returns a locally administered unicast MAC not handed out before.
func (m *Machine) newMAC() net.HardwareAddr {
	m.mu.Lock()
	m.macs++
	n := m.macs
	m.mu.Unlock()
	return net.HardwareAddr{0x02, 0x5b, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// New creates a sandbox as [sandbox.New] does: for ModeNamespace a namespace at
// RunDir/netns/<ID> (an error matching cnm.ErrAlreadyExists when one is there), for
// ModeContainer on cfg.Share's namespace (an error matching cnm.ErrNotFound when it is gone);
// then it writes the hosts and resolv.conf files in FilesDir. A bad cfg fails with an error
// matching cnm.ErrInvalidParameter. On error nothing is left behind.
func (m *Machine) New(ctx context.Context, cfg sandbox.Config) (sandbox.Handle, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, err := m.create(ctx, &cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: create: %w", cfg.ID, err)
	}
	return s, nil
}

func (m *Machine) create(ctx context.Context, cfg *sandbox.Config) (_ *sandboxHandle, err error) {
	if err := m.failure("New"); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	resolv, err := cfg.ResolvConf()
	if err != nil {
		return nil, err
	}
	s := m.newSandbox(cfg)
	if err := m.attach(s, true); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && s.sp != nil {
			m.mu.Lock()
			if m.spaces[s.key] == s.sp {
				delete(m.spaces, s.key)
			}
			m.mu.Unlock()
		}
	}()
	_, statErr := os.Stat(s.filesDir)
	if err := os.MkdirAll(s.filesDir, 0o755); err != nil {
		return nil, fmt.Errorf("create files dir: %w", err)
	}
	if err := s.writeFiles(resolv); err != nil {
		s.removeFiles(errors.Is(statErr, os.ErrNotExist))
		return nil, err
	}
	return s, nil
}

// Open re-opens a sandbox as [sandbox.Open] does: for ModeNamespace the namespace at
// RunDir/netns/<ID> must exist, else Open fails with an error matching cnm.ErrNotFound. It
// adopts ifaces in order; one whose link is not in the namespace, or holds other addresses
// than the interface says, is dropped (the link is removed) and its name returned in dropped.
// Then it writes the hosts and resolv.conf files.
func (m *Machine) Open(ctx context.Context, cfg sandbox.Config, ifaces []sandbox.Interface) (sandbox.Handle, []string, error) {
	if err := cfg.ValidateOpen(ifaces); err != nil {
		return nil, nil, err
	}
	s, dropped, err := m.open(ctx, &cfg, ifaces)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: open: %w", cfg.ID, err)
	}
	return s, dropped, nil
}

func (m *Machine) open(ctx context.Context, cfg *sandbox.Config, ifaces []sandbox.Interface) (*sandboxHandle, []string, error) {
	if err := m.failure("Open"); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	resolv, err := cfg.ResolvConf()
	if err != nil {
		return nil, nil, err
	}
	s := m.newSandbox(cfg)
	if err := m.attach(s, false); err != nil {
		return nil, nil, err
	}
	var dropped []string
	if s.sp != nil {
		m.mu.Lock()
		for _, ifc := range ifaces {
			link, ok := s.sp.links[ifc.Name]
			if ok && !holds(link, ifc) {
				delete(s.sp.links, ifc.Name) // half-configured: the real sandbox removes it
				ok = false
			}
			if !ok {
				dropped = append(dropped, ifc.Name)
				continue
			}
			ifc = ifc.Clone()
			if len(ifc.MAC) == 0 {
				ifc.MAC = slices.Clone(link.MAC)
			}
			s.ifaces.Add(ifc.Name, ifc) // s is not shared yet: its lock is not needed
		}
		m.mu.Unlock()
	}
	if err := os.MkdirAll(s.filesDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create files dir: %w", err)
	}
	if err := s.writeFiles(resolv); err != nil {
		return nil, nil, err
	}
	return s, dropped, nil
}

// holds reports whether link has the addresses ifc says it has.
func holds(link, ifc sandbox.Interface) bool {
	return (!ifc.IPv4.IsValid() || link.IPv4.Addr() == ifc.IPv4.Addr()) &&
		(!ifc.IPv6.IsValid() || link.IPv6.Addr() == ifc.IPv6.Addr())
}

// attach finds (or, for New of a ModeNamespace sandbox, makes) the namespace of s.
func (m *Machine) attach(s *sandboxHandle, create bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch s.mode {
	case sandbox.ModeNamespace:
		sp := m.spaces[s.key]
		switch {
		case s.external && create && sp == nil:
			sp = &space{links: map[string]sandbox.Interface{}} // the caller's: it outlives the sandbox
			m.spaces[s.key] = sp
		case s.external && sp == nil:
			return &errclass.NotFoundError{Kind: "sandbox", Name: s.id, Err: fmt.Errorf("namespace %s: not found", s.key)}
		case s.external:
		case create && sp != nil:
			return fmt.Errorf("namespace %s: %w", s.key, &errclass.AlreadyExistsError{Kind: "sandbox", Name: s.id})
		case create:
			sp = &space{links: map[string]sandbox.Interface{}}
			m.spaces[s.key] = sp
		case sp == nil:
			return &errclass.NotFoundError{Kind: "sandbox", Name: s.id, Err: fmt.Errorf("no namespace mounted at %s", s.key)}
		}
		s.sp = sp
	case sandbox.ModeContainer:
		if m.spaces[s.key] == nil && s.key != HostPath {
			return &errclass.NotFoundError{Kind: "sandbox", Name: s.shareID, Err: fmt.Errorf("shared namespace: no namespace at %s", s.key)}
		}
	}
	return nil
}

// newSandbox returns the sandbox cfg describes, not attached to a namespace yet.
func (m *Machine) newSandbox(cfg *sandbox.Config) *sandboxHandle {
	s := &sandboxHandle{
		m:          m,
		id:         cfg.ID,
		mode:       cfg.Mode,
		filesDir:   filepath.Clean(cfg.FilesDir),
		hostname:   cfg.Hostname,
		hostsCfg:   sandbox.Config{ID: cfg.ID, Hostname: cfg.Hostname, Domainname: cfg.Domainname, ExtraHosts: slices.Clone(cfg.ExtraHosts)},
		hostsPath:  filepath.Join(cfg.FilesDir, "hosts"),
		resolvPath: filepath.Join(cfg.FilesDir, "resolv.conf"),
	}
	if s.hostname == "" {
		s.hostname = cfg.ID
	}
	switch cfg.Mode {
	case sandbox.ModeNamespace:
		s.key = nsPath(cfg.RunDir, cfg.ID)
		if cfg.Netns != "" {
			s.key, s.external = cfg.Netns, true
		}
	case sandbox.ModeHost:
		s.key = cfg.HostNetns
		if s.key == "" {
			s.key = HostPath
		}
	case sandbox.ModeContainer:
		s.shareID, s.key = cfg.Share.ID(), cfg.Share.Key()
	}
	s.ifaces.Init(&s.mu)
	return s
}

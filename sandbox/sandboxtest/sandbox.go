package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/internal/iftable"
)

var _ sandbox.Handle = (*sandboxHandle)(nil)

// sandboxHandle is a sandbox of a Machine.
//
// Lock order: filesMu, then mu. Machine.mu is taken alone.
type sandboxHandle struct {
	// Immutable after New or Open.
	m          *Machine
	id         string
	mode       sandbox.Mode
	external   bool // on a caller's namespace (Config.Netns): Delete leaves it
	key        string
	shareID    string
	sp         *space         // ModeNamespace: its namespace
	hostsCfg   sandbox.Config // what the hosts file is made of
	hostname   string
	filesDir   string
	hostsPath  string
	resolvPath string

	filesMu sync.Mutex // serializes writes of the hosts file

	mu      sync.Mutex // guards following
	closed  bool       // by Close or Delete
	deleted bool       // by Delete
	ifaces  iftable.Table[sandbox.Interface]
}

func (s *sandboxHandle) ID() string             { return s.id }
func (s *sandboxHandle) Mode() sandbox.Mode     { return s.mode }
func (s *sandboxHandle) Key() string            { return s.key }
func (s *sandboxHandle) NetnsFD() int           { return -1 } // no namespace: see the package doc
func (s *sandboxHandle) Hostname() string       { return s.hostname }
func (s *sandboxHandle) HostsPath() string      { return s.hostsPath }
func (s *sandboxHandle) ResolvConfPath() string { return s.resolvPath }

// Interfaces returns copies of the configured interfaces in the order added.
func (s *sandboxHandle) Interfaces() []sandbox.Interface {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]sandbox.Interface, 0, s.ifaces.Len())
	for _, ifc := range s.ifaces.All() {
		out = append(out, ifc.Clone())
	}
	return out
}

// sharedErr is the error for adding interfaces to a sandbox without its own namespace.
func (s *sandboxHandle) sharedErr() error {
	reason := "uses the host's network namespace: no interface can be added"
	if s.mode == sandbox.ModeContainer {
		reason = fmt.Sprintf("shares the namespace of sandbox %q: connect %q instead", s.shareID, s.shareID)
	}
	return &errclass.ConflictError{Kind: "sandbox", Name: s.id, Reason: reason}
}

// closedErrLocked is the error for using a closed or deleted sandbox.
func (s *sandboxHandle) closedErrLocked() error {
	why := "closed"
	if s.deleted {
		why = "deleted"
	}
	return &errclass.NotFoundError{Kind: "sandbox", Name: s.id, Err: errors.New(why)}
}

// ReserveName reserves an interface name as [sandbox.Namespace.ReserveName] does.
func (s *sandboxHandle) ReserveName(want string) (string, func(), error) {
	if s.mode != sandbox.ModeNamespace {
		return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.id, s.sharedErr())
	}
	if want != "" {
		if err := sandbox.ValidateIfName(want); err != nil {
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

// AddInterface records the interface cfg describes, with the checks and errors of
// [sandbox.Namespace.AddInterface], and rewrites the hosts file. The interface is given a MAC
// when cfg has none. On error nothing is recorded.
func (s *sandboxHandle) AddInterface(ctx context.Context, cfg sandbox.InterfaceConfig) error {
	if err := s.addInterface(ctx, &cfg); err != nil {
		return fmt.Errorf("sandbox %s: add interface %s: %w", s.id, cfg.Name, err)
	}
	return nil
}

func (s *sandboxHandle) addInterface(ctx context.Context, cfg *sandbox.InterfaceConfig) error {
	if s.mode != sandbox.ModeNamespace {
		return s.sharedErr()
	}
	if err := sandbox.ValidateIfName(cfg.Name); err != nil {
		return err
	}
	verr := cfg.Validate()
	s.mu.Lock()
	if s.closed {
		defer s.mu.Unlock()
		return s.closedErrLocked()
	}
	if err := s.ifaces.Claim(cfg.Name); err != nil {
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()

	err := verr
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = s.m.failure("AddInterface")
	}
	if err != nil {
		s.mu.Lock()
		s.ifaces.Unclaim(cfg.Name)
		s.mu.Unlock()
		return err
	}
	ifc := sandbox.Interface{
		Name: cfg.Name, MAC: cfg.MAC, IPv4: cfg.IPv4, IPv6: cfg.IPv6,
		Gateway: cfg.Gateway, GatewayIPv6: cfg.GatewayIPv6, Routes: cfg.Routes,
	}.Clone()
	if len(ifc.MAC) == 0 {
		ifc.MAC = s.m.newMAC()
	}
	for i := range ifc.Routes {
		ifc.Routes[i].Destination = ifc.Routes[i].Destination.Masked()
	}
	s.m.mu.Lock()
	s.sp.links[ifc.Name] = ifc.Clone()
	s.m.mu.Unlock()
	s.mu.Lock()
	s.ifaces.Add(ifc.Name, ifc)
	s.mu.Unlock()
	if err := s.writeHosts(); err != nil {
		return errors.Join(fmt.Errorf("write hosts: %w", err), s.removeInterface(cfg.Name))
	}
	return nil
}

// RemoveInterface forgets the configured interface name and removes it from the namespace,
// with the checks and errors of [sandbox.Namespace.RemoveInterface]: a name not configured
// returns nil. It rewrites the hosts file.
func (s *sandboxHandle) RemoveInterface(ctx context.Context, name string) error {
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
	s.mu.Unlock()
	if err := s.removeInterface(name); err != nil {
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, err)
	}
	return nil
}

func (s *sandboxHandle) removeInterface(name string) error {
	s.mu.Lock()
	ifc, i, ok := s.ifaces.Take(name)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	if err := s.m.failure("RemoveInterface"); err != nil {
		s.mu.Lock()
		s.ifaces.Put(i, name, ifc)
		s.mu.Unlock()
		return err
	}
	s.m.mu.Lock()
	delete(s.sp.links, name)
	s.m.mu.Unlock()
	s.mu.Lock()
	s.ifaces.Unclaim(name)
	s.mu.Unlock()
	return s.writeHosts()
}

// writeFiles writes the resolv.conf file with resolv, and the hosts file.
func (s *sandboxHandle) writeFiles(resolv []byte) error {
	if err := os.WriteFile(s.resolvPath, resolv, 0o644); err != nil {
		return err
	}
	return s.writeHosts()
}

// writeHosts rewrites the hosts file with the configured interfaces.
func (s *sandboxHandle) writeHosts() error {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	s.mu.Lock()
	ifaces := make([]sandbox.Interface, 0, s.ifaces.Len())
	for _, ifc := range s.ifaces.All() {
		ifaces = append(ifaces, ifc)
	}
	s.mu.Unlock()
	return os.WriteFile(s.hostsPath, s.hostsCfg.HostsFile(ifaces), 0o644)
}

// removeFiles removes the hosts and resolv.conf files, then the files directory if it is
// empty (or, with dir, whatever it holds: New made it).
func (s *sandboxHandle) removeFiles(dir bool) error {
	var errs []error
	for _, p := range []string{s.hostsPath, s.resolvPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if ents, err := os.ReadDir(s.filesDir); err == nil && (len(ents) == 0 || dir) {
		errs = append(errs, os.RemoveAll(s.filesDir))
	}
	return errors.Join(errs...)
}

// Delete removes the sandbox as [sandbox.Namespace.Delete] does: its namespace, with every
// interface in it (for ModeNamespace), and its files, then FilesDir if it is empty. Later
// calls see the sandbox as deleted. Calling it again returns nil once all is gone.
func (s *sandboxHandle) Delete(ctx context.Context) error {
	if err := s.m.failure("Delete"); err != nil {
		return fmt.Errorf("sandbox %s: delete: %w", s.id, err)
	}
	s.mu.Lock()
	s.closed, s.deleted = true, true
	s.mu.Unlock()
	if s.sp != nil && s.external {
		s.mu.Lock()
		var names []string
		for name := range s.ifaces.All() {
			names = append(names, name)
		}
		s.mu.Unlock()
		s.m.mu.Lock()
		for _, name := range names {
			delete(s.sp.links, name)
		}
		s.m.mu.Unlock()
	} else if s.sp != nil {
		s.m.mu.Lock()
		if s.m.spaces[s.key] == s.sp {
			delete(s.m.spaces, s.key)
		}
		s.m.mu.Unlock()
	}
	if err := s.removeFiles(false); err != nil {
		return fmt.Errorf("sandbox %s: delete: %w", s.id, err)
	}
	return nil
}

// Close lets go of the sandbox: its namespace, interfaces and files stay, for Open. Later
// calls of ReserveName, AddInterface and RemoveInterface fail with an error matching
// cnm.ErrNotFound. Close after Close or Delete returns nil.
func (s *sandboxHandle) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

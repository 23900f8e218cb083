//go:build !linux

package sandbox

import (
	"context"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Namespace is the Linux implementation of [Sandbox]. On other systems New and Open fail with
// an [errclass.NotSupportedError].
type Namespace struct{}

var _ Sandbox = (*Namespace)(nil)

// errNotSupported is what New, Open and the other calls that need the kernel return.
var errNotSupported = errclass.LinuxOnly("network sandboxes")

// New fails: network namespaces are Linux only.
func New(ctx context.Context, cfg Config) (*Namespace, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, errNotSupported
}

// Open fails: network namespaces are Linux only.
func Open(ctx context.Context, cfg Config, ifaces []Interface) (sb *Namespace, dropped []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	return nil, nil, errNotSupported
}

// ListNamespaces fails: network namespaces are Linux only.
func ListNamespaces(runDir string) ([]string, error) { return nil, errNotSupported }

// RemoveNamespace fails: network namespaces are Linux only.
func RemoveNamespace(runDir, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return errNotSupported
}

// The methods below are those of [Sandbox], for the type to satisfy it. New and Open give no
// *Namespace on this system, so they are not reached: accessors return zero values, the calls
// that need the kernel (Delete among them) fail with an error matching
// [errclass.ErrNotSupported], and Close, with nothing to release, returns nil.

func (s *Namespace) ID() string                                          { return "" }
func (s *Namespace) Mode() Mode                                          { return ModeNamespace }
func (s *Namespace) Key() string                                         { return "" }
func (s *Namespace) NetnsFD() int                                        { return -1 }
func (s *Namespace) Interfaces() []Interface                             { return nil }
func (s *Namespace) Hostname() string                                    { return "" }
func (s *Namespace) ReserveName(string) (string, func(), error)          { return "", nil, errNotSupported }
func (s *Namespace) AddInterface(context.Context, InterfaceConfig) error { return errNotSupported }
func (s *Namespace) RemoveInterface(context.Context, string) error       { return errNotSupported }
func (s *Namespace) HostsPath() string                                   { return "" }
func (s *Namespace) ResolvConfPath() string                              { return "" }
func (s *Namespace) Delete(context.Context) error                        { return errNotSupported }
func (s *Namespace) Close() error                                        { return nil }

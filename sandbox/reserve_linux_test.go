package sandbox

import (
	"context"
	"errors"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
)

// TestReserveName exercises the name bookkeeping, which needs no kernel.
func TestReserveName(t *testing.T) {
	s := newNamespace(&Config{ID: "c1", RunDir: "/run/cnm", FilesDir: "/tmp/c1"})
	s.ifaces.Add("eth1", &iface{Interface: Interface{Name: "eth1"}})

	n0, rel0, err := s.ReserveName("")
	if err != nil || n0 != "eth0" {
		t.Fatalf("ReserveName() = %q, %v; want eth0", n0, err)
	}
	n2, rel2, err := s.ReserveName("")
	if err != nil || n2 != "eth2" {
		t.Fatalf("ReserveName() = %q, %v; want eth2 (eth0 reserved, eth1 configured)", n2, err)
	}
	rel0()
	rel0() // idempotent
	if n, _, _ := s.ReserveName(""); n != "eth0" {
		t.Fatalf("after release ReserveName() = %q, want eth0 again", n)
	}
	// An old release must not free a name reserved again since.
	rel0()
	if n, _, _ := s.ReserveName(""); n != "eth3" {
		t.Fatalf("ReserveName() = %q, want eth3: a stale release freed eth0", n)
	}
	// A name taken by AddInterface (here: busy) is not freed by its release.
	s.mu.Lock()
	if err := s.ifaces.Claim("eth2"); err != nil {
		t.Fatal(err)
	}
	s.mu.Unlock()
	rel2()
	if n, _, _ := s.ReserveName(""); n != "eth4" {
		t.Fatalf("ReserveName() = %q, want eth4", n)
	}
}

func TestReserveNameSharedModes(t *testing.T) {
	for _, mode := range []Mode{ModeHost, ModeContainer} {
		s := newNamespace(&Config{ID: "c2", Mode: mode, FilesDir: "/tmp/c2"})
		s.shareID = "c1"
		_, _, err := s.ReserveName("")
		if _, ok := errors.AsType[*errclass.ConflictError](err); !ok {
			t.Errorf("%v: ReserveName() = %v, want a conflict error", mode, err)
		}
		if err := s.AddInterface(context.Background(), InterfaceConfig{Name: "eth0", InSandbox: true}); !errors.Is(err, errclass.ErrConflict) {
			t.Errorf("%v: AddInterface() = %v, want a conflict error", mode, err)
		}
	}
}

func TestAddInterfaceBadNameTouchesNothing(t *testing.T) {
	// No handle is open: any netlink call would panic.
	s := newNamespace(&Config{ID: "c1", RunDir: "/run/cnm", FilesDir: "/tmp/c1"})
	err := s.AddInterface(context.Background(), InterfaceConfig{Name: "bad/name", InSandbox: true})
	if !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Fatalf("AddInterface(bad/name) = %v, want invalid parameter", err)
	}
	if n, _, _ := s.ReserveName(""); n != "eth0" {
		t.Fatalf("ReserveName() = %q after a failed add, want eth0", n)
	}
}

// TestReserveWantedName: a wanted name is reserved as asked, refused when taken or bad, and
// the ethN picks step over it.
func TestReserveWantedName(t *testing.T) {
	s := newNamespace(&Config{ID: "c1", RunDir: "/run/cnm", FilesDir: "/tmp/c1"})
	s.ifaces.Add("eth0", &iface{Interface: Interface{Name: "eth0"}})
	n, rel, err := s.ReserveName("eth1")
	if err != nil || n != "eth1" {
		t.Fatalf(`ReserveName("eth1") = %q, %v`, n, err)
	}
	if n, _, _ := s.ReserveName(""); n != "eth2" {
		t.Fatalf(`ReserveName("") = %q, want eth2 (eth1 wanted and reserved)`, n)
	}
	for _, taken := range []string{"eth0", "eth1"} {
		if _, _, err := s.ReserveName(taken); !errors.Is(err, errclass.ErrAlreadyExists) {
			t.Errorf("ReserveName(%q) of a taken name = %v, want ErrAlreadyExists", taken, err)
		}
	}
	if _, _, err := s.ReserveName("a/b"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf(`ReserveName("a/b") = %v, want ErrInvalidParameter`, err)
	}
	rel()
	if n, _, err := s.ReserveName("eth1"); err != nil || n != "eth1" {
		t.Fatalf(`ReserveName("eth1") after release = %q, %v`, n, err)
	}
	if n, _, err := s.ReserveName("data0"); err != nil || n != "data0" {
		t.Fatalf(`ReserveName("data0") = %q, %v`, n, err)
	}
}

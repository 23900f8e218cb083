package nl_test

import (
	"errors"
	"net"
	"testing"

	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestPrivilegedLinkByNameIoctl checks the ioctl lookup against netlink's in a namespace of its
// own: the same index and MAC for a veth end, no MAC for loopback (not Ethernet), ENODEV for
// a link that is not there or is in another namespace.
func TestPrivilegedLinkByNameIoctl(t *testing.T) {
	nstest.Privileged(t)
	ns := nstest.NewNS(t)
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x00, 0x00, 0x07}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb", PeerHardwareAddr: mac}); err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := ns.Do(func() (err error) { fd, err = cnl.IfreqSocket(); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	want, err := h.LinkByName("vb")
	if err != nil {
		t.Fatal(err)
	}
	index, got, err := cnl.LinkByNameIoctl(fd, "vb")
	if err != nil {
		t.Fatalf("LinkByNameIoctl(vb) = %v", err)
	}
	if index != want.Attrs().Index || got.String() != mac.String() {
		t.Errorf("LinkByNameIoctl(vb) = %d, %s; want %d, %s", index, got, want.Attrs().Index, mac)
	}
	if index, got, err := cnl.LinkByNameIoctl(fd, "lo"); err != nil || index != 1 || got != nil {
		t.Errorf("LinkByNameIoctl(lo) = %d, %v, %v; want 1, no MAC, nil", index, got, err)
	}
	if _, _, err := cnl.LinkByNameIoctl(fd, "nonesuch0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByNameIoctl(nonesuch0) = %v, want ENODEV", err)
	}
	// A link of another namespace is not seen.
	other := nstest.NewNS(t)
	oh, err := netlink.NewHandleAt(other.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	if err := oh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vc"}, PeerName: "vd"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cnl.LinkByNameIoctl(fd, "vc"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByNameIoctl(vc of another namespace) = %v, want ENODEV", err)
	}
}

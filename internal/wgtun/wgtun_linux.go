package wgtun

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
)

// Device is a userspace WireGuard device on a TUN interface. Its methods are safe for
// concurrent use.
type Device struct {
	cfg  Config
	ns   *netns.NS
	h    *netlink.Handle // in cfg.Netns
	dev  *device.Device
	link int // the TUN interface's index

	mu    sync.Mutex // guards following
	peers map[Key]Peer
}

// Open creates the TUN interface in cfg.Netns, gives it cfg.Addr and cfg.MTU, sets it up and
// starts the WireGuard device on it, listening on cfg.Port in the same namespace. On error
// nothing is left. A TUN interface of the same name already there fails (EEXIST).
func Open(cfg Config) (_ *Device, err error) {
	if cfg.Name == "" || len(cfg.Name) > 15 {
		return nil, errclass.Invalid("wireguard interface name", cfg.Name, "want 1 to 15 characters")
	}
	if cfg.PrivateKey.IsZero() {
		return nil, errclass.Invalid("wireguard private key", "zero", "required")
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, errclass.Invalid("wireguard port", strconv.Itoa(cfg.Port), "want 1 to 65535")
	}
	if cfg.MTU < 1280 {
		return nil, errclass.Invalid("wireguard MTU", strconv.Itoa(cfg.MTU), "want at least 1280")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg, peers: map[Key]Peer{}}
	if cfg.Netns == "" {
		d.ns, err = netns.Current()
	} else {
		d.ns, err = netns.Open(cfg.Netns)
	}
	if err != nil {
		return nil, fmt.Errorf("wgtun: %s: %w", cfg.Name, err)
	}
	var tunDev tun.Device
	defer func() {
		if err != nil {
			if d.dev != nil {
				d.dev.Close() // closes tunDev
			} else if tunDev != nil {
				tunDev.Close()
			}
			if d.h != nil {
				d.h.Close()
			}
			d.ns.Close()
		}
	}()
	if d.h, err = netlink.NewHandleAt(d.ns.Handle()); err != nil {
		return nil, fmt.Errorf("wgtun: %s: %w", cfg.Name, err)
	}
	// The TUN descriptor is opened in the namespace, so that the interface is made there; the
	// descriptor works from anywhere after that. No netlink monitor: the device is set up
	// explicitly below.
	var fd int
	if err := d.ns.Do(func() error {
		var err error
		fd, err = openTUN(cfg.Name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("wgtun: create %s: %w", cfg.Name, err)
	}
	tunDev, _, err = tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wgtun: create %s: %w", cfg.Name, err)
	}
	l, err := d.h.LinkByName(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("wgtun: %s: %w", cfg.Name, err)
	}
	d.link = l.Attrs().Index
	if err := d.h.LinkSetMTU(l, cfg.MTU); err != nil {
		return nil, fmt.Errorf("wgtun: %s: mtu %d: %w", cfg.Name, cfg.MTU, err)
	}
	if cfg.Addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), cfg.Addr.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := d.h.AddrAdd(l, a); err != nil {
			return nil, fmt.Errorf("wgtun: %s: address %s: %w", cfg.Name, cfg.Addr, err)
		}
	}
	if err := d.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("wgtun: %s: up: %w", cfg.Name, err)
	}
	log := &device.Logger{
		Verbosef: func(f string, a ...any) { cfg.Logger.Debug(fmt.Sprintf(f, a...), "tunnel", cfg.Name) },
		Errorf:   func(f string, a ...any) { cfg.Logger.Debug(fmt.Sprintf(f, a...), "tunnel", cfg.Name, "level", "error") },
	}
	d.dev = device.NewDevice(tunDev, &nsBind{Bind: conn.NewStdNetBind(), ns: d.ns}, log)
	if err := d.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hex(), cfg.Port)); err != nil {
		return nil, fmt.Errorf("wgtun: %s: configure: %w", cfg.Name, err)
	}
	if err := d.dev.Up(); err != nil {
		return nil, fmt.Errorf("wgtun: %s: up: %w", cfg.Name, err)
	}
	return d, nil
}

// openTUN opens /dev/net/tun as a TUN interface name (no packet information, virtio headers
// for segmentation offload), in the calling thread's namespace.
func openTUN(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, &errclass.NotSupportedError{What: "userspace WireGuard tunnels", Err: errors.New("the kernel lacks /dev/net/tun")}
		}
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// nsBind is the standard UDP bind with its sockets opened in the device's namespace.
type nsBind struct {
	conn.Bind
	ns *netns.NS
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	derr := b.ns.Do(func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	})
	if derr != nil {
		return nil, 0, derr
	}
	return fns, actual, err
}

// Name returns the TUN interface's name.
func (d *Device) Name() string { return d.cfg.Name }

// Port returns the UDP port the device listens on.
func (d *Device) Port() int { return d.cfg.Port }

// PublicKey returns the device's public key.
func (d *Device) PublicKey() Key { return d.cfg.PrivateKey.Public() }

// SetPeers makes peers the device's peers: new ones are added, changed ones updated in place
// (their sessions kept), missing ones removed. It converges: the same set twice changes
// nothing.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	want := map[Key]Peer{}
	for _, p := range peers {
		want[p.PublicKey] = p
	}
	for k := range d.peers {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		}
	}
	for k, p := range want {
		old, ok := d.peers[k]
		if ok && peerEqual(old, p) {
			continue
		}
		// Only what changed: replacing the allowed IPs leaves a moment with none, in which
		// the peer's packets are dropped.
		fmt.Fprintf(&b, "public_key=%s\n", k.hex())
		if p.Endpoint.IsValid() && (!ok || old.Endpoint != p.Endpoint) {
			fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
		}
		if !ok || old.Keepalive != p.Keepalive {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.Keepalive/time.Second))
		}
		if !ok || !slices.Equal(old.AllowedIPs, p.AllowedIPs) {
			b.WriteString("replace_allowed_ips=true\n")
			for _, a := range p.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", a)
			}
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("wgtun: %s: set peers: %w", d.cfg.Name, err)
	}
	d.peers = want
	return nil
}

// Nudge makes the device send a keepalive to peer pub now, which starts a handshake if there is
// no session (WireGuard sends at most one handshake message per peer every 5 seconds, answers
// included): for a peer that no packet goes to yet. A peer that is not configured is ignored.
func (d *Device) Nudge(pub Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.peers[pub]
	if !ok {
		return nil
	}
	ka := max(int(p.Keepalive/time.Second), 1)
	// Turning the persistent keepalive off and on again sends one at once.
	conf := fmt.Sprintf("public_key=%[1]s\nupdate_only=true\npersistent_keepalive_interval=0\npublic_key=%[1]s\nupdate_only=true\npersistent_keepalive_interval=%[2]d\n", pub.hex(), ka)
	if p.Keepalive == 0 {
		conf += fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\n", pub.hex())
	}
	if err := d.dev.IpcSet(conf); err != nil {
		return fmt.Errorf("wgtun: %s: nudge: %w", d.cfg.Name, err)
	}
	return nil
}

func peerEqual(a, b Peer) bool {
	return a.Endpoint == b.Endpoint && a.Keepalive == b.Keepalive && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// Handshakes returns the time of the last completed handshake with each peer that had one.
func (d *Device) Handshakes() (map[Key]time.Time, error) {
	s, err := d.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wgtun: %s: %w", d.cfg.Name, err)
	}
	out := map[Key]time.Time{}
	var cur Key
	var sec int64
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "public_key":
			cur = Key{}
			sec = 0
			if b, err := hexKey(v); err == nil {
				cur = b
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ := strconv.ParseInt(v, 10, 64)
			if sec != 0 || nsec != 0 {
				out[cur] = time.Unix(sec, nsec)
			}
		}
	}
	return out, nil
}

func hexKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*KeyLen {
		return k, errors.New("bad key")
	}
	for i := range KeyLen {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			return k, err
		}
		k[i] = byte(v)
	}
	return k, nil
}

// Route routes dst through the device, replacing any route to dst (on this device or
// another): how traffic moves between two devices without a gap.
func (d *Device) Route(dst netip.Prefix) error {
	r := &netlink.Route{LinkIndex: d.link, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if err := d.h.RouteReplace(r); err != nil {
		return fmt.Errorf("wgtun: %s: route %s: %w", d.cfg.Name, dst, err)
	}
	return nil
}

// Unroute removes the route to dst through the device, if there is one.
func (d *Device) Unroute(dst netip.Prefix) error {
	r := &netlink.Route{LinkIndex: d.link, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if err := d.h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("wgtun: %s: unroute %s: %w", d.cfg.Name, dst, err)
	}
	return nil
}

// Close stops the device and waits for its goroutines; the TUN interface, its address and
// routes go with it. Closing twice is harmless.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev == nil {
		return nil
	}
	d.dev.Close()
	<-d.dev.Wait()
	d.dev = nil
	d.h.Close()
	return d.ns.Close()
}

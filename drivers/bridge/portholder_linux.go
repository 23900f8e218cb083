package bridge

import (
	"errors"
	"fmt"

	"github.com/cnmkit/cnm/netns"
	"golang.org/x/sys/unix"
)

// This file holds published host ports with sockets in the host namespace, whatever the
// firewall backend: a socket bound to the port and never listening (TCP) or read (UDP), so that
// nobody else can bind it while the endpoint publishes it, and so that a port somebody already
// uses is refused. No proxy process is started and no connection is ever accepted; the traffic
// itself goes by the DNAT rules.

// openPortSockets opens, in the host namespace ns, one unbound socket per key of keys (of its
// protocol and family; the port is not looked at), in one trip into the namespace. A socket
// keeps the namespace it was opened in, so binding it later needs no namespace switch. On
// error, none stays open.
func openPortSockets(ns *netns.NS, keys []portKey) ([]int, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	fds := make([]int, 0, len(keys))
	err := ns.Do(func() error {
		for _, k := range keys {
			fd, err := newPortSocket(k)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
		}
		return nil
	})
	if err != nil {
		closePortSockets(fds)
		return nil, fmt.Errorf("open host port socket: %w", err)
	}
	return fds, nil
}

// newPortSocket opens an unbound socket for k's protocol and family in the calling thread's
// namespace. It sets no SO_REUSEADDR or SO_REUSEPORT: a bind of the same port by anyone else
// fails, with or without those options. It sets IP_FREEBIND (IPV6_FREEBIND), so that a port
// can be held on a host address that is not up yet, and IPV6_V6ONLY on IPv6 sockets, so that
// the IPv6 wildcard holds the IPv6 port only.
func newPortSocket(k portKey) (int, error) {
	family, typ, level, freebind := unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_IP, unix.IP_FREEBIND
	if k.v6 {
		family, level, freebind = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
	}
	if k.proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	err = unix.SetsockoptInt(fd, level, freebind, 1)
	if err == nil && k.v6 {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err == nil && k.proto == "udp" {
		// Nothing reads the socket: keep what it queues (traffic that no DNAT took, as to
		// 127.0.0.1) small.
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// bindPortSocket binds fd, opened for k by openPortSockets, to k's address and port. A port
// anyone holds already fails with an error matching unix.EADDRINUSE; a failed bind leaves fd
// unbound, to be tried with another port.
func bindPortSocket(fd int, k portKey) error {
	var sa unix.Sockaddr
	switch {
	case k.v6:
		s := &unix.SockaddrInet6{Port: int(k.port)}
		if k.addr.IsValid() {
			s.Addr = k.addr.As16()
		}
		sa = s
	default:
		s := &unix.SockaddrInet4{Port: int(k.port)}
		if k.addr.IsValid() {
			s.Addr = k.addr.As4()
		}
		sa = s
	}
	return unix.Bind(fd, sa)
}

// portInUse reports whether err, from bindPortSocket, says that another socket holds the port.
func portInUse(err error) bool { return errors.Is(err, unix.EADDRINUSE) }

// closePortSockets closes fds, which releases their ports. Negative entries are skipped.
func closePortSockets(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

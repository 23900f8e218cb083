package cnm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/cnmkit/cnm/netns"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
)

// openDNSSockets opens the resolver's UDP socket and TCP listener at resolver.Address inside
// the namespace of sb (Linux makes all of 127.0.0.0/8 local on lo, which must be up: a
// sandbox's is), and a dialer that opens forwarding sockets there too, so that forwarded
// queries take the sandbox's routes. closer releases the namespace handle, once the resolver stopped serving.
func openDNSSockets(sb sandbox.Sandbox) (_ resolver.Sandbox, closer func() error, err error) {
	ns, err := netns.Open(sb.Key())
	if err != nil {
		return resolver.Sandbox{}, nil, err
	}
	var (
		pc net.PacketConn
		ln net.Listener
	)
	addr := resolver.Address.String()
	err = ns.Do(func() error {
		// A down lo has no local route for 127.0.0.0/8: the bind fails (EADDRNOTAVAIL).
		var err error
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			if errors.Is(err, unix.EADDRNOTAVAIL) {
				err = fmt.Errorf("%w (is lo up in the sandbox?)", err)
			}
			return err
		}
		if ln, err = net.Listen("tcp4", addr); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return resolver.Sandbox{}, nil, errors.Join(fmt.Errorf("open %s in sandbox %s: %w", addr, sb.ID(), err), ns.Close())
	}
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
	return resolver.Sandbox{ID: sb.ID(), UDP: pc, TCP: ln, Dial: dial}, ns.Close, nil
}

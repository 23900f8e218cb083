package cnm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/cnmkit/cnm/netns"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
)

// openDNSSockets opens the resolver's UDP socket and TCP listener at resolver.Address inside
// the namespace of sb (Linux makes all of 127.0.0.0/8 local on lo, which must be up), and a
// dialer that opens forwarding sockets there too, so that forwarded queries take the
// sandbox's routes. closer releases the namespace handle, once the resolver stopped serving.
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
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		if lo.Flags&net.FlagUp == 0 {
			return errors.New("loopback is down")
		}
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
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

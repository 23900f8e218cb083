package resolver_test

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/resolver"
	"github.com/miekg/dns"
)

// The Controller opens the sockets inside each sandbox's namespace at 127.0.0.11:53; this
// example serves sandbox "web" on loopback sockets of its own process instead.
func Example() {
	r, err := resolver.New(resolver.Config{})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	r.AddEndpoint(resolver.Endpoint{ID: "e1", NetworkID: "n1", NetworkName: "new_bridge", SandboxID: "db",
		Names: []string{"db", "database"}, IPv4: netip.MustParseAddr("10.10.0.2")})
	r.AddEndpoint(resolver.Endpoint{ID: "e2", NetworkID: "n1", NetworkName: "new_bridge", SandboxID: "web",
		Names: []string{"web"}, IPv4: netip.MustParseAddr("10.10.0.3")})

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // in a sandbox, 127.0.0.11:53 as the UDP socket
	if err != nil {
		panic(err)
	}
	if err := r.Serve(resolver.Sandbox{ID: "web", UDP: pc, TCP: ln}); err != nil {
		panic(err)
	}

	for _, name := range []string{"database.", "db.new_bridge.", "nosuch."} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		m, err := dns.Exchange(q, pc.LocalAddr().String())
		if err != nil {
			panic(err)
		}
		fmt.Print(name, " ", dns.RcodeToString[m.Rcode])
		for _, rr := range m.Answer {
			fmt.Print(" ", rr.(*dns.A).A)
		}
		fmt.Println()
	}
	// Output:
	// database. NOERROR 10.10.0.2
	// db.new_bridge. NOERROR 10.10.0.2
	// nosuch. NXDOMAIN
}

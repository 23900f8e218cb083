package resolver

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// reply is what the Resolver does with one query: send resp (nil: send nothing), or forward
// the query (fwd) to the sandbox's upstreams.
type reply struct {
	resp []byte
	fwd  bool
	size int // the most the asker takes over UDP
}

// headerLen is the length of a DNS message's header.
const headerLen = 12

// handle decides what to do with the message req that sandbox sb sent, over TCP or UDP. It
// never panics: whatever req holds, the result is a well-formed reply, a forward of a
// well-formed query, or nothing.
func (r *Resolver) handle(sb string, req []byte, tcp bool) reply {
	if len(req) < headerLen || req[2]&0x80 != 0 { // too short for a header, or a response
		return reply{}
	}
	var m dns.Msg
	if err := m.Unpack(req); err != nil {
		return reply{resp: errorReply(req, dns.RcodeFormatError)}
	}
	if m.Opcode != dns.OpcodeQuery {
		return reply{resp: errorReply(req, dns.RcodeNotImplemented)}
	}
	if len(m.Question) != 1 {
		return reply{resp: errorReply(req, dns.RcodeFormatError)}
	}
	size := dns.MinMsgSize
	if opt := m.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	if tcp {
		size = 0 // no truncation
	}
	q := m.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return reply{fwd: true, size: size}
	}
	if q.Qtype == dns.TypePTR {
		addr, ok := reverseAddr(q.Name)
		if !ok {
			return reply{fwd: true, size: size}
		}
		names := r.lookupAddr(sb, addr)
		if len(names) == 0 {
			return reply{fwd: true, size: size}
		}
		resp := newReply(&m)
		for _, n := range names {
			resp.Answer = append(resp.Answer, &dns.PTR{Hdr: rrHeader(q.Name, dns.TypePTR), Ptr: n})
		}
		return reply{resp: pack(resp, size), size: size}
	}
	l := r.lookupName(sb, normName(q.Name))
	if !l.local {
		return reply{fwd: true, size: size}
	}
	resp := newReply(&m)
	if !l.found {
		resp.Rcode = dns.RcodeNameError
		return reply{resp: pack(resp, size), size: size}
	}
	for _, a := range l.addrs {
		switch {
		case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			resp.Answer = append(resp.Answer, &dns.A{Hdr: rrHeader(q.Name, dns.TypeA), A: a.AsSlice()})
		case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: rrHeader(q.Name, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	return reply{resp: pack(resp, size), size: size}
}

// newReply starts the local answer to m: authoritative, recursion available, with an OPT
// record when m had one.
func newReply(m *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(m)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	if m.IsEdns0() != nil {
		resp.SetEdns0(4096, false)
	}
	return resp
}

func rrHeader(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: TTL}
}

// pack packs m for an asker that takes size bytes over UDP (TCP askers take any size:
// size 0), truncating it when needed. It returns nil if m does not pack.
func pack(m *dns.Msg, size int) []byte {
	if size > 0 {
		m.Truncate(size)
	}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// errorReply returns a reply with rcode to the query req, whose header at least is readable:
// its ID and opcode, its recursion-desired bit, and no section.
func errorReply(req []byte, rcode int) []byte {
	b := make([]byte, headerLen)
	copy(b, req[:2])                        // ID
	b[2] = 0x80 | req[2]&0x78 | req[2]&0x01 // QR, opcode, RD
	b[3] = 0x80 | byte(rcode&0x0f)          // RA, rcode
	binary.BigEndian.PutUint16(b[4:], 0)    // no question
	return b
}

// servfail returns the SERVFAIL reply to req, a query handle accepted for forwarding.
func servfail(req []byte) []byte { return errorReply(req, dns.RcodeServerFailure) }

// reverseAddr parses the name of a PTR query: a.b.c.d.in-addr.arpa. or the 32 nibbles of an
// ip6.arpa name. It reports false for anything else (a partial name, a classless zone).
func reverseAddr(name string) (netip.Addr, bool) {
	name = normName(name)
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		var a [4]byte
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 10, 8)
			if err != nil || (len(p) > 1 && p[0] == '0') {
				return netip.Addr{}, false
			}
			a[3-i] = byte(v)
		}
		return netip.AddrFrom4(a), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 32 {
			return netip.Addr{}, false
		}
		var a [16]byte
		for i, p := range parts {
			if len(p) != 1 {
				return netip.Addr{}, false
			}
			v, err := strconv.ParseUint(p, 16, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			n := 31 - i // nibble index from the most significant
			if n%2 == 0 {
				a[n/2] |= byte(v) << 4
			} else {
				a[n/2] |= byte(v)
			}
		}
		return netip.AddrFrom16(a), true
	}
	return netip.Addr{}, false
}

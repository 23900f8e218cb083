package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// tcpIdle is how long a TCP connection from a sandbox may stay silent before it is closed.
const tcpIdle = 10 * time.Second

// maxMsg is the largest DNS message: what a read buffer holds.
const maxMsg = dns.MaxMsgSize

// served is one sandbox being served.
type served struct {
	r         *Resolver
	id        string
	udp       net.PacketConn
	tcp       net.Listener
	upstreams []netip.AddrPort
	dial      Dialer
	ctx       context.Context // ended by stop: cancels the forwards in flight
	cancel    context.CancelFunc
	fwd       chan struct{} // semaphore of this sandbox's forwards in flight
	wg        sync.WaitGroup

	mu     sync.Mutex // guards following
	conns  map[net.Conn]bool
	tokens float64
	last   time.Time
}

// Serve starts serving sandbox sb on its sockets, which the Resolver owns from now on. A
// sandbox that is served already is stopped first (its old sockets closed). It fails, closing
// sb's sockets, with an error for a missing ID or socket, and with ErrClosed after Close.
func (r *Resolver) Serve(sb Sandbox) error {
	closeAll := func() {
		if sb.UDP != nil {
			sb.UDP.Close()
		}
		if sb.TCP != nil {
			sb.TCP.Close()
		}
	}
	if sb.ID == "" || sb.UDP == nil || sb.TCP == nil {
		closeAll()
		return fmt.Errorf("resolver: serve sandbox %q: ID, UDP and TCP are required", sb.ID)
	}
	dial := sb.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{
		r: r, id: sb.ID, udp: sb.UDP, tcp: sb.TCP, upstreams: slices.Clone(sb.Upstreams), dial: dial,
		ctx: ctx, cancel: cancel, fwd: make(chan struct{}, r.cfg.MaxSandboxForwards),
		conns: make(map[net.Conn]bool), tokens: r.cfg.QueryRate, last: r.cfg.Now(),
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		cancel()
		closeAll()
		return fmt.Errorf("resolver: serve sandbox %s: %w", sb.ID, ErrClosed)
	}
	old := r.served[sb.ID]
	r.served[sb.ID] = s
	s.wg.Add(2)
	r.mu.Unlock()
	if old != nil {
		old.stop()
	}
	go s.serveUDP()
	go s.serveTCP()
	return nil
}

// Stop stops serving sandbox id: its sockets are closed, its forwards cancelled, and Stop
// returns once every goroutine serving it has ended. Stopping a sandbox not served does
// nothing.
func (r *Resolver) Stop(id string) {
	r.mu.Lock()
	s := r.served[id]
	delete(r.served, id)
	r.mu.Unlock()
	if s != nil {
		s.stop()
	}
}

// Serving returns the IDs of the sandboxes served, sorted.
func (r *Resolver) Serving() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var ids []string
	for id := range r.served {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Close stops serving every sandbox and waits for all the Resolver's goroutines; later Serve
// calls fail with ErrClosed. Close is idempotent.
func (r *Resolver) Close() error {
	r.mu.Lock()
	r.closed = true
	all := r.served
	r.served = make(map[string]*served)
	r.mu.Unlock()
	for _, s := range all {
		s.stop()
	}
	return nil
}

func (s *served) stop() {
	s.cancel()
	s.udp.Close()
	s.tcp.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// allow takes a token from the sandbox's bucket, and reports whether there was one.
func (s *served) allow() bool {
	rate := s.r.cfg.QueryRate
	if rate < 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.r.cfg.Now()
	if d := now.Sub(s.last); d > 0 {
		s.tokens = min(rate, s.tokens+d.Seconds()*rate)
		s.last = now
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// acquire takes a forward slot of the sandbox and one of the Resolver, without waiting, and
// reports whether it got both.
func (s *served) acquire() bool {
	select {
	case s.fwd <- struct{}{}:
	default:
		return false
	}
	select {
	case s.r.fwd <- struct{}{}:
		return true
	default:
		<-s.fwd
		return false
	}
}

func (s *served) release() {
	<-s.r.fwd
	<-s.fwd
}

// closing reports whether err is the end of a socket that stop closed.
func (s *served) closing(err error) bool {
	return s.ctx.Err() != nil || errors.Is(err, net.ErrClosed)
}

func (s *served) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, maxMsg)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			if s.closing(err) {
				return
			}
			s.r.log.Debug("dns: udp read", "sandbox", s.id, "err", err)
			continue
		}
		if !s.allow() {
			continue
		}
		rep := s.r.handle(s.id, buf[:n], false)
		if rep.resp != nil {
			s.udp.WriteTo(rep.resp, from)
		}
		if !rep.fwd {
			continue
		}
		req := slices.Clone(buf[:n])
		if !s.acquire() {
			s.udp.WriteTo(servfail(req), from)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release()
			if resp := s.forward(req, rep.size); resp != nil {
				s.udp.WriteTo(resp, from)
			}
		}()
	}
}

func (s *served) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			if s.closing(err) {
				return
			}
			s.r.log.Debug("dns: tcp accept", "sandbox", s.id, "err", err)
			select {
			case <-time.After(10 * time.Millisecond): // EMFILE and the like: do not spin
			case <-s.ctx.Done():
				return
			}
			continue
		}
		s.mu.Lock()
		if len(s.conns) >= s.r.cfg.MaxTCPConns || s.ctx.Err() != nil {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn answers the queries of one TCP connection, one at a time, until it is closed,
// silent for tcpIdle, or sends something that is not a query.
func (s *served) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 2+maxMsg)
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(buf))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return
		}
		if !s.allow() {
			continue
		}
		rep := s.r.handle(s.id, buf[:n], true)
		resp := rep.resp
		if rep.fwd {
			if s.acquire() {
				resp = s.forward(buf[:n], 0)
				s.release()
			} else {
				resp = servfail(buf[:n])
			}
		}
		if resp == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(tcpIdle))
		if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp)))); err != nil {
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// forward asks the sandbox's upstreams for req, in order, within Config.Timeout, and returns
// the first answer, truncated to size for a UDP asker (size 0: a TCP asker), or SERVFAIL.
// Over UDP, a truncated answer is asked again over TCP.
func (s *served) forward(req []byte, size int) []byte {
	if len(s.upstreams) == 0 {
		return servfail(req)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.r.cfg.Timeout)
	defer cancel()
	each := s.r.cfg.Timeout / time.Duration(len(s.upstreams))
	proto := "udp"
	if size == 0 {
		proto = "tcp"
	}
	for _, up := range s.upstreams {
		resp, err := s.exchange(ctx, proto, up, req, each)
		if err == nil && proto == "udp" && resp[2]&0x02 != 0 { // TC: ask again over TCP
			if full, terr := s.exchange(ctx, "tcp", up, req, each); terr == nil {
				resp = full
			}
		}
		if err != nil {
			s.r.log.Debug("dns: forward", "sandbox", s.id, "upstream", up, "err", err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if size > 0 && len(resp) > size {
			var m dns.Msg
			if m.Unpack(resp) != nil {
				return servfail(req)
			}
			if resp = pack(&m, size); resp == nil {
				return servfail(req)
			}
		}
		return resp
	}
	if s.ctx.Err() != nil {
		return nil // stopping: nobody to answer
	}
	return servfail(req)
}

// exchange sends req to up over proto and returns its answer: a response with req's ID.
func (s *served) exchange(ctx context.Context, proto string, up netip.AddrPort, req []byte, limit time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c, err := s.dial(ctx, proto, up.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if proto == "tcp" {
		msg := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(req)), uint16(len(req)))
		if _, err := c.Write(append(msg, req...)); err != nil {
			return nil, err
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, err
		}
		resp := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, err
		}
		if !answers(resp, req) {
			return nil, fmt.Errorf("upstream %s: not an answer to the query", up)
		}
		return resp, nil
	}
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMsg)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if answers(buf[:n], req) {
			return slices.Clone(buf[:n]), nil
		}
	}
}

// answers reports whether resp is a response with the ID of req.
func answers(resp, req []byte) bool {
	return len(resp) >= headerLen && resp[0] == req[0] && resp[1] == req[1] && resp[2]&0x80 != 0
}

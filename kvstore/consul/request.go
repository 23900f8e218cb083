package consul

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/kvstore"
)

// callCtx returns the context of one request: ctx bounded by timeout and ended by Close.
func (s *Store) callCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	stop := context.AfterFunc(s.ctx, cancel)
	return cctx, func() { stop(); cancel() }
}

// call runs one request of the Consul client with query options bound to ctx and the
// request timeout, and maps its error (see [Store.mapErr]).
func (s *Store) call(ctx context.Context, do func(q *api.QueryOptions) error) error {
	cctx, cancel := s.callCtx(ctx, s.timeout)
	defer cancel()
	return s.mapErr(ctx, cctx, do((&api.QueryOptions{}).WithContext(cctx)))
}

// write is call for write requests.
func (s *Store) write(ctx context.Context, do func(w *api.WriteOptions) error) error {
	cctx, cancel := s.callCtx(ctx, s.timeout)
	defer cancel()
	return s.mapErr(ctx, cctx, do((&api.WriteOptions{}).WithContext(cctx)))
}

// mapErr maps the error of a request made with cctx, derived from the caller's ctx: the
// caller's ctx error when ctx ended; [kvstore.ErrClosed] when the store closed meanwhile;
// [kvstore.ErrUnavailable], naming the agent, when cctx timed out, the agent could not be
// reached or it answered with a server error (no leader, no quorum, rate limit). A refused
// certificate and other answers (403, 400) are errors of no class, naming the agent.
func (s *Store) mapErr(ctx, cctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if s.ctx.Err() != nil {
		return kvstore.ErrClosed
	}
	if cctx.Err() != nil {
		return s.unavailable(fmt.Errorf("no answer within %v", s.timeout))
	}
	var se api.StatusError
	if errors.As(err, &se) {
		if se.Code >= 500 || se.Code == 429 {
			return s.unavailable(err)
		}
		return fmt.Errorf("consul agent %s: %w", s.addr, err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// A certificate the agent or the client refuses, or TLS against plain HTTP, is a
		// configuration error: retrying does not help.
		if msg := ue.Err.Error(); strings.Contains(msg, "x509: ") || strings.Contains(msg, "tls: ") {
			return fmt.Errorf("consul agent %s: TLS: %w", s.addr, err)
		}
		return s.unavailable(err) // transport: refused, reset, EOF, TLS handshake timeout
	}
	// The client formats some answers itself (session renew: "Unexpected response code: 500").
	if strings.Contains(err.Error(), "response code: 5") || strings.Contains(err.Error(), "No cluster leader") {
		return s.unavailable(err)
	}
	return fmt.Errorf("consul agent %s: %w", s.addr, err)
}

// unavailable wraps cause in [kvstore.ErrUnavailable], naming the agent.
func (s *Store) unavailable(cause error) error {
	return fmt.Errorf("%w: consul agent %s: %w", kvstore.ErrUnavailable, s.addr, cause)
}

// txnResult is the answer to a transaction: committed (ok), or rolled back with Errors.
type txnResult struct {
	ok bool
	api.TxnResponse
}

// txn runs ops as one transaction (a read-only one when no op writes). A transaction that
// Consul rolled back is not an error: the result says which ops failed.
func (s *Store) txn(ctx context.Context, ops api.TxnOps) (*txnResult, error) {
	res := &txnResult{}
	err := s.write(ctx, func(w *api.WriteOptions) error {
		_, err := s.client.Raw().Write("/v1/txn", ops, &res.TxnResponse, w)
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 409 {
			// Rolled back: the body lists the errors.
			if jerr := json.Unmarshal([]byte(se.Body), &res.TxnResponse); jerr != nil {
				return fmt.Errorf("decode rolled-back transaction: %w (%s)", jerr, se.Body)
			}
			return nil
		}
		if err == nil {
			res.ok = true
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// index returns the revision of a committed write transaction: the highest ModifyIndex among
// its results.
func (r *txnResult) index() uint64 {
	var idx uint64
	for _, x := range r.Results {
		if x != nil && x.KV != nil {
			idx = max(idx, x.KV.ModifyIndex)
		}
	}
	return idx
}

// checkFailures are the messages of Consul's failed preconditions in a transaction (see
// agent/consul/state/txn.go in Consul).
var checkFailures = []string{
	"index is stale",           // cas, delete-cas
	"failed index check",       // check-index: another revision
	"failed to check index",    // check-index: missing key
	"exists",                   // check-not-exists
	"failed session check",     // check-session: another session
	"failed to check session",  // check-session: missing key
	"lock is already held",     // lock
	"doesn't exist",            // get
	"isn't held, or is held b", // unlock
}

// failedCheck reports whether a rolled-back transaction failed only on preconditions, as
// opposed to a refusal (permissions, limits, an invalid session).
func (r *txnResult) failedCheck() bool {
	if len(r.Errors) == 0 {
		return false
	}
	for _, e := range r.Errors {
		// Keys are quoted in the messages; a key must not look like a failed check.
		what := quoted.ReplaceAllString(e.What, `""`)
		if !slices.ContainsFunc(checkFailures, func(m string) bool { return strings.Contains(what, m) }) {
			return false
		}
	}
	return true
}

// quoted matches a Go-quoted string, as Consul quotes keys in its messages.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// failure describes a rolled-back transaction.
func (r *txnResult) failure() error {
	if len(r.Errors) == 0 {
		return errors.New("consul transaction rolled back")
	}
	msgs := make([]string, len(r.Errors))
	for i, e := range r.Errors {
		msgs[i] = fmt.Sprintf("op %d: %s", e.OpIndex, e.What)
	}
	return fmt.Errorf("consul transaction rolled back: %s", strings.Join(msgs, "; "))
}

// invalidSession reports whether a rolled-back transaction failed because its session is
// gone.
func (r *txnResult) invalidSession() bool {
	for _, e := range r.Errors {
		if strings.Contains(e.What, "invalid session") {
			return true
		}
	}
	return false
}

// Tombstones: a version byte, the big-endian revision of the deleted key's last put, and the
// value it had.
const (
	tombVersion    = 1
	tombHeaderSize = 9
)

func encodeTombstone(prevRev uint64, prevValue []byte) []byte {
	b := make([]byte, tombHeaderSize, tombHeaderSize+len(prevValue))
	b[0] = tombVersion
	binary.BigEndian.PutUint64(b[1:], prevRev)
	return append(b, prevValue...)
}

// decodeTombstone returns what a tombstone records; ok is false for a value it cannot read
// (then the delete is reported without the put before it).
func decodeTombstone(b []byte) (prevRev uint64, prevValue []byte, ok bool) {
	if len(b) < tombHeaderSize || b[0] != tombVersion {
		return 0, nil, false
	}
	return binary.BigEndian.Uint64(b[1:]), b[tombHeaderSize:], true
}

// sortPairs sorts pairs by key.
func sortPairs(pairs []kvstore.KVPair) {
	slices.SortFunc(pairs, func(a, b kvstore.KVPair) int { return strings.Compare(a.Key, b.Key) })
}

package gossip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// The keys a node uses under Config.StorePrefix.
const (
	storeKeyring = "/keyring"       // the cluster's rotation state: target keys, phase, schedule
	storeLock    = "/rotation-lock" // the lock whose holder drives the rotations
)

// storeRecord is the cluster's rotation state as kept at <StorePrefix>/keyring: JSON with
// the keys in base64, like the keyring file. Only the rotation driver writes it (with a
// compare-and-swap on the revision it last saw), plus a node that finds no record at New
// (create-only).
type storeRecord struct {
	Version int `json:"version"`
	rotationFileRec
	// Driver is the node that wrote this state: the holder of the rotation lock, or the node
	// that bootstrapped the record.
	Driver string `json:"driver"`
}

const storeRecordVersion = 1

func encodeStoreRecord(st *rotationState, driver string) ([]byte, error) {
	rec := storeRecord{Version: storeRecordVersion, rotationFileRec: fileRec(st), Driver: driver}
	return json.Marshal(&rec)
}

// decodeStoreRecord parses the record at key. Errors name the key, never the content: the
// record holds key material.
func decodeStoreRecord(key string, b []byte) (*rotationState, string, error) {
	var rec storeRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, "", errclass.Invalid("Store", key, "not a gossip keyring record")
	}
	if rec.Version != storeRecordVersion {
		return nil, "", errclass.Invalid("Store", key, fmt.Sprintf("unknown keyring record version %d", rec.Version))
	}
	st, err := rec.rotationFileRec.state()
	if err != nil {
		return nil, "", &errclass.InvalidParameterError{Field: "Store", Value: key, Reason: "bad rotation state", Err: err}
	}
	return st, rec.Driver, nil
}

// readStore returns the rotation state kept in the store and the revision of its record; a
// missing record returns (nil, 0, nil).
func (n *Node) readStore(parent context.Context) (*rotationState, uint64, error) {
	kv, err := n.store.Get(parent, n.ringKey)
	if errors.Is(err, kvstore.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %q from the store: %w", n.ringKey, err)
	}
	clear, sealed, err := unsealStoreRecord(n.sealer, n.ringKey, kv.Value)
	if err != nil {
		return nil, 0, fmt.Errorf("read %q from the store: %w", n.ringKey, err)
	}
	st, _, err := decodeStoreRecord(n.ringKey, clear)
	if err != nil {
		return nil, 0, fmt.Errorf("read %q from the store: %w", n.ringKey, err)
	}
	if !sealed && n.sealer != nil {
		n.clearRecord.Store(true)
	}
	return st, kv.Revision, nil
}

// writeStore writes st at the keyring key if the record's revision is still prev (0: only if
// there is no record) and returns the new revision. A record changed since returns an error
// matching kvstore.ErrKeyModified or kvstore.ErrKeyExists.
func (n *Node) writeStore(parent context.Context, st *rotationState, prev uint64) (uint64, error) {
	b, err := encodeStoreRecord(st, n.name)
	if err != nil {
		return 0, err
	}
	if n.sealer != nil {
		if b, err = n.sealer.seal(n.ringKey, b); err != nil {
			return 0, fmt.Errorf("seal %q: %w", n.ringKey, err)
		}
	}
	rev, err := n.store.AtomicPut(parent, n.ringKey, b, prev)
	if err != nil {
		return 0, fmt.Errorf("write %q to the store: %w", n.ringKey, err)
	}
	return rev, nil
}

// bootstrapStore creates the record with st when the store has none (create-only, so two
// nodes that start at once agree on one of their states). It returns the state the store
// holds afterwards: st, or the one another node wrote first.
func (n *Node) bootstrapStore(st *rotationState) (*rotationState, error) {
	_, err := n.writeStore(n.ctx, st, 0)
	if err == nil {
		n.log.Info("keyring record created in the store", "key", n.ringKey, "epoch", st.Epoch,
			"primary_key", KeyID(st.wantPrimary()))
		return st, nil
	}
	if !errors.Is(err, kvstore.ErrKeyExists) && !errors.Is(err, kvstore.ErrKeyModified) {
		return nil, err
	}
	got, _, err := n.readStore(n.ctx)
	if err != nil {
		return nil, err
	}
	if got == nil {
		return nil, fmt.Errorf("%q vanished from the store while it was created: %w", n.ringKey, kvstore.ErrKeyNotFound)
	}
	return got, nil
}

// leadership is a held rotation lock. The campaign goroutine takes the lock and hands it to
// keyLoop, which from then on owns it: it drives rotations with it, and gives it up (Unlock)
// on Leave and Close, or drops it when the store reports it lost.
type leadership struct {
	u     kvstore.Unlocker
	ended chan struct{} // closed by keyLoop once it no longer drives with this lock
	// keyLoop only:
	synced  bool   // the store's record has been read (and reconciled) under this lock
	rev     uint64 // revision of the record this node last read or wrote
	failing bool   // the last store call failed: repeat failures are logged at debug level
}

// storeFailed logs a failed store call of the driver: at warn level the first time after a
// success, at debug level while the store keeps failing (the driver retries every tick).
func (n *Node) storeFailed(l *leadership, msg string, err error) {
	if l.failing {
		n.log.Debug(msg, "err", err)
		return
	}
	l.failing = true
	n.log.Warn(msg+"; retrying", "err", err)
}

// campaign tries, for as long as the node has not left or closed, to take the rotation lock,
// hands each lock it takes to keyLoop and waits until keyLoop is done with it.
func (n *Node) campaign() {
	const maxBackoff = 30 * time.Second
	backoff := min(time.Second, maxBackoff)
	failing := false
	for {
		u, err := n.locker.Lock(n.campCtx, n.lockKey)
		if err != nil {
			if n.campCtx.Err() != nil {
				return
			}
			if errors.Is(err, kvstore.ErrClosed) {
				n.log.Error("the store is closed: this node no longer competes to drive key rotations", "lock", n.lockKey)
				return
			}
			if !failing {
				n.log.Warn("cannot take the rotation lock; retrying", "lock", n.lockKey, "err", err)
				failing = true
			} else {
				n.log.Debug("cannot take the rotation lock", "lock", n.lockKey, "err", err)
			}
			select {
			case <-n.campCtx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		failing = false
		backoff = time.Second
		l := &leadership{u: u, ended: make(chan struct{})}
		select {
		case n.leadCh <- l:
		case <-n.campCtx.Done():
			n.unlock(l, "leaving")
			return
		}
		select {
		case <-l.ended:
		case <-n.campCtx.Done():
			return // keyLoop gives the lock up
		}
	}
}

// unlock gives the rotation lock up (or, when the store reported it lost, lets the backend
// clean up after it). It runs on keyLoop, or on campaign for a lock keyLoop never took, so no
// rotation step is being written meanwhile.
func (n *Node) unlock(l *leadership, why string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(n.ctx), n.store.Timeout())
	defer cancel()
	switch err := l.u.Unlock(ctx); {
	case err == nil:
		n.log.Info("released the rotation lock", "lock", n.lockKey, "reason", why)
	case errors.Is(err, kvstore.ErrLockLost):
		n.log.Debug("rotation lock already lost", "lock", n.lockKey, "reason", why)
	default:
		n.log.Warn("cannot release the rotation lock; it frees itself when its lease runs out",
			"lock", n.lockKey, "reason", why, "err", err)
	}
	close(l.ended)
}

// held reports whether l is a lock the store has not reported lost.
func (l *leadership) held() bool {
	select {
	case <-l.u.Lost():
		return false
	default:
		return true
	}
}

// syncStore reconciles, once per lock taken, the rotation state this node knows with the
// store's: the newer one wins, and the store gets ours if it lags (a cluster that ran without a
// store, or a record lost). It reports whether the node may drive. keyLoop only.
func (n *Node) syncStore(l *leadership) bool {
	if l.synced {
		return true
	}
	st, rev, err := n.readStore(n.ctx)
	if err != nil {
		n.storeFailed(l, "rotation driver cannot read the store", err)
		return false
	}
	l.rev = rev
	n.rotMu.Lock()
	cur := n.rot
	n.rotMu.Unlock()
	c := 1 // > 0: ours is newer (or the store has none)
	if st != nil {
		c = cur.compare(st)
	}
	switch {
	case c < 0:
		n.adoptRotation(st)
	case c > 0:
		rev, err := n.writeStore(n.ctx, cur, l.rev)
		if err != nil {
			n.storeFailed(l, "rotation driver cannot write its state to the store", err)
			return false
		}
		l.rev = rev
	}
	l.synced = true
	l.failing = false
	n.log.Info("driving key rotations", "lock", n.lockKey, "epoch", n.KeyringStatus().Epoch)
	return true
}

// commitStore writes next, the rotation state the driver moves to, to the store before any
// member sees it, with a compare-and-swap on the record's revision: if another driver wrote
// since (this node's lock ran out meanwhile), the write fails and the node reads the store
// again before it drives. It reports whether next may be adopted. keyLoop only.
func (n *Node) commitStore(l *leadership, next *rotationState) bool {
	rev, err := n.writeStore(n.ctx, next, l.rev)
	if err != nil {
		if errors.Is(err, kvstore.ErrKeyModified) || errors.Is(err, kvstore.ErrKeyExists) {
			n.log.Warn("the rotation state in the store changed under this driver; reading it again", "key", n.ringKey)
			l.synced = false
		} else {
			n.storeFailed(l, "rotation driver cannot write the store", err)
		}
		return false
	}
	l.rev = rev
	l.failing = false
	return true
}

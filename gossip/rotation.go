package gossip

import (
	"bytes"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
)

// KeyringStatus describes a node's keys and the cluster's key rotation as the node knows it.
// Keys appear as their [KeyID], never as key material.
type KeyringStatus struct {
	Primary string   // the key this node encrypts with
	Keys    []string // every key this node holds, primary first
	// Epoch counts the rotations the cluster has started; 0 until the first one.
	Epoch uint64
	// Phase is how far rotation Epoch has got: "install" (the new keys are being installed
	// everywhere), "use" (the new primary is being switched to everywhere), "remove" (the
	// oldest key is being removed everywhere) or "done".
	Phase string
	// Target is the keyring rotation Epoch converges to, oldest key first.
	Target []string
	// TargetPrimary is the primary of Target once the rotation is through "use".
	TargetPrimary string
	// NextRotation is when the next rotation is due.
	NextRotation time.Time
}

// KeyringStatus returns this node's keys and the rotation state it knows.
func (n *Node) KeyringStatus() KeyringStatus {
	n.rotMu.Lock()
	st := n.rot
	n.rotMu.Unlock()
	n.keyMu.Lock()
	primary, ids := ringIDs(n.ring)
	n.keyMu.Unlock()
	s := KeyringStatus{Primary: primary, Keys: ids, Epoch: st.Epoch, Phase: st.Phase.String(),
		TargetPrimary: KeyID(st.Keys[st.Primary]), NextRotation: time.Unix(0, st.Next)}
	for _, k := range st.Keys {
		s.Target = append(s.Target, KeyID(k))
	}
	return s
}

// WatchKeys subscribes to the changes of this node's keyring: a [KeyringStatus] after each
// step of a rotation that changed it (a key installed, a new primary, a key removed) and after
// each change by hand. Statuses carry key IDs, never key material. They are queued without
// bound and never dropped; the channel is closed by cancel or Close. cancel is idempotent.
func (n *Node) WatchKeys() (statuses <-chan KeyringStatus, cancel func()) {
	s := newStream[KeyringStatus]()
	n.mu.Lock()
	n.keyWatchers[s] = struct{}{}
	n.mu.Unlock()
	if !n.start(func() { s.run(n.ctx) }) {
		n.mu.Lock()
		delete(n.keyWatchers, s)
		n.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	return s.out, func() {
		n.mu.Lock()
		delete(n.keyWatchers, s)
		n.mu.Unlock()
		s.stop()
	}
}

// Keys returns a copy of the keys this node holds, primary first. It is what another node
// needs in Config.Keys to join after it missed two rotations or more (see the package
// documentation); handle it as the secret it is.
func (n *Node) Keys() [][]byte {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	return ringKeys(n.ring)
}

// AddKey installs key on this node only, for decryption, and persists the keyring. It is for
// recovery by hand; the cluster's rotations manage the keys otherwise, and the next one that
// reaches its remove phase drops a key added this way unless it is in the rotation's target.
// It returns an [errclass.InvalidParameterError] for a key that is not 16, 24 or 32 bytes and
// an [errclass.ConflictError] when the keyring is full. Adding a key already installed does
// nothing.
func (n *Node) AddKey(key []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if n.isClosed() {
		return ErrClosed
	}
	n.keyMu.Lock()
	keys := ringKeys(n.ring)
	if slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }) {
		n.keyMu.Unlock()
		return nil
	}
	if len(keys) >= maxKeys {
		n.keyMu.Unlock()
		return &errclass.ConflictError{Kind: "keyring", Name: n.name, Reason: "holds the maximum number of keys"}
	}
	err := n.ring.AddKey(bytes.Clone(key))
	n.persistKeysLocked()
	n.keyMu.Unlock()
	if err != nil {
		return errclass.Invalid("key", KeyID(key), err.Error())
	}
	n.log.Info("key added by hand", "key", KeyID(key))
	n.advertiseKeys()
	return nil
}

// UseKey makes key, which must be installed, this node's primary (the key it encrypts with)
// and persists the keyring. Like AddKey it is for recovery by hand: switching one node to a key
// its peers lack cuts it off. It returns an [errclass.NotFoundError] for a key that is not
// installed (the error names the key by its KeyID).
func (n *Node) UseKey(key []byte) error {
	if n.isClosed() {
		return ErrClosed
	}
	n.keyMu.Lock()
	if !slices.ContainsFunc(ringKeys(n.ring), func(k []byte) bool { return bytes.Equal(k, key) }) {
		n.keyMu.Unlock()
		return &errclass.NotFoundError{Kind: "key", Name: KeyID(key)}
	}
	err := n.ring.UseKey(key)
	n.persistKeysLocked()
	n.keyMu.Unlock()
	if err != nil {
		return &errclass.NotFoundError{Kind: "key", Name: KeyID(key), Err: err}
	}
	n.log.Info("primary key set by hand", "key", KeyID(key))
	n.advertiseKeys()
	return nil
}

// RemoveKey removes key from this node's keyring and persists it. It returns an
// [errclass.ConflictError] for the primary key (use another key first) and an
// [errclass.NotFoundError] for a key that is not installed.
func (n *Node) RemoveKey(key []byte) error {
	if n.isClosed() {
		return ErrClosed
	}
	n.keyMu.Lock()
	keys := ringKeys(n.ring)
	if len(keys) > 0 && bytes.Equal(keys[0], key) {
		n.keyMu.Unlock()
		return &errclass.ConflictError{Kind: "key", Name: KeyID(key), Reason: "is the primary key"}
	}
	if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }) {
		n.keyMu.Unlock()
		return &errclass.NotFoundError{Kind: "key", Name: KeyID(key)}
	}
	primary := keys[0]
	_, err := ringRemove(n.ring, func(k []byte) bool { return bytes.Equal(k, key) },
		func(k []byte) bool { return bytes.Equal(k, primary) || (len(keys) > 1 && bytes.Equal(k, keys[1])) })
	n.persistKeysLocked()
	n.keyMu.Unlock()
	if err != nil {
		return err
	}
	n.log.Info("key removed by hand", "key", KeyID(key))
	n.advertiseKeys()
	return nil
}

// persistKeysLocked writes the keyring file, if there is one. keyMu is held.
func (n *Node) persistKeysLocked() {
	if n.cfg.KeyringFile == "" {
		return
	}
	n.rotMu.Lock()
	st := n.rot
	n.rotMu.Unlock()
	if err := saveKeyringFile(n.cfg.KeyringFile, ringKeys(n.ring), st); err != nil {
		n.log.Error("cannot persist keyring", "file", n.cfg.KeyringFile, "err", err)
	}
}

// advertiseKeys re-advertises the node's meta data (its key IDs) to the cluster, which is how
// the rotation driver learns that this node has done a step, and tells the WatchKeys
// subscribers. It is called after every change of the keyring. The alive message is queued at
// once; UpdateNode's wait for it to be sent is cut short.
func (n *Node) advertiseKeys() {
	st := n.KeyringStatus()
	n.mu.Lock()
	for s := range n.keyWatchers {
		s.push(st)
	}
	n.mu.Unlock()
	if err := n.ml.UpdateNode(time.Millisecond); err != nil {
		n.log.Debug("meta update queued", "err", err)
	}
}

// adoptRotation makes st the node's rotation state if it is newer than the current one, queues
// it for gossip and wakes keyLoop to apply it. It reports whether it did.
func (n *Node) adoptRotation(st *rotationState) bool {
	n.rotMu.Lock()
	prev := n.rot
	if st.compare(prev) <= 0 {
		n.rotMu.Unlock()
		return false
	}
	st = st.clone()
	n.rot = st
	n.rotMu.Unlock()
	if st.Phase == phaseDone && (prev.Epoch != st.Epoch || prev.Phase != phaseDone) {
		n.stats.rotationsCompleted.Add(1)
	}
	n.queueCluster("rotation", encodeRotation(st))
	n.kick(n.keyKick)
	n.log.Info("key rotation", "epoch", st.Epoch, "phase", st.Phase.String(),
		"primary_key", KeyID(st.wantPrimary()), "next_rotation", time.Unix(0, st.Next).UTC())
	return true
}

// keyLoop applies the rotation state to the keyring when it changes and, on the member that
// drives rotations, moves the rotation on. With a store it also owns the rotation lock once
// campaign has taken it: it drives with it, and gives it up on Leave and Close or drops it when
// the store reports it lost. Every store write of the driver happens on this goroutine, so
// giving the lock up never overlaps one.
func (n *Node) keyLoop() {
	tick := time.Second
	if iv := n.cfg.RotationInterval; iv > 0 {
		tick = min(max(iv/20, 50*time.Millisecond), time.Second)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var lead *leadership
	defer func() {
		if lead != nil {
			n.unlock(lead, "closing")
		}
	}()
	resign := n.campCtx.Done()
	for {
		var lost <-chan struct{}
		if lead != nil {
			lost = lead.u.Lost()
		}
		select {
		case <-n.ctx.Done():
			return
		case l := <-n.leadCh:
			lead = l
			n.log.Info("took the rotation lock", "lock", n.lockKey)
		case <-lost:
			n.log.Warn("rotation lock lost (its lease ran out); no longer driving rotations", "lock", n.lockKey)
			n.unlock(lead, "lost")
			lead = nil
		case <-resign:
			if lead != nil {
				n.unlock(lead, "leaving")
				lead = nil
			}
			close(n.resigned)
			resign = nil
		case <-n.keyKick:
		case <-t.C:
		}
		n.applyRotation()
		n.driveRotation(lead)
	}
}

// applyRotation converges the keyring to the rotation state: it installs every target key,
// switches to the primary the phase calls for and, from the remove phase on, removes the keys
// the target dropped. It persists the keyring and the state and advertises the new key set.
func (n *Node) applyRotation() {
	n.rotMu.Lock()
	st := n.rot
	n.rotMu.Unlock()
	n.keyMu.Lock()
	changed := false
	if st != n.appliedTo || (st.Phase == phaseRemove && n.ringHasExtraLocked(st)) {
		var err error
		changed, err = n.convergeLocked(st)
		if err != nil {
			n.log.Error("cannot apply key rotation", "epoch", st.Epoch, "phase", st.Phase.String(), "err", err)
		}
		n.appliedTo = st
		n.persistKeysLocked()
	}
	n.keyMu.Unlock()
	if changed {
		primary, ids := ringIDs(n.ring)
		n.log.Debug("keyring changed", "epoch", st.Epoch, "phase", st.Phase.String(), "primary_key", primary, "keys", ids)
		n.advertiseKeys()
	}
}

func (n *Node) ringHasExtraLocked(st *rotationState) bool {
	return slices.ContainsFunc(n.ring.GetKeys(), func(k []byte) bool { return !st.has(k) })
}

func (n *Node) convergeLocked(st *rotationState) (changed bool, err error) {
	have := ringKeys(n.ring)
	for _, k := range st.Keys {
		if !slices.ContainsFunc(have, func(h []byte) bool { return bytes.Equal(h, k) }) {
			if err := n.ring.AddKey(bytes.Clone(k)); err != nil {
				return changed, err
			}
			changed = true
		}
	}
	want := st.wantPrimary()
	if !bytes.Equal(n.ring.GetPrimaryKey(), want) {
		if err := n.ring.UseKey(want); err != nil {
			return changed, err
		}
		changed = true
	}
	if st.Phase >= phaseRemove {
		prev := st.Keys[max(st.Primary-1, 0)]
		c, err := ringRemove(n.ring, func(k []byte) bool { return !st.has(k) },
			func(k []byte) bool { return bytes.Equal(k, want) || bytes.Equal(k, prev) })
		changed = changed || c
		if err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// driveRotation moves the rotation on if this node is the driver: with a store, the holder of
// the rotation lock (lead is the held lock, nil when not held); without one, the alive member
// with the lowest name. Each step waits until every member memberlist knows (alive or suspect)
// shows in its meta data that it has done the previous one; a member that never does is
// eventually declared dead and stops blocking. Any member that becomes the driver (the last one
// crashed) picks the rotation up where the replicated state (and the store's record, which the
// driver writes before any member sees a step) says it is.
func (n *Node) driveRotation(lead *leadership) {
	if n.cfg.RotationInterval < 0 {
		return
	}
	if n.locker != nil && (lead == nil || !lead.held() || !n.syncStore(lead)) {
		return
	}
	// The members are the alive peers (suspects included, since they may still answer) and
	// this node, whose meta data is computed afresh.
	metas := map[string][]byte{n.name: (*delegate)(n).NodeMeta(memberlist.MetaMaxSize)}
	n.mu.Lock()
	for name, p := range n.peers {
		if !p.failed {
			metas[name] = p.node.Meta
		}
	}
	n.mu.Unlock()
	if n.locker == nil {
		for name := range metas {
			if name < n.name {
				return // the driver is the alive member with the lowest name
			}
		}
	}
	n.rotMu.Lock()
	st := n.rot
	n.rotMu.Unlock()
	target := map[string]bool{}
	for _, k := range st.Keys {
		target[KeyID(k)] = true
	}
	all := func(ok func(m *nodeMeta) bool) bool {
		for _, meta := range metas {
			m, err := decodeMeta(meta)
			if err != nil || !ok(m) {
				return false
			}
		}
		return true
	}
	var next *rotationState
	switch st.Phase {
	case phaseDone:
		now := n.cfg.Now()
		if now.UnixNano() < st.Next {
			return
		}
		s, err := st.advance(now, n.cfg.RotationInterval)
		if err != nil {
			n.log.Error("cannot start key rotation", "err", err)
			return
		}
		next = s
	case phaseInstall:
		if !all(func(m *nodeMeta) bool {
			for id := range target {
				if !slices.Contains(m.Keys, id) {
					return false
				}
			}
			return true
		}) {
			return
		}
		next = st.clone()
		next.Phase = phaseUse
	case phaseUse:
		primary := KeyID(st.Keys[st.Primary])
		if !all(func(m *nodeMeta) bool { return m.Primary == primary }) {
			return
		}
		next = st.clone()
		next.Phase = phaseRemove
	case phaseRemove:
		if !all(func(m *nodeMeta) bool {
			for _, id := range m.Keys {
				if !target[id] {
					return false
				}
			}
			return true
		}) {
			return
		}
		next = st.clone()
		next.Phase = phaseDone
	default:
		return
	}
	if h := n.cfg.testAdvance; h != nil && !h(st.Phase, next.Phase) {
		return
	}
	if lead != nil && !n.commitStore(lead, next) {
		return
	}
	if st.Phase == phaseDone {
		n.log.Info("starting key rotation", "epoch", next.Epoch, "members", len(metas))
	}
	n.adoptRotation(next)
}

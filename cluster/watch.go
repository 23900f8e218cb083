package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
)

// adopt hands a network record seen in the store to the Controller, unless the network is
// being created here.
func (c *Cluster) adopt(ctx context.Context, value []byte) {
	var rec netobj.Record
	if err := json.Unmarshal(value, &rec); err != nil {
		c.log.Error("global: bad network record", "err", err)
		return
	}
	c.mu.Lock()
	_, pending := c.pending[rec.ID]
	c.mu.Unlock()
	if !pending {
		c.cfg.Networks.Adopt(ctx, rec)
	}
}

// watchNetworks keeps the global networks known here in step with the store: networks created
// on other hosts are adopted, networks deleted elsewhere forgotten. After the watch breaks (the
// store went away), it lists again and resumes.
func (c *Cluster) watchNetworks(ctx context.Context) {
	// Networks known here that a listing did not show: forgotten only once their record has
	// stayed absent for orphanGrace (a restarted server can answer a listing before it has
	// replayed its log, and a live network must not be dropped for that).
	missing := map[string]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := c.raw.Watch(ctx, netobj.KeyPrefix, 0)
		if err == nil {
			err = c.syncNetworks(ctx, missing)
		}
		if err != nil {
			c.log.Warn("global: watch networks", "err", err)
			if !retryWait(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
	events:
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					break events
				}
				id := strings.TrimPrefix(ev.Pair.Key, netobj.KeyPrefix)
				delete(missing, id)
				switch ev.Type {
				case kvstore.EventPut:
					c.adopt(ctx, ev.Pair.Value)
				case kvstore.EventDelete:
					if ev.Inferred {
						// Perhaps a restarted server that has not replayed its log yet:
						// forgotten only if the record stays absent (confirmMissing).
						missing[id] = time.Now()
					} else {
						c.cfg.Networks.Forget(ctx, id)
					}
				}
			case now := <-tick.C:
				c.confirmMissing(ctx, missing, now)
			case <-ctx.Done():
				return
			}
		}
	}
}

// confirmMissing forgets the networks of missing that have been absent for orphanGrace and
// whose record a read still does not find; those found again are no longer missing.
func (c *Cluster) confirmMissing(ctx context.Context, missing map[string]time.Time, now time.Time) {
	for id, since := range missing {
		if now.Sub(since) < orphanGrace {
			continue
		}
		_, err := c.store.Get(ctx, netobj.Key(id))
		switch {
		case errors.Is(err, kvstore.ErrKeyNotFound):
			delete(missing, id)
			c.cfg.Networks.Forget(ctx, id)
		case err == nil:
			delete(missing, id)
		}
	}
}

// syncNetworks adopts every global network in the store, and notes in missing, from now, the
// networks known here that it does not list (confirmMissing forgets them later).
func (c *Cluster) syncNetworks(ctx context.Context, missing map[string]time.Time) error {
	pairs, err := c.store.List(ctx, netobj.KeyPrefix)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, p := range pairs {
		live[strings.TrimPrefix(p.Key, netobj.KeyPrefix)] = true
		c.adopt(ctx, p.Value)
	}
	known := c.cfg.Networks.Known()
	c.mu.Lock()
	var gone []string
	for _, id := range known {
		if _, pending := c.pending[id]; !pending && !live[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	now := time.Now()
	for _, id := range gone {
		if _, ok := missing[id]; !ok {
			missing[id] = now
		}
	}
	for id := range missing {
		if live[id] {
			delete(missing, id)
		}
	}
	return nil
}

// retryWait waits for a backoff step of a background loop; false when ctx ended.
func retryWait(ctx context.Context, attempt int) bool {
	d := min(50*time.Millisecond<<min(attempt, 6), 2*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// adopt hands a network record seen in the store to the Controller, unless the network is
// being created here.
func (c *Cluster) adopt(ctx context.Context, value []byte) {
	var rec network.Record
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
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := c.raw.Watch(ctx, network.KeyPrefix, 0)
		if err == nil {
			err = c.syncNetworks(ctx)
		}
		if err != nil {
			c.log.Warn("global: watch networks", "err", err)
			if !retryWait(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
		for ev := range ch {
			id := strings.TrimPrefix(ev.Pair.Key, network.KeyPrefix)
			switch ev.Type {
			case kvstore.EventPut:
				c.adopt(ctx, ev.Pair.Value)
			case kvstore.EventDelete:
				c.cfg.Networks.Forget(ctx, id)
			}
		}
	}
}

// syncNetworks adopts every global network in the store and forgets those that are gone.
func (c *Cluster) syncNetworks(ctx context.Context) error {
	pairs, err := c.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, p := range pairs {
		live[strings.TrimPrefix(p.Key, network.KeyPrefix)] = true
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
	for _, id := range gone {
		c.cfg.Networks.Forget(ctx, id)
	}
	return nil
}

// boundedStore bounds every call to a remote store by d, so that an unreachable store fails
// the call with an error matching ErrUnavailable instead of hanging. Watch is not bounded.
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

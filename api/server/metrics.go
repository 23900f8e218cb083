package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerMetrics registers the request metrics and the gauges read from the Controller at
// each scrape.
func (s *Server) registerMetrics() error {
	s.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cnm_api_requests_total", Help: "API requests by operation and HTTP status.",
	}, []string{"op", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cnm_api_request_duration_seconds", Help: "API request latency by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
	}, []string{"op"})
	c := s.c
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	for _, col := range []prometheus.Collector{
		s.ops, s.latency,
		gauge("cnm_networks", "Networks on this host's Controller.", func() float64 { return float64(len(c.Networks())) }),
		gauge("cnm_endpoints", "Endpoints of the Controller's networks (global networks: every host's).", func() float64 {
			n := 0
			for _, nw := range c.Networks() {
				n += len(nw.Endpoints())
			}
			return float64(n)
		}),
		gauge("cnm_sandboxes", "Sandboxes on this host.", func() float64 { return float64(len(c.Sandboxes())) }),
		counter("cnm_repairs_total", "What the Controller repaired: at start and when restoring waiting networks.", func() float64 { return float64(len(c.Repairs())) }),
		counter("cnm_reclaimed_total", "Endpoints of departed hosts and orphans this host reclaimed or released in the global store.", func() float64 { return float64(len(c.Reclaimed())) }),
		gauge("cnm_waiting_networks", "Networks kept in the store that wait for their driver.", func() float64 { return float64(len(c.Waiting())) }),
		gauge("cnm_gossip_members", "Gossip members alive, this one included (0 without gossip).", func() float64 {
			if node := c.GossipNode(); node != nil {
				return float64(node.NumAlive())
			}
			return 0
		}),
		gauge("cnm_gossip_key_age_seconds", "Seconds since this agent saw the gossip primary key change (or started), 0 without gossip.", func() float64 {
			if c.GossipNode() == nil {
				return 0
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			return time.Since(s.keyChange).Seconds()
		}),
	} {
		if err := s.reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}

// watchKeys follows the gossip keyring, noting when the primary key changes, until Close.
func (s *Server) watchKeys() {
	node := s.c.GossipNode()
	if node == nil {
		return
	}
	s.primary = node.KeyringStatus().Primary
	statuses, cancel := node.WatchKeys()
	s.wg.Go(func() {
		defer cancel()
		for {
			select {
			case <-s.ctx.Done():
				return
			case st, ok := <-statuses:
				if !ok {
					return
				}
				s.mu.Lock()
				if st.Primary != s.primary {
					s.primary, s.keyChange = st.Primary, time.Now()
				}
				s.mu.Unlock()
			}
		}
	})
}

package gossip

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
)

// Stats are a node's counters since [New]. memberlist reports a rejected packet or stream only
// in its log, so the node reads memberlist's log lines to count them.
type Stats struct {
	// DecryptFailures counts packets and streams that no installed key could decrypt and
	// authenticate: a peer with another key, an eavesdropper's replay of a tampered packet,
	// garbage, or a key rotation done in the wrong order (cnm's rotation causes none).
	DecryptFailures uint64
	// LabelRejects counts packets and streams without the cluster label or with another one.
	// An empty TCP connection counts here too: memberlist sees no label on it (on a starved
	// machine a peer's fallback probe can time out before writing anything).
	LabelRejects uint64
	// MalformedPackets counts packets and streams that decrypted but that memberlist could not
	// decode.
	MalformedPackets uint64
	// MalformedMessages counts cnm messages (table events, bulk syncs, network and rotation
	// messages) that arrived intact through memberlist but failed to decode.
	MalformedMessages uint64
	// OtherErrors counts the other warnings and errors memberlist logged: timeouts, refused
	// connections, probes answered only over TCP, refuted suspicions, ...
	OtherErrors uint64

	// EventsApplied counts table events from gossip that changed this node's tables.
	EventsApplied uint64
	// EventsFromSync counts table events from bulk syncs that changed this node's tables:
	// what gossip had not delivered (or not yet).
	EventsFromSync uint64
	// BulkSyncs counts bulk syncs this node received.
	BulkSyncs uint64
	// RotationsCompleted counts rotations this node saw reach their last phase.
	RotationsCompleted uint64
}

// Rejected returns the number of packets, streams and messages the node refused.
func (s Stats) Rejected() uint64 {
	return s.DecryptFailures + s.LabelRejects + s.MalformedPackets + s.MalformedMessages
}

type counters struct {
	decryptFailures, labelRejects, malformedPackets, malformedMessages, otherErrors atomic.Uint64
	eventsApplied, eventsFromSync, bulkSyncs, rotationsCompleted                    atomic.Uint64
	lastRejection                                                                   atomic.Pointer[string] // for diagnosis
}

func (c *counters) snapshot() Stats {
	return Stats{
		DecryptFailures:    c.decryptFailures.Load(),
		LabelRejects:       c.labelRejects.Load(),
		MalformedPackets:   c.malformedPackets.Load(),
		MalformedMessages:  c.malformedMessages.Load(),
		OtherErrors:        c.otherErrors.Load(),
		EventsApplied:      c.eventsApplied.Load(),
		EventsFromSync:     c.eventsFromSync.Load(),
		BulkSyncs:          c.bulkSyncs.Load(),
		RotationsCompleted: c.rotationsCompleted.Load(),
	}
}

// mlLogWriter receives memberlist's log lines ("[LEVEL] memberlist: text"), counts the
// rejections among them and passes each to slog at the matching level.
type mlLogWriter struct {
	log *slog.Logger
	c   *counters
}

func (w *mlLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	level := slog.LevelInfo
	msg := line
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			switch line[1:i] {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			msg = strings.TrimSpace(line[i+1:])
		}
	}
	if level >= slog.LevelWarn {
		w.classify(msg)
	}
	if w.log.Enabled(context.Background(), level) {
		w.log.Log(context.Background(), level, msg, "component", "memberlist")
	}
	return len(p), nil
}

func (w *mlLogWriter) classify(msg string) {
	lower := strings.ToLower(msg)
	w.c.lastRejection.Store(&msg)
	switch {
	case strings.Contains(lower, "timeout"), strings.Contains(lower, "eof"),
		strings.Contains(lower, "connection reset"), strings.Contains(lower, "closed network connection"),
		strings.Contains(lower, "connection refused"), strings.Contains(lower, "broken pipe"):
		// A slow or vanished peer, not a rejected packet.
		w.c.otherErrors.Add(1)
	case strings.Contains(lower, "decrypt"):
		w.c.decryptFailures.Add(1)
	case strings.Contains(lower, "label"):
		w.c.labelRejects.Add(1)
	case strings.Contains(lower, "failed to decode"), strings.Contains(lower, "missing message type"),
		strings.Contains(lower, "invalid checksum"), strings.Contains(lower, "not supported"),
		strings.Contains(lower, "invalid msgtype"), strings.Contains(lower, "decompress"),
		strings.Contains(lower, "truncated"), strings.Contains(lower, "failed to receive"),
		strings.Contains(lower, "unexpected"), strings.Contains(lower, "too short"):
		w.c.malformedPackets.Add(1)
	default:
		w.c.otherErrors.Add(1)
	}
}

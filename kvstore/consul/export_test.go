package consul

import "context"

// Reap runs the store's tombstone reaper once, for tests.
func Reap(ctx context.Context, s *Store) (int, error) { return s.reap(ctx) }

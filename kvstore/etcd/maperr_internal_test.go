package etcd

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cnmkit/cnm/kvstore"
)

// TestMapErrServerDeadline: a request the server gave up on (a read without quorum) comes
// back as an Unknown status carrying the context's message; it is the store being
// unavailable, not an unknown failure; so is raft's "stopped" from a server shutting down
// (seen in TestPrivilegedGlobalStoreRestartMidWork/etcd).
func TestMapErrServerDeadline(t *testing.T) {
	s := &Store{endpoints: []string{"http://127.0.0.1:2379"}}
	for _, err := range []error{
		status.Error(codes.Unknown, context.DeadlineExceeded.Error()),
		status.Error(codes.Unknown, context.Canceled.Error()),
		status.Error(codes.Unavailable, "etcdserver: no leader"),
		status.Error(codes.Unknown, "raft: stopped"), // a server shutting down
	} {
		if got := s.mapErr(context.Background(), err, 0); !errors.Is(got, kvstore.ErrUnavailable) {
			t.Errorf("mapErr(%v) = %v, want ErrUnavailable", err, got)
		}
	}
	other := status.Error(codes.Unknown, "something else")
	if got := s.mapErr(context.Background(), other, 0); errors.Is(got, kvstore.ErrUnavailable) {
		t.Errorf("mapErr(%v) = %v, want it left as it is", other, got)
	}
}

package netobj

import (
	"context"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/network"
)

// Sealed returns n as an orchestrator gets it: a value with the methods of network.Network
// and no others, so that not even an assertion to an interface of its own reaches the
// methods the Controller and the cluster use (Forget, Reclaim, Reassert, ...). Two values
// sealed from one Net are equal.
func (n *Net) Sealed() network.Network { return sealed{n} }

type sealed struct{ n *Net }

func (s sealed) ID() string               { return s.n.ID() }
func (s sealed) Name() string             { return s.n.Name() }
func (s sealed) Driver() string           { return s.n.Driver() }
func (s sealed) Scope() drivers.Scope     { return s.n.Scope() }
func (s sealed) Inspect() network.Inspect { return s.n.Inspect() }

// Endpoints returns none once the Controller is closing or closed.
func (s sealed) Endpoints() []endpoint.Endpoint {
	end, err := s.n.beginOp("endpoints")
	if err != nil {
		return nil
	}
	defer end()
	return s.n.Endpoints()
}

func (s sealed) Delete(ctx context.Context) error { return s.n.Delete(ctx) }

func (s sealed) CreateEndpoint(ctx context.Context, name string, opts ...endpoint.Option) (endpoint.Endpoint, error) {
	return s.n.CreateEndpoint(ctx, name, opts...)
}

// Endpoint fails with an error matching cnm.ErrUnavailable once the Controller is closing or
// closed.
func (s sealed) Endpoint(nameOrID string) (endpoint.Endpoint, error) {
	end, err := s.n.beginOp("endpoint " + nameOrID)
	if err != nil {
		return nil, err
	}
	defer end()
	return s.n.Endpoint(nameOrID)
}

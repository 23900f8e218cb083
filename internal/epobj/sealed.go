package epobj

import (
	"context"

	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/sandbox"
)

// Sealed returns e as an orchestrator gets it: a value with the methods of endpoint.Endpoint
// and no others, so that not even an assertion to an interface of its own reaches the
// methods the network and the Controller use. Two values sealed from one Ep are equal.
func (e *Ep) Sealed() endpoint.Endpoint { return sealed{e} }

type sealed struct{ e *Ep }

func (s sealed) ID() string                                          { return s.e.ID() }
func (s sealed) Name() string                                        { return s.e.Name() }
func (s sealed) NetworkID() string                                   { return s.e.NetworkID() }
func (s sealed) Info() endpoint.Info                                 { return s.e.Info() }
func (s sealed) Join(ctx context.Context, sb sandbox.Sandbox) error  { return s.e.Join(ctx, sb) }
func (s sealed) Leave(ctx context.Context, sb sandbox.Sandbox) error { return s.e.Leave(ctx, sb) }
func (s sealed) Delete(ctx context.Context) error                    { return s.e.Delete(ctx) }

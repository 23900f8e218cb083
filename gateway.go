package cnm

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
)

// GatewayNetwork is the per-host bridge network that gives a way out to sandboxes whose
// endpoints' driver asks for one (drivers.JoinResult.NeedGateway: the overlay), as Docker's
// docker_gwbridge: NAT to the host's uplinks, and no traffic between its containers. The
// Controller creates it with the first such endpoint and keeps it; a sandbox is attached to it
// (an endpoint named after the sandbox) while one of its endpoints claims it.
const GatewayNetwork = "cnm_gwbridge"

// gatewayService is the Controller's epobj.GatewayService.
type gatewayService struct {
	c *Controller
	// serial orders attachments and detachments: each checks the claims, then connects or
	// disconnects, as one step. They happen only for gateway-claiming endpoints (overlay joins),
	// so one lock for all sandboxes is enough; it is taken before the Controller's lock.
	serial sync.Mutex
	claims map[string]map[string]bool // sandbox ID -> endpoint IDs; under serial
}

var _ epobj.GatewayService = (*gatewayService)(nil)

// Attach implements epobj.GatewayService: it connects sb to GatewayNetwork (creating the
// network on first use), publishing ports there, unless it is connected already, and records
// epID's claim. The ports of a sandbox's gateway endpoint are fixed when it is made, by its
// first claim, as a container's are: a later claim with other ports is refused with an error
// matching ErrConflict.
func (g *gatewayService) Attach(ctx context.Context, sb sandbox.Sandbox, epID string, ports []drivers.PortBinding) ([]drivers.PortBinding, error) {
	g.serial.Lock()
	defer g.serial.Unlock()
	var bound []drivers.PortBinding
	if len(g.claims[sb.ID()]) == 0 || g.claims[sb.ID()][epID] {
		var err error
		if bound, err = g.connect(ctx, sb.ID(), ports); err != nil {
			return nil, err
		}
	} else if len(ports) > 0 {
		return nil, &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(),
			Reason: fmt.Sprintf("its endpoint on %s was made without the ports %s: a sandbox publishes its ports on its first network that goes through it", GatewayNetwork, ports[0])}
	}
	if g.claims == nil {
		g.claims = map[string]map[string]bool{}
	}
	if g.claims[sb.ID()] == nil {
		g.claims[sb.ID()] = map[string]bool{}
	}
	g.claims[sb.ID()][epID] = true
	return bound, nil
}

// connect attaches sandbox sbID to GatewayNetwork with ports, and returns them as bound; an
// attachment that exists already (claims rebuilt on restart) is kept, with its ports.
func (g *gatewayService) connect(ctx context.Context, sbID string, ports []drivers.PortBinding) ([]drivers.PortBinding, error) {
	c := g.c
	if _, err := c.network(GatewayNetwork); errors.Is(err, errclass.ErrNotFound) {
		_, err = c.NewNetwork(ctx, GatewayNetwork, "bridge", c.bridgeOptions(bridge.NetworkOptions{
			BridgeName: GatewayNetwork, DisableICC: true,
		})...)
		if err != nil && !errors.Is(err, errclass.ErrAlreadyExists) {
			return nil, err
		}
	}
	n, err := c.network(GatewayNetwork)
	if err != nil {
		return nil, err
	}
	if ep, err := n.Endpoint(sbID); err == nil && ep.Info().SandboxID == sbID {
		return ep.Info().Ports, nil // attached already (claims rebuilt on restart)
	}
	ep, err := c.Connect(ctx, GatewayNetwork, sbID, endpoint.WithPorts(ports...))
	if err != nil {
		return nil, err
	}
	return ep.Info().Ports, nil
}

// Detach implements epobj.GatewayService: it drops epID's claim, and disconnects the
// sandbox from GatewayNetwork when no claim is left. A sandbox that is gone is not an error.
func (g *gatewayService) Detach(ctx context.Context, sbID, epID string) error {
	g.serial.Lock()
	defer g.serial.Unlock()
	claims := g.claims[sbID]
	if !claims[epID] {
		return nil
	}
	delete(claims, epID)
	if len(claims) > 0 {
		return nil
	}
	delete(g.claims, sbID)
	err := g.c.Disconnect(ctx, GatewayNetwork, sbID)
	if errors.Is(err, errclass.ErrNotFound) {
		return nil
	}
	return err
}

// restore records the claims of restored endpoints (their records say they hold one).
func (g *gatewayService) restore(eps []*epobj.Ep) {
	g.serial.Lock()
	defer g.serial.Unlock()
	for _, ep := range eps {
		r := ep.Record()
		if !r.GatewayService || r.SandboxID == "" {
			continue
		}
		if g.claims == nil {
			g.claims = map[string]map[string]bool{}
		}
		if g.claims[r.SandboxID] == nil {
			g.claims[r.SandboxID] = map[string]bool{}
		}
		g.claims[r.SandboxID][r.ID] = true
	}
}

// forget drops the claims on a sandbox that was deleted (its attachment went with it).
func (g *gatewayService) forget(sbID string) {
	g.serial.Lock()
	delete(g.claims, sbID)
	g.serial.Unlock()
}

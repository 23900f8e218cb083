package cnm

import (
	"context"
	"errors"
	"sync"

	"github.com/cnmkit/cnm/drivers/bridge"
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
// network on first use) unless it is connected already, and records epID's claim.
func (g *gatewayService) Attach(ctx context.Context, sb sandbox.Sandbox, epID string) error {
	g.serial.Lock()
	defer g.serial.Unlock()
	if len(g.claims[sb.ID()]) == 0 {
		if err := g.connect(ctx, sb.ID()); err != nil {
			return err
		}
	}
	if g.claims == nil {
		g.claims = map[string]map[string]bool{}
	}
	if g.claims[sb.ID()] == nil {
		g.claims[sb.ID()] = map[string]bool{}
	}
	g.claims[sb.ID()][epID] = true
	return nil
}

func (g *gatewayService) connect(ctx context.Context, sbID string) error {
	c := g.c
	if _, err := c.network(GatewayNetwork); errors.Is(err, errclass.ErrNotFound) {
		_, err = c.NewNetwork(ctx, GatewayNetwork, "bridge", c.bridgeOptions(bridge.NetworkOptions{
			BridgeName: GatewayNetwork, DisableICC: true,
		})...)
		if err != nil && !errors.Is(err, errclass.ErrAlreadyExists) {
			return err
		}
	}
	n, err := c.network(GatewayNetwork)
	if err != nil {
		return err
	}
	if ep, err := n.Endpoint(sbID); err == nil && ep.Info().SandboxID == sbID {
		return nil // attached already (claims rebuilt on restart)
	}
	_, err = c.Connect(ctx, GatewayNetwork, sbID)
	return err
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

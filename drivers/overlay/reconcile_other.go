//go:build !linux

package overlay

import (
	"context"

	"github.com/cnmkit/cnm/drivers"
)

var _ drivers.Reconciler = (*Driver)(nil)

// Reconcile implements drivers.Reconciler: off Linux there is no data plane to reconcile.
func (d *Driver) Reconcile(context.Context, drivers.LiveState) ([]drivers.Repair, error) {
	return nil, nil
}

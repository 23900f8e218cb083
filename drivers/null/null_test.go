package null_test

import (
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/drivers/null"
)

func TestConformance(t *testing.T) {
	driverstest.Run(t, driverstest.Harness{
		New: func(t *testing.T) drivers.Driver { return null.New() },
	})
}

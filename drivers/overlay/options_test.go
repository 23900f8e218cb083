package overlay

import (
	"errors"
	"testing"

	"github.com/cnmkit/cnm/drivers"
)

func TestParseNetworkOptions(t *testing.T) {
	if o, err := ParseNetworkOptions(map[string]string{LabelMTU: "1400"}); err != nil || o.MTU != 1400 {
		t.Fatalf("mtu 1400 = %+v, %v", o, err)
	}
	for _, v := range []string{"", "true"} {
		o, err := ParseNetworkOptions(map[string]string{LabelEncrypted: v})
		if err != nil || !o.Encrypted || o.Labels()[LabelEncrypted] != "" {
			t.Fatalf("encrypted=%q = %+v, %v", v, o, err)
		}
	}
	for labels, class := range map[[2]string]error{
		{LabelEncrypted, "false"}: drivers.ErrInvalidParameter,
		{LabelMTU, "40"}:          drivers.ErrInvalidParameter,
		{LabelMTU, "big"}:         drivers.ErrInvalidParameter,
		{LabelVNI, "4096"}:        drivers.ErrInvalidParameter,
		{"nosuch", "x"}:           drivers.ErrInvalidParameter,
	} {
		if _, err := ParseNetworkOptions(map[string]string{labels[0]: labels[1]}); !errors.Is(err, class) {
			t.Errorf("%s=%q: %v, want %v", labels[0], labels[1], err, class)
		}
	}
}

package endpoint_test

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestParsePortSpec(t *testing.T) {
	ip := netip.MustParseAddr("127.0.0.1")
	for spec, want := range map[string][]drivers.PortBinding{
		"80":                    {{Proto: "tcp", ContainerPort: 80}},
		"8080:80":               {{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
		"8080:80/udp":           {{Proto: "udp", HostPort: 8080, ContainerPort: 80}},
		"8080:80/TCP":           {{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
		"127.0.0.1:8080:80":     {{Proto: "tcp", HostIP: ip, HostPort: 8080, ContainerPort: 80}},
		"127.0.0.1::80":         {{Proto: "tcp", HostIP: ip, ContainerPort: 80}},
		"[2001:db8::1]:443:443": {{Proto: "tcp", HostIP: netip.MustParseAddr("2001:db8::1"), HostPort: 443, ContainerPort: 443}},
		"8000-8001:80-81":       {{Proto: "tcp", HostPort: 8000, ContainerPort: 80}, {Proto: "tcp", HostPort: 8001, ContainerPort: 81}},
		"80-81":                 {{Proto: "tcp", ContainerPort: 80}, {Proto: "tcp", ContainerPort: 81}},
		"8000-8009:80":          {{Proto: "tcp", HostPort: 8000, HostPortEnd: 8009, ContainerPort: 80}},
		"8080-8080:80":          {{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
	} {
		got, err := endpoint.ParsePortSpec(spec)
		if err != nil {
			t.Errorf("ParsePortSpec(%q): %v", spec, err)
			continue
		}
		if diff := cmp.Diff(want, got, addrCmp); diff != "" {
			t.Errorf("ParsePortSpec(%q) (-want +got):\n%s", spec, diff)
		}
	}
	for spec, value := range map[string]string{
		"0":                 "0",
		"65536":             "65536",
		"8080:0":            "0",
		"80/sctp":           "sctp",
		"x:80":              "x",
		"8000-8002:80-81":   "8000-8002:80-81",
		"-1:80":             "-1",
		"80:-1":             "-1",
		"80-:80":            "80-",
		"8080:":             "8080:",
		"80/":               "80/",
		"[]:80:80":          "[]:80:80",
		"1.2.3.4:-5:80":     "-5",
		"08000-08002:80-81": "08000-08002:80-81",
		"90-80":             "90-80",
		"nohost:80:80":      "nohost",
		":80:80":            ":80:80",
		"a:b:c:d":           "a:b:c:d",
		"[::1:80:80":        "[::1:80:80",
		"+80":               "+80",
		"":                  "",
		"1.2.3.4:8080:80:":  "1.2.3.4:8080:80:",
	} {
		_, err := endpoint.ParsePortSpec(spec)
		var ie *errclass.InvalidParameterError
		if !errors.As(err, &ie) || !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParsePortSpec(%q) = %v, want an invalid parameter", spec, err)
			continue
		}
		if !strings.Contains(ie.Value, value) || !strings.Contains(err.Error(), strconv.Quote(value)) {
			t.Errorf("ParsePortSpec(%q) = %v: names %q, want %q", spec, err, ie.Value, value)
		}
	}
}

func FuzzParsePortSpec(f *testing.F) {
	for _, s := range []string{"80", "8080:80/udp", "127.0.0.1::80", "[::1]:80:80", "8000-8009:80-89", "0", "65536", "a:b", "-1:80", "80/", "8080:", "08000-08002:80-81"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		got, err := endpoint.ParsePortSpec(spec)
		if err != nil {
			var ie *errclass.InvalidParameterError
			if !errors.Is(err, errclass.ErrInvalidParameter) || !errors.As(err, &ie) {
				t.Fatalf("ParsePortSpec(%q): %v, not an invalid parameter", spec, err)
			}
			// The error names what the user typed: a non-empty part of spec, quoted.
			if spec != "" && (ie.Value == "" || !strings.Contains(spec, ie.Value) || !strings.Contains(err.Error(), strconv.Quote(ie.Value))) {
				t.Fatalf("ParsePortSpec(%q) = %v: names %q, not a part of the input", spec, err, ie.Value)
			}
			return
		}
		if len(got) == 0 {
			t.Fatalf("ParsePortSpec(%q) returned nothing", spec)
		}
		for _, b := range got {
			if err := b.Validate(); err != nil {
				t.Fatalf("ParsePortSpec(%q) returned %v: %v", spec, b, err)
			}
			if b.ContainerPortEnd != 0 {
				t.Fatalf("ParsePortSpec(%q) returned an unexpanded container range %v", spec, b)
			}
			// The rendering parses back to the same binding.
			again, err := endpoint.ParsePortSpec(b.String())
			if err != nil || len(again) != 1 || !cmp.Equal(again[0], b, addrCmp) {
				t.Fatalf("ParsePortSpec(%q) = %v; its String %q parses to %v, %v", spec, b, b.String(), again, err)
			}
		}
	})
}

func TestPortOptions(t *testing.T) {
	var s endpoint.Spec
	p := []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}
	endpoint.WithPorts(p...)(&s)
	p[0].HostPort = 1 // the option copied the slice
	endpoint.WithPublishAll(drivers.PortBinding{Proto: "udp", HostPort: 53, ContainerPort: 53})(&s)
	want := []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}, {Proto: "udp", ContainerPort: 53}}
	if diff := cmp.Diff(want, s.Ports, addrCmp); diff != "" {
		t.Errorf("Spec.Ports (-want +got):\n%s", diff)
	}
}

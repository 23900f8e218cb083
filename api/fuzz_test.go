package api_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/internal/errclass"
)

// FuzzDecodeNetworkCreate: any body is either decoded and checked, or refused with an
// invalid-parameter error; never a panic or another class.
func FuzzDecodeNetworkCreate(f *testing.F) {
	f.Add(`{"Name":"n","Driver":"bridge","IPAM":{"Driver":"","Options":null,"Config":[{"Subnet":"10.1.0.0/24","Gateway":"10.1.0.1","IPRange":"10.1.0.128/25","AuxiliaryAddresses":{"a":"10.1.0.5"}}]},"Options":{"k":"v"},"Labels":{"l":"v"}}`)
	f.Add(`{"Name":"../../etc"}`)
	f.Add(`{"Name":"x","IPAM":{"Config":[{"Subnet":"::/0"}]}}`)
	f.Add(`{`)
	f.Fuzz(func(t *testing.T, body string) {
		var r api.NetworkCreate
		err := api.Decode(strings.NewReader(body), &r)
		if err == nil {
			err = r.Check()
		}
		if err != nil && !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Fatalf("error %v is not an invalid parameter", err)
		}
		if err == nil && api.CheckName("network", r.Name) != nil {
			t.Fatalf("accepted bad name %q", r.Name)
		}
	})
}

// FuzzDecodeSandboxCreate: as FuzzDecodeNetworkCreate, for sandboxes, connect and disconnect.
func FuzzDecodeSandboxCreate(f *testing.F) {
	f.Add(`{"Name":"web","Network":"container:db","Ports":[{"proto":"tcp","host_port":8080,"container_port":80}],"DNS":["10.0.0.53"],"ExtraHosts":["a:1.2.3.4"]}`)
	f.Add(`{"Sandbox":"web","IPv4Address":"10.0.0.9","Aliases":["w"]}`)
	f.Add(`{"Sandbox":"web","Force":true}`)
	f.Fuzz(func(t *testing.T, body string) {
		var s api.SandboxCreate
		if err := api.Decode(strings.NewReader(body), &s); err == nil {
			if _, err := s.Spec(); err != nil && !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Fatalf("Spec: %v is not an invalid parameter", err)
			}
		} else if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Fatalf("Decode: %v is not an invalid parameter", err)
		}
		var c api.Connect
		if err := api.Decode(strings.NewReader(body), &c); err == nil {
			if err := c.Check(); err != nil && !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Fatalf("Connect.Check: %v", err)
			}
		}
		var d api.Disconnect
		if err := api.Decode(strings.NewReader(body), &d); err == nil {
			if err := d.Check(); err != nil && !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Fatalf("Disconnect.Check: %v", err)
			}
		}
	})
}

// FuzzParse: the string parsers at the edges refuse with invalid parameter or accept.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"a=b", "container:x", "unix:///x", "tcp://1.2.3.4:5", "80-81/udp", "10.0.0.0/8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(what string, err error) {
			if err != nil && !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Fatalf("%s(%q): %v is not an invalid parameter", what, s, err)
			}
		}
		_, err := api.ParseKeyValues("opt", []string{s})
		check("ParseKeyValues", err)
		_, _, err = api.ParseNetworkMode(s)
		check("ParseNetworkMode", err)
		_, _, err = api.ParseHost(s)
		check("ParseHost", err)
		_, err = api.ParseExpose(s)
		check("ParseExpose", err)
		_, err = api.ParsePrefix("subnet", s)
		check("ParsePrefix", err)
		_, err = api.ParseAuxAddresses([]string{s})
		check("ParseAuxAddresses", err)
	})
}

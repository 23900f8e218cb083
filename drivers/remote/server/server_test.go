package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/ipam"
)

func newServer(t testing.TB) *server.Server {
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Config{Driver: driverstest.NewFake(drivers.Capabilities{}), IPAM: alloc})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func call(s http.Handler, httpMethod, path, body string) (int, map[string]any) {
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(httpMethod, path, strings.NewReader(body)))
	var out map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

// TestProtocolAnswers checks the answers the protocol prescribes: the manifest, the
// capabilities, 404 with Err for a method not served, 400 for a body that is not JSON, 500
// with the cnm error for a failed call.
func TestProtocolAnswers(t *testing.T) {
	s := newServer(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
		field, want        string
	}{
		{"POST", "/Plugin.Activate", "", 200, "Implements", "[NetworkDriver IpamDriver]"},
		{"POST", "/NetworkDriver.GetCapabilities", "", 200, "Scope", "local"},
		{"POST", "/IpamDriver.GetDefaultAddressSpaces", "", 200, "LocalDefaultAddressSpace", "local"},
		{"POST", "/NetworkDriver.AllocateNetwork", "{}", 404, "Err", "NetworkDriver.AllocateNetwork: not implemented by this plugin"},
		{"POST", "/NetworkDriver.Nope", "{}", 404, "Err", "NetworkDriver.Nope: not implemented by this plugin"},
		{"POST", "/", "", 404, "Err", ": not implemented by this plugin"},
		{"GET", "/Plugin.Activate", "", 405, "Err", "method GET not allowed: the plugin protocol uses POST"},
		{"POST", "/NetworkDriver.CreateNetwork", "{not json", 400, "Err", ""},
		{"POST", "/NetworkDriver.CreateNetwork", `{"NetworkID":"n1","IPv4Data":[{"Pool":"nope"}]}`, 500, "Err", `create network n1: invalid pool "nope": want a prefix of the family`},
		{"POST", "/NetworkDriver.Join", `{"NetworkID":"n1","EndpointID":"e1"}`, 500, "Err", `join: endpoint "e1 of network n1" not found`},
		{"POST", "/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n1","EndpointID":"e1"}`, 200, "Err", "<nil>"},
		{"POST", "/IpamDriver.RequestAddress", `{"PoolID":"x"}`, 500, "Err", `request address: pool "x" not found: ipam: unknown pool`},
	} {
		status, out := call(s, tc.method, tc.path, tc.body)
		got := "<nil>"
		if v, ok := out[tc.field]; ok {
			got = jsonString(v)
		}
		if status != tc.status || (tc.want != "" && got != tc.want) || (tc.want == "" && got == "<nil>") {
			t.Errorf("%s %s %s: %d %s=%s; want %d %s", tc.method, tc.path, tc.body, status, tc.field, got, tc.status, tc.want)
		}
	}
}

func jsonString(v any) string {
	if l, ok := v.([]any); ok {
		var parts []string
		for _, x := range l {
			parts = append(parts, jsonString(x))
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestNewRefusesNothingToServe(t *testing.T) {
	if _, err := server.New(server.Config{}); err == nil {
		t.Error("New with neither driver nor IPAM succeeded")
	}
	if _, err := server.New(server.Config{Driver: driverstest.NewFake(drivers.Capabilities{}), DstPrefix: "a/b"}); err == nil {
		t.Error("New with a DstPrefix with '/' succeeded")
	}
}

// FuzzServer sends arbitrary bodies to every method: the server must answer each with a
// status and a JSON object, never panic, and answer errors with a non-empty Err.
func FuzzServer(f *testing.F) {
	methods := []string{wire.Activate, wire.NetworkGetCapabilities, wire.NetworkCreateNetwork, wire.NetworkDeleteNetwork,
		wire.NetworkCreateEndpoint, wire.NetworkDeleteEndpoint, wire.NetworkEndpointOperInfo, wire.NetworkJoin,
		wire.NetworkLeave, wire.NetworkDiscoverNew, wire.NetworkProgramExternalConnectivity,
		wire.IpamRequestPool, wire.IpamReleasePool, wire.IpamRequestAddress, wire.IpamReleaseAddress, "Nope.Nope"}
	seeds := []string{
		`{"NetworkID":"1111111111111111111111111111111111111111111111111111111111111111","Options":{"com.docker.network.generic":{"a":1},"com.docker.network.enable_ipv6":"true"},"IPv4Data":[{"AddressSpace":"x","Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24","AuxAddresses":{"a":"10.0.0.9/24"}}]}`,
		`{"NetworkID":"n","EndpointID":"2222222222222222","Interface":{"Address":"10.0.0.2/24","MacAddress":"02:42:00:00:00:01"}}`,
		`{"NetworkID":"n","EndpointID":"2222222222222222","SandboxKey":"/x"}`,
		`{"Pool":"10.1.0.0/16","SubPool":"10.1.1.0/24"}`, `{"PoolID":"local/10.1.0.0/16","Address":"10.1.0.5"}`,
		`null`, `[]`, `{"Options":[]}`, `{"IPv6Data":[{"Pool":"::/0"}]}`, "",
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	s := newServer(f)
	f.Fuzz(func(t *testing.T, m uint8, body []byte) {
		path := "/" + methods[int(m)%len(methods)]
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader(body)))
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %q: answer %q is not a JSON object: %v", path, body, rec.Body.Bytes(), err)
		}
		if rec.Code != 200 {
			if e, _ := out["Err"].(string); e == "" {
				t.Fatalf("%s %q: status %d without Err: %s", path, body, rec.Code, rec.Body.Bytes())
			}
		}
	})
}

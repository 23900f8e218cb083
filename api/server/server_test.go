package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/api/server"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

// agent is a Server over an unprivileged Controller (in-memory machine, fake bridge driver),
// listening on a unix socket.
type agent struct {
	c    *cnm.Controller
	sock string
	cl   *client.Client
	hc   *http.Client // raw requests, for bad input
}

func newAgent(t testing.TB) *agent {
	t.Helper()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), Machine: sandboxtest.NewMachine(),
		Drivers: map[string]drivers.Driver{"bridge": driverstest.NewFake(drivers.Capabilities{})}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Controller: c})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "cnm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
		c.Close()
	})
	cl, err := client.New(client.Config{Host: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(hc.CloseIdleConnections)
	return &agent{c: c, sock: sock, cl: cl, hc: hc}
}

// raw sends a request with a raw path and body and returns the status and the error body.
func (a *agent) raw(t *testing.T, method, path string, body []byte) (int, api.Error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://cnmd", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	path, req.URL.RawQuery, _ = strings.Cut(path, "?")
	req.URL.RawPath = path
	req.URL.Path, _ = pathUnescape(path)
	resp, err := a.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	json.Unmarshal(b, &e)
	return resp.StatusCode, e
}

func pathUnescape(p string) (string, error) {
	r := strings.NewReplacer("%2F", "/", "%2f", "/", "%2E", ".", "%2e", ".")
	return r.Replace(p), nil
}

// state is what a refused request must not change.
func (a *agent) state(t *testing.T) string {
	t.Helper()
	nets, err := a.cl.NetworkList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sbs, err := a.cl.SandboxList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal([]any{nets, sbs})
	return string(b)
}

// TestBadInput: malformed JSON, an oversize body, unknown fields, bad names and path
// traversal get 400 with a message saying what is wrong, and change nothing.
func TestBadInput(t *testing.T) {
	a := newAgent(t)
	ctx := t.Context()
	if _, err := a.cl.SandboxCreate(ctx, api.SandboxCreate{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	before := a.state(t)
	big := []byte(`{"Name":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`)
	for _, tc := range []struct {
		method, path string
		body         []byte
		want         string
	}{
		{"POST", "/v1/networks", []byte(`{"Name":`), "malformed JSON"},
		{"POST", "/v1/networks", []byte(`not json`), "malformed JSON"},
		{"POST", "/v1/networks", big, "too large"},
		{"POST", "/v1/networks", []byte(`{"Name":"n","Bogus":true}`), `unknown field "Bogus"`},
		{"POST", "/v1/networks", []byte(`{"Name":"../etc"}`), `invalid network name "../etc"`},
		{"POST", "/v1/networks", []byte(`{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.0/33"}]}}`), `invalid subnet "10.0.0.0/33"`},
		{"POST", "/v1/networks", []byte(`{"Name":"n","Options":{"com.docker.network.bogus":"1"}}`), "com.docker.network.bogus"},
		{"POST", "/v1/sandboxes", []byte(`{"Name":"a/b"}`), `invalid sandbox name "a/b"`},
		{"POST", "/v1/sandboxes", []byte(`{"Name":"x","Network":"container:../web"}`), "invalid sandbox name"},
		{"POST", "/v1/sandboxes", []byte(`{"Name":"x","Ports":[{"container_port":0}]}`), "port"},
		{"GET", "/v1/networks/..%2F..%2Fetc", nil, "invalid network name"},
		{"GET", "/v1/networks/%2E%2E", nil, "'.' or '..'"},
		{"GET", "/v1/sandboxes/../networks", nil, "'.' or '..'"},
		{"DELETE", "/v1/sandboxes/web%2F..%2F..", nil, "invalid sandbox name"},
		{"DELETE", "/v1/sandboxes/web?force=maybe", nil, `invalid force "maybe"`},
		{"POST", "/v1/networks/bridge/connect", []byte(`{"Sandbox":"web","IPv4Address":"300.1.1.1"}`), `invalid ip "300.1.1.1"`},
		{"POST", "/v1/networks/bridge/disconnect", []byte(`{"Sandbox":"web","Force":"yes"}`), "malformed JSON"},
	} {
		status, e := a.raw(t, tc.method, tc.path, tc.body)
		if status != http.StatusBadRequest || !strings.Contains(e.Message, tc.want) || e.Class != api.ClassInvalidParameter {
			t.Errorf("%s %s: %d %+v, want 400 invalid parameter saying %q", tc.method, tc.path, status, e, tc.want)
		}
	}
	if after := a.state(t); after != before {
		t.Errorf("state changed by refused requests:\nbefore %s\nafter  %s", before, after)
	}
	if status, e := a.raw(t, "GET", "/v2/networks", nil); status != http.StatusNotFound || !strings.Contains(e.Message, "/v1") {
		t.Errorf("GET /v2/networks: %d %+v, want 404 naming /v1", status, e)
	}
}

// TestClientRoundTrip: the verbs through the client, with errors matching cnm's classes.
func TestClientRoundTrip(t *testing.T) {
	a := newAgent(t)
	ctx := t.Context()
	created, err := a.cl.NetworkCreate(ctx, api.NetworkCreate{Name: "new_bridge", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: "10.10.0.0/24", Gateway: "10.10.0.1"}}}, Labels: map[string]string{"tier": "db"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.cl.NetworkCreate(ctx, api.NetworkCreate{Name: "new_bridge"}); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Errorf("second create = %v, want ErrAlreadyExists", err)
	}
	db, err := a.cl.SandboxCreate(ctx, api.SandboxCreate{Name: "db", Network: "new_bridge", Aliases: []string{"database"}})
	if err != nil {
		t.Fatal(err)
	}
	es := db.NetworkSettings.Networks["new_bridge"]
	if es.NetworkID != created.ID || es.IPAddress != "10.10.0.2" || es.IPPrefixLen != 24 || es.Gateway != "10.10.0.1" || !cmp.Equal(es.Aliases, []string{"database"}) {
		t.Errorf("db on new_bridge = %+v", es)
	}
	if _, err := a.cl.SandboxCreate(ctx, api.SandboxCreate{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	got, err := a.cl.NetworkConnect(ctx, "new_bridge", api.Connect{Sandbox: "web", IPv4Address: "10.10.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	if got.IPAddress != "10.10.0.9" {
		t.Errorf("connect web: %+v, want 10.10.0.9", got)
	}
	in, err := a.cl.NetworkInspect(ctx, "new_bridge")
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Containers) != 2 || in.Containers["web"].IPv4Address != "10.10.0.9/24" || in.Labels["tier"] != "db" {
		t.Errorf("inspect new_bridge = %+v", in)
	}
	if err := a.cl.NetworkRemove(ctx, "new_bridge"); !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), "new_bridge") {
		t.Errorf("rm in use = %v, want ErrConflict naming the network", err)
	}
	if err := a.cl.NetworkDisconnect(ctx, "new_bridge", api.Disconnect{Sandbox: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := a.cl.NetworkDisconnect(ctx, "new_bridge", api.Disconnect{Sandbox: "web"}); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("second disconnect = %v, want ErrNotFound", err)
	}
	if err := a.cl.NetworkDisconnect(ctx, "new_bridge", api.Disconnect{Sandbox: "web", Force: true}); err != nil {
		t.Errorf("disconnect -f of a disconnected sandbox = %v, want nil", err)
	}
	if _, err := a.cl.SandboxInspect(ctx, "nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("inspect nosuch = %v, want ErrNotFound", err)
	}
	if _, err := a.cl.SandboxCreate(ctx, api.SandboxCreate{Name: "side", Network: "container:db"}); err != nil {
		t.Fatal(err)
	}
	if err := a.cl.SandboxRemove(ctx, "db", false); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("rm db shared by side = %v, want ErrConflict", err)
	}
	if err := a.cl.SandboxRemove(ctx, "db", true); err != nil {
		t.Fatalf("rm -f db: %v", err)
	}
	if sbs, err := a.cl.SandboxList(ctx); err != nil || len(sbs) != 1 || sbs[0].Name != "web" {
		t.Errorf("sandboxes after rm -f db = %v, %v; want web only", sbs, err)
	}
	if _, err := a.cl.NetworkCreate(ctx, api.NetworkCreate{Name: "spare"}); err != nil {
		t.Fatal(err)
	}
	rep, err := a.cl.NetworkPrune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(rep.NetworksDeleted, []string{"new_bridge", "spare"}) {
		t.Errorf("prune deleted %v, want new_bridge and spare", rep.NetworksDeleted)
	}
	nets, err := a.cl.NetworkList(ctx)
	if err != nil || len(nets) != 3 {
		t.Errorf("networks after prune = %d, %v; want bridge, host, none", len(nets), err)
	}
	if _, err := a.cl.SandboxCreate(ctx, api.SandboxCreate{Name: "bad", Network: "nosuch"}); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("sandbox on a missing network = %v, want ErrNotFound", err)
	}
	if _, err := a.cl.SandboxInspect(ctx, "bad"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("a sandbox whose connect failed is left: %v", err)
	}
}

// TestEventsHealthMetrics: /v1/events streams what happens, /health says ok, /metrics counts
// requests and objects.
func TestEventsHealthMetrics(t *testing.T) {
	a := newAgent(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan api.Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- a.cl.Events(ctx, func(ev api.Event) error { got <- ev; return nil })
	}()
	// The stream is subscribed once its response headers came, which the test cannot see:
	// create networks until the event of one shows.
	deadline := time.After(10 * time.Second)
	var created []string
	for seen := false; !seen; {
		name := fmt.Sprintf("e%d", len(created))
		if _, err := a.cl.NetworkCreate(t.Context(), api.NetworkCreate{Name: name}); err != nil {
			t.Fatal(err)
		}
		created = append(created, name)
		select {
		case ev := <-got:
			seen = ev.Kind == "network.created" && slices.Contains(created, ev.Network) && ev.NetworkID != "" && ev.Seq > 0
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("no network.created event")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Events ended with %v, want nil after cancel", err)
	}
	h, err := a.cl.Health(t.Context())
	if err != nil || h.Status != "ok" {
		t.Errorf("health = %+v, %v", h, err)
	}
	resp, err := a.hc.Get("http://cnmd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`cnm_api_requests_total{code="201",op="network.create"}`, fmt.Sprintf("cnm_networks %d", 3+len(created)), "cnm_endpoints 0", "cnm_api_request_duration_seconds_bucket", "cnm_gossip_members 0", "cnm_repairs_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestNetworkInspectWire: the wire type holds every field of network.Inspect (a strict
// decode of its JSON succeeds), so the shapes cannot drift apart silently.
func TestNetworkInspectWire(t *testing.T) {
	a := newAgent(t)
	if _, err := a.cl.NetworkCreate(t.Context(), api.NetworkCreate{Name: "n", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: "10.3.0.0/24", IPRange: "10.3.0.0/25", AuxiliaryAddresses: map[string]string{"r": "10.3.0.200"}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cl.SandboxCreate(t.Context(), api.SandboxCreate{Name: "s", Network: "n"}); err != nil {
		t.Fatal(err)
	}
	in, err := a.c.InspectNetwork("n")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var wire api.NetworkInspect
	if err := api.Decode(bytes.NewReader(b), &wire); err != nil {
		t.Fatalf("network.Inspect's JSON does not decode strictly into api.NetworkInspect: %v\n%s", err, b)
	}
	if diff := cmp.Diff(server.NetworkInspect(in), wire); diff != "" {
		t.Errorf("NetworkInspect(in) and the JSON of in differ (-conv +json):\n%s", diff)
	}
}

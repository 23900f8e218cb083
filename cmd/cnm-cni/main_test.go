package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
)

// call runs the plugin as a runtime would, with env as its environment and conf on standard
// input, and returns its exit status and output.
func call(env map[string]string, conf string) (int, string) {
	var out bytes.Buffer
	code := runMain(strings.NewReader(conf), &out, func(k string) string { return env[k] })
	return code, out.String()
}

// errCode decodes the spec's error JSON and returns its code, or -1 when out is not one.
func errCode(t *testing.T, out string) int {
	t.Helper()
	var e cniError
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Msg == "" || e.CNIVersion == "" {
		t.Errorf("output %q is not a CNI error: %v", out, err)
		return -1
	}
	return e.Code
}

func TestVersion(t *testing.T) {
	code, out := call(map[string]string{"CNI_COMMAND": "VERSION"}, `{"cniVersion": "1.0.0"}`)
	var v versionResult
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.CNIVersion != "1.0.0" || !slices.Equal(v.SupportedVersions, []string{"0.4.0", "1.0.0", "1.1.0"}) {
		t.Fatalf("VERSION = %d %q (%v)", code, out, err)
	}
}

// TestErrors: each bad call answers the spec's error JSON with the spec's code, and exit 1.
func TestErrors(t *testing.T) {
	add := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1", "CNI_IFNAME": "eth0"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range add {
			m[kk] = vv
		}
		m[k] = v
		return m
	}
	nowhere := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "n", "type": "cnm-cni", "host": "unix://%s"}`, filepath.Join(t.TempDir(), "none.sock"))
	for _, tc := range []struct {
		name string
		env  map[string]string
		conf string
		code int
	}{
		{"no command", with("CNI_COMMAND", ""), nowhere, codeInvalidEnv},
		{"unknown command", with("CNI_COMMAND", "UP"), nowhere, codeInvalidEnv},
		{"not JSON", add, `{"cniVersion":`, codeDecodeFailure},
		{"old version", add, `{"cniVersion": "0.3.1", "name": "n", "type": "cnm-cni"}`, codeIncompatibleVersion},
		{"GC before 1.1.0", with("CNI_COMMAND", "GC"), `{"cniVersion": "1.0.0", "name": "n", "type": "cnm-cni"}`, codeIncompatibleVersion},
		{"no name", add, `{"cniVersion": "1.1.0", "type": "cnm-cni"}`, codeInvalidConfig},
		{"bad host", add, `{"cniVersion": "1.1.0", "name": "n", "type": "cnm-cni", "host": "http://x"}`, codeInvalidConfig},
		{"bad timeout", add, `{"cniVersion": "1.1.0", "name": "n", "type": "cnm-cni", "timeout": "soon"}`, codeInvalidConfig},
		{"no ifname", with("CNI_IFNAME", ""), nowhere, codeInvalidEnv},
		{"bad ifname", with("CNI_IFNAME", "eth0/x"), nowhere, codeInvalidEnv},
		{"long ifname", with("CNI_IFNAME", "abcdefghijklmnop"), nowhere, codeInvalidEnv},
		{"no container", with("CNI_CONTAINERID", ""), nowhere, codeInvalidEnv},
		{"long container", with("CNI_CONTAINERID", strings.Repeat("a", 65)), nowhere, codeInvalidEnv},
		{"bad container", with("CNI_CONTAINERID", "-x"), nowhere, codeInvalidEnv},
		{"no netns on ADD", with("CNI_NETNS", ""), nowhere, codeInvalidEnv},
		{"cnmd down on ADD", add, nowhere, codeTryAgainLater},
		{"cnmd down on DEL", with("CNI_COMMAND", "DEL"), nowhere, codeTryAgainLater},
		{"cnmd down on STATUS", with("CNI_COMMAND", "STATUS"), nowhere, codeNotAvailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := call(tc.env, tc.conf)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if got := errCode(t, out); got != tc.code {
				t.Errorf("code %d (%s), want %d", got, out, tc.code)
			}
		})
	}
}

// newAgent serves cnmd's API over an unprivileged Controller (in-memory machine, fake bridge
// driver) on a unix socket, with the networks one and two, and returns the socket.
func newAgent(t *testing.T) (string, *client.Client) {
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
	for i, name := range []string{"one", "two"} {
		if _, err := cl.NetworkCreate(t.Context(), api.NetworkCreate{Name: name, IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: fmt.Sprintf("10.6%d.0.0/24", i)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	return sock, cl
}

// TestAttachments drives ADD, DEL, GC and STATUS against cnmd's API without root: the results'
// shape, the sandboxes cnmd keeps, repeated and converging calls.
func TestAttachments(t *testing.T) {
	sock, cl := newAgent(t)
	conf := func(network, version string) string {
		return fmt.Sprintf(`{"cniVersion": %q, "name": "cni-%s", "type": "cnm-cni", "network": %q, "host": "unix://%s"}`, version, network, network, sock)
	}
	env := func(cmd, id, ifname string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_NETNS": "/run/netns/" + id, "CNI_IFNAME": ifname}
	}
	addOK := func(network, version, id, ifname string) result {
		t.Helper()
		code, out := call(env("ADD", id, ifname), conf(network, version))
		var r result
		if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil {
			t.Fatalf("ADD %s %s on %s = %d %s (%v)", id, ifname, network, code, out, err)
		}
		return r
	}
	if code, out := call(map[string]string{"CNI_COMMAND": "STATUS"}, conf("one", "1.1.0")); code != 0 {
		t.Fatalf("STATUS = %d %s", code, out)
	}
	if code, out := call(map[string]string{"CNI_COMMAND": "STATUS"}, conf("three", "1.1.0")); code != 1 || errCode(t, out) != codeNotAvailable {
		t.Errorf("STATUS of a network cnmd does not have = %d %s, want code 50", code, out)
	}

	r := addOK("one", "1.1.0", "c1", "net0")
	if r.CNIVersion != "1.1.0" || len(r.Interfaces) != 1 || r.Interfaces[0].Name != "net0" || r.Interfaces[0].Sandbox != "/run/netns/c1" {
		t.Errorf("ADD result interfaces %+v", r)
	}
	if len(r.IPs) != 1 || *r.IPs[0].Interface != 0 || r.IPs[0].Address.String() != "10.60.0.2/24" || r.IPs[0].Gateway.String() != "10.60.0.1" || r.IPs[0].Version != "" {
		t.Errorf("ADD result ips %+v", r.IPs)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.60.0.1" {
		t.Errorf("ADD result routes %+v", r.Routes)
	}
	if again := addOK("one", "1.1.0", "c1", "net0"); again.IPs[0].Address != r.IPs[0].Address {
		t.Errorf("a repeated ADD gave %v, want %v", again.IPs, r.IPs)
	}
	// The same container on a second network: one sandbox, two endpoints; the first keeps the
	// default route.
	r2 := addOK("two", "0.4.0", "c1", "net1")
	if len(r2.IPs) != 1 || r2.IPs[0].Version != "4" || r2.IPs[0].Address.String() != "10.61.0.2/24" || len(r2.Routes) != 0 {
		t.Errorf("ADD on the second network: %+v", r2)
	}
	// The same network under another interface name is refused.
	if code, out := call(env("ADD", "c1", "net9"), conf("one", "1.1.0")); code != 1 || errCode(t, out) != codeAgent {
		t.Errorf("ADD of a second interface on one network = %d %s", code, out)
	}
	// A network cnmd does not have.
	if code, out := call(env("ADD", "c2", "eth0"), conf("three", "1.1.0")); code != 1 || errCode(t, out) != codeInvalidConfig {
		t.Errorf("ADD on a missing network = %d %s, want code 7", code, out)
	}
	if _, err := cl.SandboxInspect(t.Context(), "c2"); api.Class(err) != api.ClassNotFound {
		t.Errorf("a failed ADD left sandbox c2: %v", err)
	}
	in, err := cl.SandboxInspect(t.Context(), "c1")
	if err != nil || in.Netns != "/run/netns/c1" || len(in.NetworkSettings.Networks) != 2 {
		t.Fatalf("cnmd's sandbox c1: %+v (%v)", in, err)
	}

	for range 2 {
		if code, out := call(env("DEL", "c1", "net0"), conf("one", "1.1.0")); code != 0 {
			t.Fatalf("DEL = %d %s", code, out)
		}
	}
	if in, err := cl.SandboxInspect(t.Context(), "c1"); err != nil || len(in.NetworkSettings.Networks) != 1 {
		t.Fatalf("after DEL of net0, sandbox c1: %+v (%v), want it on two only", in, err)
	}
	del := env("DEL", "c1", "net1")
	delete(del, "CNI_NETNS") // the runtime's namespace is gone
	if code, out := call(del, conf("two", "1.1.0")); code != 0 {
		t.Fatalf("DEL without CNI_NETNS = %d %s", code, out)
	}
	if _, err := cl.SandboxInspect(t.Context(), "c1"); api.Class(err) != api.ClassNotFound {
		t.Errorf("after the last DEL sandbox c1 is still there: %v", err)
	}

	// GC: a, b and c attached; only a is valid. A sandbox made through the API stays.
	for _, id := range []string{"a", "b", "c"} {
		addOK("one", "1.1.0", id, "eth0")
	}
	if _, err := cl.SandboxCreate(t.Context(), api.SandboxCreate{Name: "api-made", Network: "one"}); err != nil {
		t.Fatal(err)
	}
	gc := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "cni-one", "type": "cnm-cni", "network": "one", "host": "unix://%s",
		"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth1"}]}`, sock)
	if code, out := call(map[string]string{"CNI_COMMAND": "GC"}, gc); code != 0 {
		t.Fatalf("GC = %d %s", code, out)
	}
	all, err := cl.SandboxList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, sb := range all {
		names = append(names, sb.Name)
	}
	if !slices.Equal(names, []string{"a", "api-made"}) {
		t.Errorf("after GC the sandboxes are %v, want [a api-made]", names)
	}
}

package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeps fails when cnmctl, package api or api/client reaches cnm's core: the CLI talks to
// cnmd only through the wire vocabulary (api) and its client, which are pure Go and import
// of the module only the contract packages drivers and events and the error classes. It
// checks Linux and darwin, so files behind build constraints count too; netlink anywhere in
// the graph fails it.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but the go tool is not in PATH: %v", err)
		}
		t.Skipf("the go tool is not in PATH: %v", err)
	}
	const mod = "github.com/cnmkit/cnm"
	allowed := []string{mod + "/api", mod + "/api/client", mod + "/cmd/cnmctl", mod + "/drivers", mod + "/events", mod + "/internal/errclass"}
	for _, goos := range []string{"linux", "darwin"} {
		for _, pkg := range []string{".", "../../api", "../../api/client"} {
			cmd := exec.Command(goTool, "list", "-deps", pkg)
			cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("GOOS=%s go list -deps %s: %v\n%s", goos, pkg, err, out)
			}
			deps := strings.Fields(string(out))
			if len(deps) == 0 {
				t.Fatalf("go list -deps %s listed nothing", pkg)
			}
			for _, d := range deps {
				if (strings.HasPrefix(d, mod+"/") || d == mod) && !slices.Contains(allowed, d) {
					t.Errorf("GOOS=%s: %s imports %s: the CLI and the API's client must not reach cnm's core (only %v)", goos, pkg, d, allowed)
				}
				if strings.Contains(d, "netlink") {
					t.Errorf("GOOS=%s: %s imports %s: the API is pure Go", goos, pkg, d)
				}
			}
		}
	}
}

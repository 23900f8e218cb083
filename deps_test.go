package cnm_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

// depsModule is the import path of this module. Package names in the rules are relative to it,
// with "." for the root package cnm.
const depsModule = "github.com/cnmkit/cnm"

// A depRule forbids the packages matching From to import, directly or through other packages
// of the module, the packages matching Deny, or, when Only is set, any package of the module
// but those matching Only. Patterns are relative to the module: "." is the root package,
// "x" is package x, "x/..." is x and every package below it.
type depRule struct {
	From []string
	Deny []string
	Only []string
	Why  string
}

// depRules are the package boundaries of STYLE.md §2.1 (rules 1 and 2).
var depRules = []depRule{
	{
		From: []string{"drivers", "ipam", "kvstore"},
		Only: []string{"internal/errclass"},
		Why:  "a contract package imports only the standard library and internal/errclass",
	},
	{
		From: []string{"events"},
		Only: []string{},
		Why:  "the event stream imports only the standard library: every layer may publish to it",
	},
	{
		From: []string{"drivers/..."},
		Deny: []string{".", "network/...", "endpoint/...", "internal/netobj", "internal/epobj", "sandbox/...", "gossip/..."},
		Why:  "a driver sees networks, endpoints and sandboxes only through request structs, and the gossip plane only as drivers.Gossip",
	},
	{
		From: []string{"sandbox/..."},
		Deny: []string{".", "network/...", "endpoint/...", "internal/netobj", "internal/epobj", "drivers/...", "ipam/...", "kvstore/..."},
		Why:  "a sandbox is a namespace and its interfaces, below every other layer",
	},
	{
		From: []string{"sandbox/sandboxtest"},
		Only: []string{"sandbox", "sandbox/internal/...", "internal/errclass", "internal/netns", "internal/nl"},
		Why:  "the in-memory machine is the sandbox package's twin: it uses that package, its bookkeeping (sandbox/internal/iftable) and errclass; internal/netns and internal/nl only through sandbox",
	},
	{
		From: []string{"network/...", "endpoint/..."},
		Deny: []string{".", "cluster/...", "internal/netobj", "internal/epobj", "kvstore/...", "ipam/..."},
		Why:  "the public network and endpoint packages are the contract (interfaces, options, inspect shapes); the implementation is internal and sealed",
	},
	{
		From: []string{"endpoint/..."},
		Deny: []string{"network/..."},
		Why:  "imports flow network -> endpoint -> sandbox, never back",
	},
	{
		From: []string{"internal/epobj"},
		Deny: []string{".", "network/...", "internal/netobj", "cluster/..."},
		Why:  "imports flow netobj -> epobj -> sandbox, never back",
	},
	{
		From: []string{"internal/netobj"},
		Deny: []string{".", "cluster/..."},
		Why:  "only the root package wires the layers together; netobj declares Records, cluster implements it",
	},
	{
		From: []string{"cluster/..."},
		Deny: []string{".", "gossip/...", "drivers/bridge/...", "drivers/host/...", "drivers/null/..."},
		Why:  "the cluster is store logic: no gossip, no built-in driver",
	},
	{
		From: []string{"kvstore/...", "gossip/..."},
		Deny: []string{".", "network/...", "endpoint/...", "internal/netobj", "internal/epobj", "sandbox/...", "drivers/...", "ipam/..."},
		Why:  "the store and the gossip plane are below the networking layers: they hold bytes, not networks",
	},
	{
		From: []string{"resolver/..."},
		Only: []string{"internal/errclass"},
		Why:  "the DNS resolver knows endpoints and sockets as plain values: the Controller feeds it",
	},
	{
		From: []string{"internal/storetest"},
		Deny: []string{".", "network/...", "endpoint/...", "sandbox/...", "drivers/...", "ipam/...", "kvstore/...", "gossip/..."},
		Why:  "the test servers know nothing of cnm: they start etcd and Consul",
	},
}

// depsForbiddenNames are package names that say nothing about what a package does (rule 6).
var depsForbiddenNames = []string{"types", "utils", "common"}

// TestDeps fails when a package of the module imports, directly or transitively, a package that
// its layer must not see (STYLE.md rule 5), or when a package has a forbidden name (rule 6).
// It reads the import graph with `go list -deps -json`, for Linux and for another GOOS, so
// that files behind build constraints are checked too.
func TestDeps(t *testing.T) {
	t.Run("self-check", testDepsSelfCheck)

	goTool := depsGoTool(t)
	for _, goos := range []string{"linux", "darwin"} {
		t.Run(goos, func(t *testing.T) {
			pkgs := depsGoList(t, goTool, goos)
			if _, ok := pkgs["."]; !ok {
				t.Fatalf("go list found no package %s; is the test running in the module's root?", depsModule)
			}
			for _, v := range depViolations(pkgs) {
				t.Error(v)
			}
			for _, p := range slices.Sorted(maps.Keys(pkgs)) {
				if name := path.Base(p); slices.Contains(depsForbiddenNames, name) {
					t.Errorf("package %s is named %q: name packages after what they provide (rule 6)", p, name)
				}
			}
		})
	}
}

// depsGoTool returns the path of the go tool. Without one it skips the test, or fails it
// when CI is "true".
func depsGoTool(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but the go tool is not in PATH: %v", err)
		}
		t.Skipf("the go tool is not in PATH: %v", err)
	}
	return goTool
}

// TestBuildsOffLinux fails when the module does not build for systems other than Linux. cnm
// works on Linux only, but a program that embeds it must build elsewhere too, where
// Controller.New fails with an error matching ErrNotSupported: Linux-only code lives in
// _linux.go files, with _other.go stubs (STYLE.md rule 35). It runs `go build ./...` for
// darwin/arm64 and windows/amd64, which takes a while with a cold build cache: -short skips
// it.
func TestBuildsOffLinux(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds the module; skipped with -short")
	}
	goTool := depsGoTool(t)
	for _, target := range []struct{ goos, goarch string }{
		{"darwin", "arm64"},
		{"windows", "amd64"},
	} {
		t.Run(target.goos+"/"+target.goarch, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), goTool, "build", "./...")
			cmd.Env = append(os.Environ(), "GOOS="+target.goos, "GOARCH="+target.goarch, "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("GOOS=%s GOARCH=%s go build ./...: %v\n%s", target.goos, target.goarch, err, out)
			}
		})
	}
}

// depsGoList returns the import graph of the module's packages for goos: each package, relative
// to the module, mapped to the module packages it imports directly.
func depsGoList(t *testing.T, goTool, goos string) map[string][]string {
	t.Helper()
	cmd := exec.Command(goTool, "list", "-deps", "-json=ImportPath,Name,Imports,Error", "./...")
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("GOOS=%s go list -deps -json ./...: %v\n%s", goos, err, stderr.Bytes())
	}
	type listed struct {
		ImportPath string
		Name       string
		Imports    []string
		Error      *struct{ Err string }
	}
	graph := make(map[string][]string)
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("GOOS=%s go list: decode: %v", goos, err)
		}
		rel, ok := depsRelative(p.ImportPath)
		if !ok {
			continue
		}
		if p.Error != nil {
			t.Fatalf("GOOS=%s go list: package %s: %s", goos, p.ImportPath, p.Error.Err)
		}
		if p.Name != "" && slices.Contains(depsForbiddenNames, p.Name) {
			t.Errorf("package %s declares package name %q (rule 6)", p.ImportPath, p.Name)
		}
		var imports []string
		for _, imp := range p.Imports {
			if r, ok := depsRelative(imp); ok {
				imports = append(imports, r)
			}
		}
		graph[rel] = imports
	}
	return graph
}

// depsRelative returns the import path relative to the module ("." for its root), and whether
// it is in the module at all.
func depsRelative(importPath string) (string, bool) {
	if importPath == depsModule {
		return ".", true
	}
	rel, ok := strings.CutPrefix(importPath, depsModule+"/")
	return rel, ok
}

// depsMatch reports whether the relative package p matches the pattern.
func depsMatch(pattern, p string) bool {
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == dir || strings.HasPrefix(p, dir+"/")
	}
	return p == pattern
}

func depsMatchAny(patterns []string, p string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return depsMatch(pat, p) })
}

// depViolations checks graph (package -> the module packages it imports) against depRules and
// returns one message per forbidden (package, dependency) pair, with the shortest import chain
// that leads there.
func depViolations(graph map[string][]string) []string {
	var out []string
	for _, from := range slices.Sorted(maps.Keys(graph)) {
		// Breadth-first, so that each package is reached by its shortest chain.
		parent := map[string]string{from: ""}
		queue := []string{from}
		var reached []string
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, imp := range graph[p] {
				if _, seen := parent[imp]; !seen {
					parent[imp] = p
					queue = append(queue, imp)
					reached = append(reached, imp)
				}
			}
		}
		slices.Sort(reached)
		for _, r := range depRules {
			if !depsMatchAny(r.From, from) {
				continue
			}
			for _, dep := range reached {
				bad := depsMatchAny(r.Deny, dep) || (r.Only != nil && !depsMatchAny(r.Only, dep))
				if !bad {
					continue
				}
				chain := []string{depsDisplay(dep)}
				for p := parent[dep]; p != ""; p = parent[p] {
					chain = append(chain, depsDisplay(p))
				}
				slices.Reverse(chain)
				out = append(out, fmt.Sprintf("%s must not import %s (%s):\n\t%s",
					depsDisplay(from), depsDisplay(dep), r.Why, strings.Join(chain, " -> ")))
			}
		}
	}
	return out
}

// depsDisplay names a relative package for messages: the root is "cnm".
func depsDisplay(p string) string {
	if p == "." {
		return "cnm"
	}
	return p
}

// testDepsSelfCheck checks that depViolations catches a forbidden import two steps away and
// prints the chain, and accepts a graph that follows the rules.
func testDepsSelfCheck(t *testing.T) {
	good := map[string][]string{
		".":                 {"network", "endpoint", "internal/netobj", "sandbox", "drivers", "drivers/bridge", "ipam", "kvstore", "kvstore/boltdb"},
		"network":           {"endpoint", "drivers", "internal/errclass"},
		"endpoint":          {"sandbox", "drivers", "internal/errclass"},
		"internal/netobj":   {"network", "internal/epobj", "drivers", "events", "ipam", "kvstore", "internal/errclass"},
		"internal/epobj":    {"endpoint", "sandbox", "drivers", "events", "ipam", "kvstore", "internal/errclass"},
		"events":            nil,
		"sandbox":           {"internal/netns", "internal/errclass"},
		"drivers":           {"internal/errclass"},
		"drivers/bridge":    {"drivers", "internal/netns", "internal/nl"},
		"ipam":              {"internal/errclass"},
		"kvstore":           {"internal/errclass"},
		"kvstore/boltdb":    {"kvstore"},
		"internal/errclass": nil,
		"internal/netns":    nil,
		"internal/nl":       nil,
	}
	if v := depViolations(good); len(v) > 0 {
		t.Errorf("depViolations(good graph) = %q, want none", v)
	}

	bad := map[string][]string{
		"sandbox":           {"internal/helper"},
		"internal/helper":   {"endpoint"},
		"endpoint":          nil,
		"drivers":           {"internal/errclass", "internal/netns"},
		"drivers/null":      {"drivers"},
		"events":            {"internal/errclass"},
		"internal/netns":    nil,
		"internal/errclass": nil,
	}
	got := depViolations(bad)
	want := []string{
		"drivers must not import internal/netns",
		"events must not import internal/errclass",
		"sandbox must not import endpoint",
	}
	if len(got) != len(want) {
		t.Fatalf("depViolations(bad graph) = %q, want %d violations", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("violation %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
	if !strings.Contains(got[2], "sandbox -> internal/helper -> endpoint") {
		t.Errorf("violation %q does not show the chain sandbox -> internal/helper -> endpoint", got[2])
	}
}

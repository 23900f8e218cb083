//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// isolatedEnv is set in the re-executed copy that runs inside the throwaway namespace.
const isolatedEnv = "CNM_BENCH_ISOLATED"

// outerNSEnv passes the inodes of the namespaces the program was started in, which the
// re-executed copy must not share.
const outerNSEnv = "CNM_BENCH_OUTER_NS"

// cniBinEnv passes the directory of the CNI plugin binaries into the throwaway namespace.
const cniBinEnv = "CNM_BENCH_CNI_BIN"

// outside runs in the machine's own namespaces: it checks for root, builds the CNI plugins
// (which needs the module proxy, unreachable from inside), and re-executes the program under
// unshare in a new network and mount namespace, where it measures. It returns the exit code.
func outside(o benchOptions) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run it as root: it creates network namespaces, bridges and veths (in a throwaway namespace of its own)")
		return 2
	}
	for _, tool := range []string{"unshare", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s is missing (Debian: apt-get install util-linux iptables)\n", tool)
			return 2
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	outer, err := nsInodes()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: cannot read this process's namespaces: %v\n", err)
		return 2
	}
	env := append(os.Environ(), isolatedEnv+"=1", outerNSEnv+"="+outer)
	if o.has("cni") {
		dir, err := cniPlugins(o.cniBin)
		if err != nil {
			// The other subjects still run; the CNI one reports why it could not.
			fmt.Fprintf(os.Stderr, "bench: CNI plugins: %v\n", err)
			env = append(env, cniBinEnv+"=error: "+err.Error())
		} else {
			env = append(env, cniBinEnv+"="+dir)
		}
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--propagation", "private", "--", exe}, os.Args[1:]...)...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "bench: unshare: %v\n", err)
		return 2
	}
	return 0
}

// isolate runs first in the re-executed copy. It refuses to go on unless its network and mount
// namespaces differ from its parent's and from those recorded outside (and from PID 1's, where
// it may read them: the machine's) and its network namespace holds loopback only. Then it puts
// private tmpfs mounts on /run (so /run/netns, /run/cnm, /run/docker, xtables' lock and the
// rest are the run's own) and on /var/lib/{cnm,cni,docker} where they exist, and brings
// loopback up.
func isolate() error {
	// Three independent checks, none of which trusts the environment alone: the namespaces
	// differ from the parent process's (the copy outside that started unshare) and from those
	// recorded outside, and the network namespace is a fresh one, with loopback only.
	self, err := nsInodes()
	if err != nil {
		return fmt.Errorf("cannot check the namespaces: %w", err)
	}
	refuse := func(why string) error {
		return fmt.Errorf("refusing to measure: %s (run `go run .` as root, which re-executes itself under unshare)", why)
	}
	parent, err := nsInodesOf(strconv.Itoa(os.Getppid()))
	if err != nil {
		return refuse("cannot read the parent process's namespaces: " + err.Error())
	}
	if sharesAny(self, parent) {
		return refuse("this process shares its parent's network or mount namespace")
	}
	if outer := os.Getenv(outerNSEnv); outer == "" || sharesAny(self, outer) {
		return refuse("this process shares its caller's network or mount namespace")
	}
	if init, err := nsInodesOf("1"); err == nil && sharesAny(self, init) {
		return refuse("this process shares the machine's network or mount namespace")
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("cannot list links: %w", err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return refuse(fmt.Sprintf("the network namespace is not a fresh one (links: %s)", strings.Join(names, ", ")))
	}
	if err := unix.Mount("cnm-bench", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	for _, d := range []string{"/run/netns", "/run/cnm", "/run/docker", "/run/lock"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"/var/lib/cnm", "/var/lib/cni", "/var/lib/docker"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			if err := unix.Mount("cnm-bench", d, "tmpfs", 0, "mode=0755"); err != nil {
				return fmt.Errorf("mount tmpfs on %s: %w", d, err)
			}
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// nsInodes returns "net:INODE mnt:INODE" for this process.
func nsInodes() (string, error) { return nsInodesOf("self") }

func nsInodesOf(pid string) (string, error) {
	var parts []string
	for _, ns := range []string{"net", "mnt"} {
		fi, err := os.Stat("/proc/" + pid + "/ns/" + ns)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s:%d", ns, fi.Sys().(*syscall.Stat_t).Ino))
	}
	return strings.Join(parts, " "), nil
}

// sharesAny reports whether two nsInodes strings have a namespace in common.
func sharesAny(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	for i := range fa {
		if i < len(fb) && fa[i] == fb[i] {
			return true
		}
	}
	return false
}

// cniPluginsVersion is the release of the CNI reference plugins measured.
const cniPluginsVersion = "v1.10.0"

// cniPlugins returns a directory holding the bridge and host-local plugin binaries: dir when
// given, else a cache directory, where they are built from the module proxy with go install on
// first use.
func cniPlugins(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir = filepath.Join(cache, "cnm-bench", "cni-plugins-"+cniPluginsVersion)
	have := true
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			have = false
		}
	}
	if have {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "bench: building the CNI plugins %s into %s\n", cniPluginsVersion, dir)
	cmd := exec.Command("go", "install",
		"github.com/containernetworking/plugins/plugins/main/bridge@"+cniPluginsVersion,
		"github.com/containernetworking/plugins/plugins/ipam/host-local@"+cniPluginsVersion)
	// Outside any module, with the plugins' own go.mod: the binaries are those of the release.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install: %v: %s", err, out)
	}
	return dir, nil
}

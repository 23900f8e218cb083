// Command cnm-cni is a CNI plugin (spec 1.1: ADD, DEL, CHECK, VERSION, STATUS, GC) that
// attaches a container runtime's network namespace to a cnm network through cnmd, so that
// containerd, CRI-O, Podman or Kubernetes put their containers on cnm's networks.
//
// It is a client of cnmd and nothing else: it never opens cnm's store (bbolt has one writer,
// the agent), and every attachment is a sandbox of cnmd on the runtime's namespace
// (api.SandboxCreate.Netns, cnm.WithNetns) joined to the network with the interface name the
// runtime asks for (CNI_IFNAME, endpoint.WithIfName). Install it where the runtime looks for
// plugins (CNI_PATH, usually /opt/cni/bin) and give it a network configuration such as
//
//	{
//	  "cniVersion": "1.1.0",
//	  "name": "web",
//	  "type": "cnm-cni",
//	  "network": "new_bridge",
//	  "host": "unix:///run/cnm/cnm.sock"
//	}
//
// where network is the cnm network (default: name; it must exist: `cnmctl network create`),
// and host is where cnmd listens (default unix:///run/cnm/cnm.sock; tcp:// needs tlscacert,
// tlscert and tlskey, the client's files). timeout bounds a call (a Go duration, default
// 30s).
//
// # Attachments
//
// An attachment is keyed by CNI's (container ID, interface name, network): the sandbox's name
// is the container ID (1 to 64 characters of [A-Za-z0-9_.-], which runtimes' 64-hex IDs
// are), and on each network it has one endpoint, with the interface name given. A container
// attached to several networks (or twice, under two configurations) has one sandbox with an
// endpoint on each. ADD creates the sandbox on CNI_NETNS with its first endpoint, or connects
// the existing one; an ADD repeated for an attachment that exists returns its result. DEL
// disconnects the endpoint and removes the sandbox with its last one: its interfaces leave
// the runtime's namespace, which stays the runtime's. DEL converges: a second DEL, a DEL whose
// namespace is gone, or one that cnmd does not know (never added, or freed by GC) succeeds.
// CHECK compares the kernel with cnmd's record and the runtime's previous result: the link
// is in the namespace, up, with the recorded MAC and addresses, and the default routes via
// the gateways are there. GC removes every attachment of the network, made by cnm-cni (a
// sandbox on a caller's namespace), that is not in cni.dev/valid-attachments. STATUS
// succeeds when cnmd answers /health and knows the network.
//
// # Results and errors
//
// ADD returns a result of the configuration's version (0.4.0, 1.0.0 or 1.1.0): the
// interface with its MAC and the namespace path as its sandbox, the addresses with the
// interface's index and the gateway, the default routes via the gateways, and the DNS
// settings of the resolv.conf cnmd keeps for the sandbox at that moment. On a user-defined
// network that file points at the embedded resolver, 127.0.0.11, which listens in the
// namespace (loopback is set up for it), once cnmd serves the sandbox: that follows the
// join's event asynchronously, so an ADD may still report the host's nameservers, which
// work from the namespace too. The runtime writes the container's own resolv.conf. Failures are the
// spec's error JSON on standard output with exit status 1: code 1 for a version the plugin
// does not speak, 4 for missing or bad CNI_* variables, 6 for a configuration that is not
// JSON, 7 for a bad configuration or a network cnmd does not know, 11 when cnmd cannot be
// reached or is busy (try again), 50 when STATUS finds it not ready, 100 when CHECK finds the
// kernel differs, and 101 for any other refusal by cnmd, with its message.
//
// It is Linux only where it touches the kernel (CHECK); elsewhere CHECK fails with code 5.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
		fmt.Fprintln(os.Stderr, "cnm-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND and a network configuration on standard input (see: go doc github.com/cnmkit/cnm/cmd/cnm-cni)")
		os.Exit(2)
	}
	os.Exit(runMain(os.Stdin, os.Stdout, os.Getenv))
}

// runMain runs the command the environment names and writes its output, or the error's
// JSON, to stdout. It returns the exit status.
func runMain(stdin io.Reader, stdout io.Writer, getenv func(string) string) int {
	in, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return writeError(stdout, "", &cniError{Code: codeIOFailure, Msg: "read standard input", Details: err.Error()})
	}
	out, version, err := run(context.Background(), getenv, in)
	if err != nil {
		return writeError(stdout, version, err)
	}
	if out != nil {
		if _, err := stdout.Write(out); err != nil {
			return 1
		}
	}
	return 0
}

// writeError writes err as the spec's error JSON, in version (the configuration's, or the
// latest when it had none usable).
func writeError(w io.Writer, version string, err error) int {
	ce, ok := errors.AsType[*cniError](err)
	if !ok {
		ce = &cniError{Code: codeAgent, Msg: err.Error()}
	}
	ce.CNIVersion = version
	if ce.CNIVersion == "" {
		ce.CNIVersion = latestVersion
	}
	b, _ := json.Marshal(ce)
	w.Write(append(b, '\n'))
	return 1
}

// run does the command CNI_COMMAND names with the network configuration in stdin. It returns
// what to print (nil for nothing) and the configuration's version for an error.
func run(ctx context.Context, getenv func(string) string, stdin []byte) (out []byte, version string, err error) {
	command := getenv("CNI_COMMAND")
	if command == "VERSION" {
		v := latestVersion
		var c struct {
			CNIVersion string `json:"cniVersion"`
		}
		if json.Unmarshal(stdin, &c) == nil && c.CNIVersion != "" {
			v = c.CNIVersion
		}
		b, err := json.Marshal(versionResult{CNIVersion: v, SupportedVersions: supportedVersions})
		return b, v, err
	}
	switch command {
	case "ADD", "DEL", "CHECK", "GC", "STATUS":
	case "":
		return nil, "", errorf(codeInvalidEnv, "CNI_COMMAND is not set")
	default:
		return nil, "", errorf(codeInvalidEnv, "CNI_COMMAND %q: want ADD, DEL, CHECK, VERSION, STATUS or GC", command)
	}
	conf, err := parseConf(command, stdin)
	if conf != nil {
		version = conf.CNIVersion
	}
	if err != nil {
		return nil, version, err
	}
	if command == "CHECK" && versionLess(conf.CNIVersion, "0.4.0") {
		return nil, version, errorf(codeIncompatibleVersion, "CHECK needs CNI version 0.4.0 or later")
	}
	timeout := 30 * time.Second
	if conf.Timeout != "" {
		if timeout, err = time.ParseDuration(conf.Timeout); err != nil || timeout <= 0 {
			return nil, version, errorf(codeInvalidConfig, "network configuration: timeout %q: want a positive Go duration", conf.Timeout)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p, err := newPlugin(conf)
	if err != nil {
		return nil, version, err
	}
	defer p.close()
	switch command {
	case "STATUS":
		return nil, version, p.status(ctx)
	case "GC":
		return nil, version, p.gc(ctx)
	}
	a, err := attachmentFromEnv(command, getenv)
	if err != nil {
		return nil, version, err
	}
	switch command {
	case "ADD":
		res, err := p.add(ctx, a)
		if err != nil {
			return nil, version, err
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		if err := enc.Encode(res); err != nil {
			return nil, version, err
		}
		return buf.Bytes(), version, nil
	case "DEL":
		return nil, version, p.del(ctx, a)
	default: // CHECK
		return nil, version, p.check(ctx, a)
	}
}

// env is an attachment as the runtime names it: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME.
type env struct {
	ContainerID string
	Netns       string // may be "" for DEL
	IfName      string
}

// attachmentFromEnv reads and checks the CNI_* variables command needs.
func attachmentFromEnv(command string, getenv func(string) string) (env, error) {
	a := env{ContainerID: getenv("CNI_CONTAINERID"), Netns: getenv("CNI_NETNS"), IfName: getenv("CNI_IFNAME")}
	if err := checkContainerID(a.ContainerID); err != nil {
		return a, err
	}
	if a.IfName == "" {
		return a, errorf(codeInvalidEnv, "CNI_IFNAME is not set")
	}
	if err := checkIfName(a.IfName); err != nil {
		return a, err
	}
	if a.Netns == "" && command != "DEL" {
		return a, errorf(codeInvalidEnv, "CNI_NETNS is not set")
	}
	return a, nil
}

// checkContainerID checks a container ID: it is the sandbox's name, so 1 to 64 characters
// of [A-Za-z0-9_.-], the first alphanumeric.
func checkContainerID(id string) error {
	if id == "" {
		return errorf(codeInvalidEnv, "CNI_CONTAINERID is not set")
	}
	if len(id) > 64 {
		return errorf(codeInvalidEnv, "CNI_CONTAINERID %q: longer than 64 characters, which cnm's sandbox names allow", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return errorf(codeInvalidEnv, "CNI_CONTAINERID %q: want characters of [A-Za-z0-9_.-], the first alphanumeric", id)
		}
	}
	return nil
}

// checkIfName checks CNI_IFNAME as the kernel and the spec want it.
func checkIfName(name string) error {
	if len(name) > 15 || name == "." || name == ".." || bytes.ContainsAny([]byte(name), "/: \t\n") {
		return errorf(codeInvalidEnv, "CNI_IFNAME %q: want 1 to 15 bytes, not . or .., without '/', ':' or white space", name)
	}
	return nil
}

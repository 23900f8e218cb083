package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// The CNI versions this plugin speaks. CHECK needs 0.4.0 or later, GC and STATUS 1.1.0.
var supportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// latestVersion is the version of the spec the plugin implements.
const latestVersion = "1.1.0"

// The error codes of the CNI spec ("Error" section) this plugin returns.
const (
	codeIncompatibleVersion = 1   // incompatible CNI version
	codeUnsupportedField    = 2   // unsupported field in the network configuration
	codeUnknownContainer    = 3   // container unknown or does not exist
	codeInvalidEnv          = 4   // invalid necessary environment variables
	codeIOFailure           = 5   // I/O failure
	codeDecodeFailure       = 6   // failed to decode content
	codeInvalidConfig       = 7   // invalid network config
	codeTryAgainLater       = 11  // try again later
	codeNotAvailable        = 50  // the plugin is not available (STATUS)
	codeCheckFailed         = 100 // plugin-specific: CHECK found the kernel differs from the record
	codeAgent               = 101 // plugin-specific: cnmd refused the request
)

// cniError is the spec's error result: written to standard output with a non-zero exit.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (e *cniError) Error() string {
	if e.Details != "" {
		return e.Msg + ": " + e.Details
	}
	return e.Msg
}

// errorf returns a *cniError with code and a message.
func errorf(code int, format string, args ...any) *cniError {
	return &cniError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// netConf is the network configuration the runtime gives on standard input: the spec's
// common keys, the plugin's own and, for CHECK, the previous result; for GC the attachments
// to keep.
type netConf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	// Network is the cnm network to attach to; "" means Name.
	Network string `json:"network,omitempty"`
	// Host is where cnmd listens: unix:///path (the default, api.DefaultHost) or tcp://
	// with TLSCACert, TLSCert and TLSKey.
	Host      string `json:"host,omitempty"`
	TLSCACert string `json:"tlscacert,omitempty"`
	TLSCert   string `json:"tlscert,omitempty"`
	TLSKey    string `json:"tlskey,omitempty"`
	// Timeout bounds the whole call, as a Go duration ("30s", the default).
	Timeout string `json:"timeout,omitempty"`

	PrevResult       json.RawMessage `json:"prevResult,omitempty"`
	ValidAttachments []attachment    `json:"cni.dev/valid-attachments,omitempty"`

	// The spec's keys this plugin does not act on, accepted so that a runtime's full
	// configuration passes: capabilities are handled by other plugins of the list.
	DisableCheck  bool            `json:"disableCheck,omitempty"`
	DisableGC     bool            `json:"disableGC,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Capabilities  json.RawMessage `json:"capabilities,omitempty"`
	IPAM          json.RawMessage `json:"ipam,omitempty"`
	DNS           json.RawMessage `json:"dns,omitempty"`
}

// attachment is one element of cni.dev/valid-attachments.
type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// network returns the cnm network the configuration names.
func (c *netConf) network() string {
	if c.Network != "" {
		return c.Network
	}
	return c.Name
}

// parseConf decodes and checks a network configuration for command.
func parseConf(command string, stdin []byte) (*netConf, error) {
	var c netConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, &cniError{Code: codeDecodeFailure, Msg: "decode network configuration", Details: err.Error()}
	}
	if c.CNIVersion == "" {
		return nil, errorf(codeInvalidConfig, "network configuration: cniVersion is required")
	}
	if !slices.Contains(supportedVersions, c.CNIVersion) {
		return &c, &cniError{Code: codeIncompatibleVersion, Msg: fmt.Sprintf("CNI version %q is not supported", c.CNIVersion), Details: fmt.Sprintf("supported: %v", supportedVersions)}
	}
	if (command == "GC" || command == "STATUS") && versionLess(c.CNIVersion, "1.1.0") {
		return &c, &cniError{Code: codeIncompatibleVersion, Msg: fmt.Sprintf("%s needs CNI version 1.1.0 or later, the configuration has %s", command, c.CNIVersion)}
	}
	if c.Name == "" {
		return &c, errorf(codeInvalidConfig, "network configuration: name is required")
	}
	if c.network() == "" || len(c.network()) > 64 {
		return &c, errorf(codeInvalidConfig, "network configuration: network %q: want 1 to 64 characters", c.network())
	}
	return &c, nil
}

// versionLess reports whether version a is older than b; both are among supportedVersions.
func versionLess(a, b string) bool {
	return slices.Index(supportedVersions, a) < slices.Index(supportedVersions, b)
}

// result is the spec's ADD result (1.x; for 0.4.0 each IP also carries its "version").
type result struct {
	CNIVersion string       `json:"cniVersion"`
	Interfaces []iface      `json:"interfaces,omitempty"`
	IPs        []ipConfig   `json:"ips,omitempty"`
	Routes     []route      `json:"routes,omitempty"`
	DNS        *dnsSettings `json:"dns,omitempty"`
}

type iface struct {
	Name    string `json:"name"`
	Mac     string `json:"mac,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
}

type ipConfig struct {
	Version   string       `json:"version,omitempty"` // 0.4.0 only
	Interface *int         `json:"interface,omitempty"`
	Address   netip.Prefix `json:"address"`
	Gateway   netip.Addr   `json:"gateway,omitzero"`
}

type route struct {
	Dst netip.Prefix `json:"dst"`
	GW  netip.Addr   `json:"gw,omitzero"`
}

type dnsSettings struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Domain      string   `json:"domain,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// versionResult is the output of VERSION.
type versionResult struct {
	CNIVersion        string   `json:"cniVersion"`
	SupportedVersions []string `json:"supportedVersions"`
}

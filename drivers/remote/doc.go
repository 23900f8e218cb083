// Package remote lets cnm use Docker's network and IPAM plugins: [Driver] is a cnm network
// driver and [IPAM] an [ipam.Allocator] that forward every call to an out-of-process plugin
// speaking Docker's plugin protocol, so existing plugins work with cnm unchanged. The reverse
// direction, serving a cnm driver to Docker, is package
// [github.com/cnmkit/cnm/drivers/remote/server]; the messages are in package
// [github.com/cnmkit/cnm/drivers/remote/wire].
//
// # Protocol
//
// Each call is an HTTP POST of a JSON object to /<Interface>.<Method> on the plugin's socket,
// with the Accept header application/vnd.docker.plugins.v1.2+json. [Open] and [OpenIPAM]
// find the plugin, call /Plugin.Activate and check that the plugin implements NetworkDriver
// (or IpamDriver), then ask /NetworkDriver.GetCapabilities (its scope, local or global) or
// /IpamDriver.GetDefaultAddressSpaces. The driver's methods map one to one: CreateNetwork,
// DeleteNetwork, CreateEndpoint, DeleteEndpoint, Join (followed by
// ProgramExternalConnectivity when the plugin gives a gateway), Leave (preceded by
// RevokeExternalConnectivity), plus [Driver.EndpointOperInfo], [Driver.DiscoverNew] and
// [Driver.DiscoverDelete] for callers that want them. The allocator's are RequestPool,
// ReleasePool, RequestAddress and ReleaseAddress.
//
// # Discovery
//
// Unless [Config].Addr names the plugin's address, [Discover] looks, in this order, for a Unix
// socket NAME.sock or NAME/NAME.sock in /run/docker/plugins, then for NAME.spec,
// NAME/NAME.spec, NAME.json and NAME/NAME.json in /etc/docker/plugins and then
// /usr/lib/docker/plugins, as Docker does. A .spec file holds an address (unix:///path or
// tcp://host:port), a .json file an object with Addr. Tests and embedders set other
// directories in [Config].
//
// # Errors
//
// A plugin answers an error as {"Err": "..."}: it becomes a [*PluginError], which matches
// cnm's error classes (cnm.ErrNotFound, ...) by status and message, as its doc says. A
// plugin that is not found fails Open with an error matching cnm.ErrNotFound; one that does
// not answer, or answers garbage, with cnm.ErrUnavailable; one that lacks the interface
// with cnm.ErrNotSupported. Deleting, leaving or releasing what the plugin says is not found
// returns nil, as cnm's contract wants. Each call is bounded by the caller's context and by
// [Config].Timeout.
//
// # Not supported
//
// Plugins reached over TLS (https, or a .json spec with TLSConfig); Docker's managed (v2)
// plugins, which Docker itself starts (their socket can still be named with Config.Addr);
// AllocateNetwork and FreeNetwork of global-scope plugins in swarm mode; published ports (the
// driver does not report the Ports capability); the plugin's DstPrefix (cnm names the
// interface itself: the sandbox moves the plugin's SrcName link in and renames it to the
// endpoint's interface name); DisableGatewayService (cnm connects a sandbox to its gateway
// network only for drivers that ask). Plugin addresses that differ from what cnm's IPAM gave
// are refused. Docker retries connecting to a plugin for up to 30 seconds; this package does
// not retry, and leaves that to the caller's context.
//
// A Driver and an IPAM are safe for concurrent use and need no privilege; the plugin does
// the kernel work.
package remote

// Package api is cnm's wire vocabulary: the JSON requests and responses of cnmd's REST API
// (package api/server serves them, api/client calls them, cmd/cnmctl prints them), the map
// from error classes to HTTP statuses and back, and the parsing of the strings users type at
// the edges (Docker's -o and --label K=V pairs, -p port specs, subnets, ranges, gateways and
// --aux-address name=addr, network modes such as container:NAME).
//
// It is pure Go: it imports only the standard library and cnm's contract packages (drivers
// for port bindings, events for the event kinds, the error classes), never netlink or the
// Controller, so it builds on every system and a client program pulls in nothing of the core.
//
// # Shapes
//
// The responses have Docker's shapes, so that templates written for docker work unchanged:
// [NetworkInspect] is `docker network inspect`'s element, and [SandboxInspect] carries the
// network part of `docker container inspect` (NetworkSettings.Networks, NetworkSettings.Ports).
// Request bodies are decoded strictly by [Decode]: at most [MaxBodyBytes], one JSON value,
// unknown fields refused. Every request type has a Check method that validates it (names,
// addresses, ports) and returns an error matching the invalid-parameter class that names the
// field and the value.
//
// # Paths
//
// Every route is under /v1 ([Version]); /health and /metrics are not versioned:
//
//	GET    /v1/networks                       []NetworkInspect
//	POST   /v1/networks                       NetworkCreate -> 201 NetworkCreated
//	GET    /v1/networks/{name}                NetworkInspect
//	DELETE /v1/networks/{name}                204
//	POST   /v1/networks/{name}/connect        Connect -> EndpointSettings
//	POST   /v1/networks/{name}/disconnect     Disconnect -> 204
//	POST   /v1/networks/prune                 PruneReport
//	GET    /v1/sandboxes                      []SandboxInspect
//	POST   /v1/sandboxes                      SandboxCreate -> 201 SandboxInspect
//	GET    /v1/sandboxes/{name}               SandboxInspect
//	DELETE /v1/sandboxes/{name}[?force=1]     204
//	GET    /v1/events (also /events)          newline-delimited Event values
//	GET    /health                            Health
//	GET    /metrics                           Prometheus text
//
// Errors come back as an [Error] body with the status [Status] gives its class; the client
// turns them back into an *[Error] that matches the class with errors.Is (so
// errors.Is(err, cnm.ErrNotFound) holds for a Go caller of api/client).
package api

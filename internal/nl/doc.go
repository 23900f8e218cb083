// Package nl holds netlink helpers shared by cnm's drivers and benchmarks: hand-built
// requests for the fast paths that the netlink library spreads over several round trips.
//
// The helpers speak Linux's rtnetlink. On other systems the package builds, but there is no
// message to build and no socket to open: the request builders return nil, and NewSocket and
// Socket.Exec fail with an error matching errclass.ErrNotSupported.
package nl

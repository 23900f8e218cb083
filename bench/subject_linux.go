//go:build linux

package main

import (
	"context"
	"errors"
)

// subject is one implementation measured: each operation is what that implementation does
// for it by default, through its own API.
type subject interface {
	name() string
	// netCreate creates a bridge network with NAT (the subject's default rules) on subnet,
	// named after i; netDelete removes it. errNoNetworkObject: the subject has none.
	netCreate(ctx context.Context, i int, subnet string) error
	netDelete(ctx context.Context, i int) error
	// newBox creates a container's network namespace (a sandbox); deleteBox removes it.
	newBox(ctx context.Context, id string) (any, error)
	deleteBox(ctx context.Context, b any) error
	// attach connects the box to the subject's benchmark network (a veth on its bridge, an
	// address, a default route); detach undoes it.
	attach(ctx context.Context, b any) error
	detach(ctx context.Context, b any) error
	// removeDetaches reports whether deleteBox alone detaches an attached box, as the
	// subject removes a container: cnm's DeleteSandbox and libnetwork's Sandbox.Delete do;
	// the floor's unmount does (the kernel deletes the veth with the namespace); a CNI
	// runtime calls DEL first.
	removeDetaches() bool
	// nsPath is the path of the box's namespace.
	nsPath(b any) string
	close() error
}

// errNoNetworkObject is a subject's netCreate when it has no network to create ahead of its
// first attach (CNI: the bridge plugin makes the bridge and its rules on the first ADD).
var errNoNetworkObject = errors.New("no network object: the bridge and its NAT rules are made by the first attach")

// Subnets: each subject's attach network and create/delete network are its own, so that none
// overlaps another's.
var subnets = map[string][2]string{
	"raw":        {"10.204.0.0/16", "10.214.0.0/24"},
	"cnm":        {"10.201.0.0/16", "10.211.0.0/24"},
	"libnetwork": {"10.202.0.0/16", "10.212.0.0/24"},
	"cni":        {"10.203.0.0/16", "10.213.0.0/24"},
}

// Command multihost is one host of a cnm cluster with an overlay network: run it on each of
// two or three VMs (see README.md), or run a whole cluster on one machine with -lab, where each
// host is this program in a network namespace of its own, as on a VM.
//
// A host opens the global store (etcd or Consul), starts the encrypted gossip plane, creates
// the overlay network (with -create) or waits for another host to, puts a container on it,
// prints "READY <container> <address> <namespace path>", and waits for SIGINT or SIGTERM; then
// it removes its container (and the network, with -create, once it is the last), leaves the
// cluster and exits.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/kvstore/kvurl"
	"github.com/cnmkit/cnm/network"
)

type hostFlags struct {
	name, store, vtep, iface, gossipAddr, join, key, dataDir, runDir, netName, subnet, container string
	create, verbose                                                                              bool
}

func main() {
	var f hostFlags
	lab := flag.Int("lab", 0, "run a lab of N hosts on this machine, each this program in a namespace of its own, and check that their containers reach each other")
	crash := flag.Bool("crash", false, "with -lab: kill the last host (SIGKILL), check the others drop its container, restart it and check it is back")
	flag.StringVar(&f.name, "name", "", "this host's name, unique in the cluster (default: the machine's host name)")
	flag.StringVar(&f.store, "store", "", "the global store: etcd://host:2379/prefix or consul://host:8500/prefix (required)")
	flag.StringVar(&f.vtep, "vtep", "", "this host's underlay address (default: the address of the default route's interface)")
	flag.StringVar(&f.iface, "interface", "", "the underlay interface, instead of -vtep")
	flag.StringVar(&f.gossipAddr, "gossip", "", "address:port the gossip plane binds to (default: the VTEP address, port 7946)")
	flag.StringVar(&f.join, "join", "", "comma-separated gossip addresses of other hosts")
	flag.StringVar(&f.key, "key", "", "the cluster's gossip key, 32 bytes in hex (every host the same; required)")
	flag.StringVar(&f.dataDir, "data", "/var/lib/cnm", "the host's data directory")
	flag.StringVar(&f.runDir, "run", "/run/cnm", "the host's run directory")
	flag.StringVar(&f.netName, "network", "ov", "the overlay network's name")
	flag.StringVar(&f.subnet, "subnet", "10.90.0.0/24", "the overlay network's subnet (with -create)")
	flag.StringVar(&f.container, "container", "", "this host's container's name (default: c-<host name>)")
	flag.BoolVar(&f.create, "create", false, "create the overlay network (one host does)")
	flag.BoolVar(&f.verbose, "v", false, "log the controller's work")
	flag.Parse()
	var err error
	if *lab > 0 {
		self, eerr := os.Executable()
		if eerr != nil {
			err = eerr
		} else {
			err = runLab(self, *lab, *crash, os.Stdout)
		}
	} else {
		err = runHost(f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func runHost(f hostFlags) (err error) {
	if f.store == "" || f.key == "" {
		return errors.New("-store and -key are required")
	}
	key, err := hex.DecodeString(f.key)
	if err != nil {
		return fmt.Errorf("-key: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.DiscardHandler)
	if f.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	gs, err := kvurl.Open(ctx, f.store, kvurl.Options{})
	if err != nil {
		return err
	}
	defer gs.Close()
	oc := overlay.Config{Interface: f.iface}
	gc := &gossip.Config{Keys: [][]byte{key}, BindPort: gossip.DefaultPort}
	if f.vtep != "" {
		if oc.VTEP, err = netip.ParseAddr(f.vtep); err != nil {
			return fmt.Errorf("-vtep: %w", err)
		}
		gc.BindAddr = oc.VTEP
	}
	if f.gossipAddr != "" {
		ap, err := netip.ParseAddrPort(f.gossipAddr)
		if err != nil {
			return fmt.Errorf("-gossip: %w", err)
		}
		gc.BindAddr, gc.BindPort = ap.Addr(), int(ap.Port())
	}
	var peers []string
	if f.join != "" {
		peers = strings.Split(f.join, ",")
	}
	c, err := cnm.New(ctx, cnm.Config{DataDir: f.dataDir, RunDir: f.runDir, Logger: logger,
		GlobalStore: gs, Hostname: f.name, Gossip: gc, GossipPeers: peers, Overlay: oc})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()

	if f.create {
		if _, err := c.Network(f.netName); err != nil {
			subnet, perr := netip.ParsePrefix(f.subnet)
			if perr != nil {
				return fmt.Errorf("-subnet: %w", perr)
			}
			if _, err := c.NewNetwork(ctx, f.netName, overlay.DriverType, network.WithSubnet(subnet)); err != nil {
				return err
			}
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := c.Network(f.netName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("network %s did not appear in 30s: is a host running with -create?", f.netName)
		}
	}
	id := f.container
	if id == "" {
		h := f.name
		if h == "" {
			h, _ = os.Hostname()
		}
		id = "c-" + h
	}
	// After a crash the container is still there: the Controller restored it.
	sb, err := c.Sandbox(id)
	var ep endpoint.Endpoint
	if err == nil {
		nw, nerr := c.Network(f.netName)
		if nerr == nil {
			ep, err = nw.Endpoint(id)
		} else {
			err = nerr
		}
	} else {
		if sb, err = c.NewSandbox(ctx, id); err != nil {
			return err
		}
		if ep, err = c.Connect(ctx, f.netName, id); err != nil {
			return errors.Join(err, c.DeleteSandbox(context.WithoutCancel(ctx), id))
		}
	}
	if err != nil {
		return err
	}
	fmt.Printf("READY %s %s %s %s\n", id, ep.Info().IPv4.Addr(), sb.Key(), ep.Info().MAC)

	<-ctx.Done()
	done := context.Background()
	err = c.DeleteSandbox(done, id)
	if f.create {
		// The network goes once no host has an endpoint on it (the others leave first).
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			derr := c.DeleteNetwork(done, f.netName)
			if derr == nil || !errors.Is(derr, cnm.ErrConflict) || time.Now().After(deadline) {
				err = errors.Join(err, derr)
				break
			}
		}
	}
	return errors.Join(err, c.Leave(done))
}

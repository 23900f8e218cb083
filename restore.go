package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
)

// restore rebuilds the Controller from its store and reconciles the kernel with it. It runs
// in New, before the Controller is shared, and records each repair.
func (c *Controller) restore(ctx context.Context) error {
	// 1. Networks: replay their IPAM pools and let their drivers re-create or adopt them.
	pairs, err := c.store.List(ctx, netobj.KeyPrefix)
	if err != nil {
		return fmt.Errorf("cnm: restore networks: %w", err)
	}
	for _, p := range pairs {
		var rec netobj.Record
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			c.log.Error("restore: bad network record", "key", p.Key, "err", err)
			continue
		}
		n, err := c.restoreNetwork(ctx, rec)
		if err != nil {
			// Its records stay: the network waits for its driver (or the next start).
			c.wait(ctx, rec, false, err)
			c.repaired(drivers.Repair{Object: "network " + rec.Name, Action: "waiting", Reason: err.Error() + "; its records are kept"})
			continue
		}
		c.networks[n.ID()] = n
		c.netNames[n.Name()] = n.ID()
	}

	// 2. Endpoints: their records are the leases; replay them into IPAM. They are in the
	// local store, and in the run store for those Connect made for a sandbox's namespace.
	var maxSeq uint64
	eps := map[string][]*epobj.Ep{} // sandbox ID -> joined endpoints
	var later []kvstore.KVPair      // run-store records of networks not known yet: global ones
	for _, rs := range c.recordStores() {
		pairs, err = rs.s.List(ctx, epobj.KeyPrefix)
		if err != nil {
			return fmt.Errorf("cnm: restore endpoints: %w", err)
		}
		for _, p := range pairs {
			var rec epobj.Record
			if err := json.Unmarshal(p.Value, &rec); err != nil {
				c.log.Error("restore: bad endpoint record", "key", p.Key, "err", err)
				continue
			}
			n := c.networks[rec.NetworkID]
			if n == nil {
				if w := c.waiting[rec.NetworkID]; w != nil {
					w.eps = append(w.eps, waitingEp{key: p.Key, rev: p.Revision, rec: rec, runtime: rs.runtime})
					maxSeq = max(maxSeq, rec.JoinSeq)
					continue
				}
				if rs.runtime && c.behind != nil {
					later = append(later, p) // a global network's, restored below
					continue
				}
				c.dropRecord(ctx, rs.s, p.Key, "endpoint "+rec.Name, "its network is gone")
				continue
			}
			ep, err := n.RestoreEndpoint(ctx, rec, p.Revision, rs.runtime)
			if err != nil {
				c.dropRecord(ctx, rs.s, p.Key, "endpoint "+rec.Name, err.Error())
				continue
			}
			maxSeq = max(maxSeq, rec.JoinSeq)
			if rec.SandboxID != "" {
				eps[rec.SandboxID] = append(eps[rec.SandboxID], ep)
			}
		}
	}
	if c.cluster != nil {
		// Global networks and this host's endpoints on them, from the global store.
		gseq, err := c.restoreGlobal(ctx, eps, later)
		if err != nil {
			return err
		}
		maxSeq = max(maxSeq, gseq)
	}
	c.seq.Store(maxSeq)
	c.reconcileIPAM(ctx)

	// 3. Sandboxes: re-open their namespaces and adopt their interfaces. Own namespaces first,
	// so container-mode sandboxes find the one they share.
	pairs, err = c.store.List(ctx, sandboxPrefix)
	if err != nil {
		return fmt.Errorf("cnm: restore sandboxes: %w", err)
	}
	var recs []sandboxRecord
	for _, p := range pairs {
		var rec sandboxRecord
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			c.log.Error("restore: bad sandbox record", "key", p.Key, "err", err)
			continue
		}
		recs = append(recs, rec)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		return recs[i].Mode == sandbox.ModeNamespace && recs[j].Mode != sandbox.ModeNamespace
	})
	held := c.heldInterfaces()
	for _, rec := range recs {
		joined := eps[rec.ID]
		delete(eps, rec.ID)
		c.restoreSandbox(ctx, rec, joined, held[rec.ID])
	}
	// Endpoints that claim a sandbox without a record: the sandbox was deleted mid-way.
	for id, joined := range eps {
		for _, ep := range joined {
			c.loseEndpoint(ctx, ep, "sandbox "+id+" has no record")
		}
	}

	// 4. Namespaces under RunDir that no sandbox owns: a crash between creating one and
	// storing its record.
	names, err := c.machine.List(c.cfg.RunDir)
	if err != nil {
		c.log.Warn("restore: list namespaces", "err", err)
	}
	for _, id := range names {
		if _, ok := c.sandboxes[id]; ok {
			continue
		}
		if _, err := c.store.Get(ctx, sandboxPrefix+id); !errors.Is(err, kvstore.ErrKeyNotFound) {
			continue // a sandbox kept for the next start to retry, or the store failed
		}
		obj := "netns " + id
		if err := c.machine.Remove(c.cfg.RunDir, id); err != nil {
			c.log.Error("restore: remove namespace", "netns", id, "err", err)
			continue
		}
		c.repaired(drivers.Repair{Object: obj, Action: "removed", Reason: "no sandbox record"})
	}
	// Files directories (hosts, resolv.conf) that no sandbox owns: the same crash, or a
	// sandbox dropped above because its namespace was gone. They are under RunDir, or under
	// DataDir for sandboxes made by an older version.
	for _, filesRoot := range []string{filepath.Join(c.cfg.RunDir, "sandboxes"), filepath.Join(c.cfg.DataDir, "sandboxes")} {
		ents, err := os.ReadDir(filesRoot)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("restore: list sandbox files", "err", err)
		}
		for _, e := range ents {
			if _, ok := c.sandboxes[e.Name()]; ok || !e.IsDir() {
				continue
			}
			if _, err := c.store.Get(ctx, sandboxPrefix+e.Name()); !errors.Is(err, kvstore.ErrKeyNotFound) {
				continue // a sandbox kept for the next start to retry, or the store failed
			}
			if err := os.RemoveAll(filepath.Join(filesRoot, e.Name())); err != nil {
				c.log.Error("restore: remove sandbox files", "sandbox", e.Name(), "err", err)
				continue
			}
			c.repaired(drivers.Repair{Object: "files of sandbox " + e.Name(), Action: "removed", Reason: "no sandbox record"})
		}
	}

	// 5. Drivers: remove their kernel objects that belong to no live network or endpoint.
	// Every reconciler gets the networks and endpoints of every driver: two drivers may share
	// kernel objects' naming (two bridge driver instances both own "cnm:" bridges), and IDs are
	// unique, so another driver's live IDs only keep its objects safe.
	var live drivers.LiveState
	c.waitingLive(&live)
	for _, n := range c.networks {
		c.gw.restore(n.Eps())
		live.Networks = append(live.Networks, drivers.NetworkID(n.ID()))
		for _, ep := range n.Eps() {
			if ep.Info().SandboxID != "" {
				live.Endpoints = append(live.Endpoints, drivers.EndpointID(ep.ID()))
			}
		}
	}
	for _, name := range c.reg.Names() {
		e, _ := c.reg.Get(name)
		if e.Reconciler == nil {
			continue
		}
		reps, err := e.Reconciler.Reconcile(ctx, live)
		for _, r := range reps {
			c.repaired(r)
		}
		if err != nil {
			c.log.Error("restore: reconcile", "driver", name, "err", err)
		}
	}

	// 6. Allocations of local-scope drivers whose network has no record: a crash between
	// AllocateNetwork and the record's commit. (Global-scope ones are the sweep's.)
	for _, name := range c.reg.Names() {
		e, _ := c.reg.Get(name)
		if e.Allocator == nil || e.Caps.DataScope != drivers.LocalScope {
			continue
		}
		ids, err := e.Allocator.Allocated(ctx)
		if err != nil {
			c.log.Error("restore: list allocations", "driver", name, "err", err)
			continue
		}
		for _, id := range ids {
			if _, ok := c.networks[string(id)]; ok {
				continue
			}
			if _, ok := c.waiting[string(id)]; ok {
				continue
			}
			if err := e.Allocator.FreeNetwork(ctx, drivers.FreeNetworkRequest{NetworkID: id}); err != nil {
				c.log.Error("restore: free allocation", "driver", name, "network", id, "err", err)
				continue
			}
			c.repaired(drivers.Repair{Object: "allocation of network " + id.Short() + " (driver " + name + ")", Action: "released", Reason: "no network record refers to it"})
		}
	}
	return nil
}

func (c *Controller) restoreNetwork(ctx context.Context, rec netobj.Record) (*netobj.Net, error) {
	e, err := c.reg.Get(rec.Driver)
	if err != nil {
		return nil, err
	}
	if err := c.checkGossip(e); err != nil {
		return nil, err
	}
	var opts drivers.NetworkOptions
	if len(rec.Options) > 0 {
		if e.Parser == nil {
			return nil, errclass.Invalid("driver options", strings.Join(slices.Sorted(mapsKeys(rec.Options)), ","), "driver takes no options")
		}
		if opts, err = e.Parser.ParseNetworkOptions(rec.Options); err != nil {
			return nil, err
		}
	}
	alloc, err := c.allocatorFor(e, rec.IPAMDriver)
	if err != nil {
		return nil, err
	}
	return netobj.Restore(ctx, c.netConfig(e, alloc), rec, opts)
}

// dropRecord deletes the record at key from store s and reports it.
func (c *Controller) dropRecord(ctx context.Context, s kvstore.Store, key, object, reason string) {
	if err := s.Delete(ctx, key); err != nil {
		c.log.Error("restore: delete record", "key", key, "err", err)
		return
	}
	c.repaired(drivers.Repair{Object: object, Action: "removed record", Reason: reason})
}

// loseEndpoint handles an endpoint whose sandbox vanished: the driver is told, the endpoint is
// deleted and its addresses freed, as DeleteSandbox would have done.
func (c *Controller) loseEndpoint(ctx context.Context, ep *epobj.Ep, reason string) {
	name := ep.Name()
	err := errors.Join(ep.LeaveGone(ctx), ep.Delete(ctx))
	if err != nil {
		c.log.Error("restore: drop endpoint", "endpoint", name, "err", err)
		return
	}
	c.repaired(drivers.Repair{Object: "endpoint " + name, Action: "removed", Reason: reason})
}

// restoreSandbox re-opens a sandbox with the interfaces of its joined endpoints and those held
// for endpoints of waiting networks, in the order they joined.
func (c *Controller) restoreSandbox(ctx context.Context, rec sandboxRecord, joined []*epobj.Ep, held []heldIface) {
	all := slices.Clone(held)
	byName := map[string]*epobj.Ep{}
	for _, ep := range joined {
		r := ep.Record()
		if r.IfName == "" {
			continue
		}
		byName[r.IfName] = ep
		all = append(all, heldIface{seq: r.JoinSeq, iface: interfaceOf(r)})
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].seq < all[j].seq })
	ifaces := make([]sandbox.Interface, len(all))
	for i, h := range all {
		ifaces[i] = h.iface
	}
	var share *sbox
	if rec.Mode == sandbox.ModeContainer {
		share = c.sandboxes[rec.Share]
	}
	var (
		ns      sandbox.Handle
		dropped []string
		err     error
	)
	if rec.Mode == sandbox.ModeContainer && share == nil {
		err = &errclass.NotFoundError{Kind: "sandbox", Name: rec.Share}
	} else {
		cfg := c.sandboxConfig(rec, share)
		if old := filepath.Join(c.cfg.DataDir, "sandboxes", rec.ID); dirExists(old) {
			cfg.FilesDir = old // made by an older version: a container may have its files bind-mounted
		}
		ns, dropped, err = c.machine.Open(ctx, cfg, ifaces)
	}
	if err != nil && !errors.Is(err, errclass.ErrNotFound) {
		// Something else failed: keep the records for the next start to try again.
		c.log.Error("restore sandbox", "sandbox", rec.ID, "err", err)
		c.repaired(drivers.Repair{Object: "sandbox " + rec.ID, Action: "not restored", Reason: err.Error()})
		return
	}
	if err != nil {
		// The namespace is gone (a reboot, or a crash while deleting): so is the sandbox.
		for _, ep := range joined {
			c.loseEndpoint(ctx, ep, "sandbox "+rec.ID+" is gone")
		}
		c.dropRecord(ctx, c.store, sandboxPrefix+rec.ID, "sandbox "+rec.ID, err.Error())
		return
	}
	for _, name := range dropped {
		if ep := byName[name]; ep != nil {
			c.settleDropped(ctx, ep, rec.ID, name)
		}
	}
	for _, ep := range joined {
		if ep.Info().SandboxID == rec.ID {
			c.rejoin(ctx, ep, ns)
		}
	}
	c.sandboxes[rec.ID] = &sbox{ns: ns, rec: rec}
}

// rejoin attaches a restored endpoint to its restored sandbox, and lets its driver restore
// what it keeps of the join (drivers.EndpointRestorer).
func (c *Controller) rejoin(ctx context.Context, ep *epobj.Ep, sb sandbox.Handle) {
	ep.Restore(sb)
	c.mu.Lock()
	n := c.networks[ep.NetworkID()]
	c.mu.Unlock()
	if n == nil {
		return
	}
	e, err := c.reg.Get(n.Driver())
	if err != nil || e.Restorer == nil {
		return
	}
	r := ep.Record()
	mac, _ := parseMAC(r.MAC)
	err = e.Restorer.RestoreEndpoint(ctx, drivers.JoinRequest{
		NetworkID: drivers.NetworkID(r.NetworkID), EndpointID: drivers.EndpointID(r.ID),
		SandboxID: sb.ID(), Hostname: sb.Hostname(), Endpoint: r.Name, Aliases: r.Aliases,
		SandboxKey: sb.Key(), NetnsFD: sb.NetnsFD(), IfName: r.IfName, MAC: mac, IPv4: r.IPv4, IPv6: r.IPv6,
	})
	if err != nil {
		c.repaired(drivers.Repair{Object: "endpoint " + r.Name + " of network " + n.Name(), Action: "not restored in its driver", Reason: err.Error()})
	}
}

// settleDropped handles an endpoint whose interface in sandbox sbID was found missing or
// half-configured: a connected endpoint is lost (left and deleted), one whose join was cut
// short is left and kept.
func (c *Controller) settleDropped(ctx context.Context, ep *epobj.Ep, sbID, ifName string) {
	if ep.Record().Connected {
		c.loseEndpoint(ctx, ep, "its interface "+ifName+" in sandbox "+sbID+" was missing or half-configured")
		return
	}
	if err := ep.Forget(ctx); err != nil {
		c.log.Error("restore: forget interface", "sandbox", sbID, "interface", ifName, "err", err)
		return
	}
	c.repaired(drivers.Repair{Object: "interface " + ifName + " of sandbox " + sbID, Action: "left", Reason: "missing or half-configured in the namespace"})
}

// reconcileIPAM asks every local-scope pool whose IPAM driver can reconcile to free the leases
// that no live endpoint, gateway or auxiliary address holds (a driver that keeps its own
// state may hold leases of endpoints lost in a crash), and reports what it freed. Global pools
// are shared by every host: reconciling them needs every host's endpoints (the global store).
func (c *Controller) reconcileIPAM(ctx context.Context) {
	for _, n := range c.networks {
		rec := n.Record()
		if rec.Scope == drivers.GlobalScope {
			continue
		}
		a, err := c.ipamDriver(rec.IPAMDriver)
		if err != nil {
			continue
		}
		r, ok := a.(ipam.Reconciler)
		if !ok {
			continue
		}
		for _, fam := range []struct {
			cfgs []network.IPAMConfig
			addr func(epobj.Record) netip.Prefix
		}{
			{rec.IPv4, func(e epobj.Record) netip.Prefix { return e.IPv4 }},
			{rec.IPv6, func(e epobj.Record) netip.Prefix { return e.IPv6 }},
		} {
			for _, cfg := range fam.cfgs {
				live := []netip.Addr{cfg.Gateway}
				for _, a := range cfg.AuxAddresses {
					live = append(live, a)
				}
				for _, ep := range n.Eps() {
					if p := fam.addr(ep.Record()); p.IsValid() {
						live = append(live, p.Addr())
					}
				}
				pool := ipam.MakePoolID(ipam.LocalSpace, cfg.Subnet)
				freed, err := r.Reconcile(ctx, pool, live)
				if err != nil {
					c.log.Error("restore: reconcile ipam", "network", rec.Name, "pool", pool, "err", err)
				}
				for _, f := range freed {
					c.repaired(drivers.Repair{Object: "address " + f.String() + " of network " + rec.Name, Action: "released", Reason: "no live endpoint holds it"})
				}
			}
		}
	}
}

// dirExists reports whether path is a directory.
func dirExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

package cnm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/runstore"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/sandbox"
)

// runStoreFile is the name of the run store's journal under Config.RunDir.
const runStoreFile = "records.log"

// The run store holds the records of what lives no longer than a sandbox's namespace: the
// endpoints Connect makes for a sandbox with a namespace (its own, a shared one or a
// caller's). Such an endpoint describes kernel state that a reboot removes (on the next start
// its sandbox's record is found without a namespace, and the endpoint is left and deleted),
// so its record must survive a crash of the process, not of the machine. It is kept in
// memory and in a journal on the RunDir's tmpfs (package internal/runstore): a commit is one
// write(2) of a few microseconds, with no fsync, instead of two disk flushes, so Connect's only
// store commit is off the disk. A crash of the process keeps every committed write (it is in
// the page cache); an entry cut short by the crash is dropped at the next start. A reboot
// empties the tmpfs, and the endpoints go with their namespaces; were RunDir on a disk (New
// warns), a power cut could leave a torn or unreadable journal: New drops the torn entries or
// starts it afresh and reports the repair, and the sandboxes whose namespaces the reboot
// removed are dropped from their own records as before.
//
// On a global network such an endpoint's record is in the run store too, and its copy in the
// global store, which the other hosts read, follows (netobj.WriteBehind): in line for the
// host's first endpoint on the network, which then fences the network's deletion on every host;
// after Connect returns for the others. A restart within the host's lease writes the copies
// its process had not written; after a longer absence a record without its global copy was
// reclaimed by the other hosts (its address may be another's), and is dropped.

// openRunStore opens Config.RunStore, or the journal RunDir/records.log. It returns, for New to
// report, what it repaired: a torn tail dropped, or a file that is not a journal removed.
func (c *Controller) openRunStore() (repair *drivers.Repair, err error) {
	if c.cfg.RunStore != nil {
		c.run = c.cfg.RunStore
		return nil, nil
	}
	if err := os.MkdirAll(c.cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("cnm: run dir: %w", err)
	}
	path := filepath.Join(c.cfg.RunDir, runStoreFile)
	s, dropped, err := runstore.Open(path)
	if errors.Is(err, runstore.ErrNotJournal) {
		// The file's content cannot be read back (any other error, such as a lock another
		// process holds or a descriptor limit, leaves the file alone).
		if rerr := os.Remove(path); rerr == nil {
			repair = &drivers.Repair{Object: "run store " + path, Action: "removed", Reason: fmt.Sprintf("unreadable (%v): started afresh", err)}
			s, _, err = runstore.Open(path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cnm: run store: %w", err)
	}
	if dropped > 0 {
		repair = &drivers.Repair{Object: "run store " + path, Action: "truncated", Reason: fmt.Sprintf("dropped a torn last write (%d bytes): the process died while writing it", dropped)}
	}
	c.run, c.ownRun = s, true
	return repair, nil
}

// runtimeSandbox says whether the endpoints Connect makes for sb keep their records in the
// run store: those of a sandbox whose namespace a reboot removes, which is every mode but the
// host's.
func runtimeSandbox(sb sandbox.Sandbox) bool { return sb.Mode() != sandbox.ModeHost }

// recordStore is a store that holds endpoint records of local networks.
type recordStore struct {
	s       kvstore.Store
	runtime bool // the run store
}

// recordStores returns the stores that hold endpoint records of local networks: the local
// store, then the run store.
func (c *Controller) recordStores() []recordStore {
	out := []recordStore{{s: c.store}}
	if c.run != nil && c.run != c.store {
		out = append(out, recordStore{s: c.run, runtime: true})
	}
	return out
}

// storeOf returns the run store when runtime is set (and there is one), else the local store.
func (c *Controller) storeOf(runtime bool) kvstore.Store {
	if runtime && c.run != nil {
		return c.run
	}
	return c.store
}

// storeErr wraps err as the local store's, or returns nil.
func storeErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store: %w", err)
}

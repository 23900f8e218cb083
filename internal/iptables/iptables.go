// Package iptables runs iptables-save and iptables-restore (or, for IPv6, ip6tables-save and
// ip6tables-restore) inside a given network namespace and parses what they print.
//
// A [Runner] starts each process from a thread that has entered the namespace
// ((*netns.NS).Do), so the process is born there and acts on that namespace's tables whatever
// the calling thread's namespace is; it works with both the legacy and the nf_tables backend.
// Only the start happens inside the namespace: the process's input is an in-memory file
// written beforehand, and the caller waits for it outside Do.
//
// Changes go through [Runner.Restore], one "iptables-restore --noflush" transaction per call:
// the kernel applies all of it or none of it. Reads go through [Runner.Save] and [Parse].
//
// Running iptables is Linux only: on other systems every Runner's Check, Save and Restore fail
// with an error matching cnm.ErrNotSupported. Parse and Normalize work everywhere.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
)

// The binaries a Runner runs: those of [New] (IPv4) and of [New6] (IPv6).
const (
	SaveBinary     = "iptables-save"
	RestoreBinary  = "iptables-restore"
	Save6Binary    = "ip6tables-save"
	Restore6Binary = "ip6tables-restore"
)

// Runner runs iptables commands in one network namespace. It is safe for concurrent use; it
// does not serialize its callers (a read-modify-write needs the caller's own lock).
type Runner struct {
	ns                    *netns.NS // not owned
	saveName, restoreName string    // the binaries' names, for errors
	save, restore         string    // absolute paths; "" when not found
	lookErr               error
	runs                  atomic.Uint64 // processes started
}

// Runs returns how many iptables processes the runner has started: for tests and benchmarks
// that check an operation does no iptables work.
func (r *Runner) Runs() uint64 { return r.runs.Load() }

// New returns a runner of iptables-save and iptables-restore (the IPv4 tables) for the
// namespace ns, which must stay open while the runner is used. It looks the binaries up in
// PATH now; when one is missing, every call fails with the error [Runner.Check] returns.
func New(ns *netns.NS) *Runner { return newRunner(ns, "iptables", SaveBinary, RestoreBinary) }

// New6 is [New] for the IPv6 tables: it runs ip6tables-save and ip6tables-restore.
func New6(ns *netns.NS) *Runner { return newRunner(ns, "ip6tables", Save6Binary, Restore6Binary) }

// NewBackend is [New] (or, when v6, [New6]) for the binaries of one iptables backend:
// backend "legacy" runs iptables-legacy-save and iptables-legacy-restore, "nft"
// iptables-nft-save and iptables-nft-restore. It reads what a backend other than the one of
// iptables-restore holds.
func NewBackend(ns *netns.NS, v6 bool, backend string) *Runner {
	what := "iptables"
	if v6 {
		what = "ip6tables"
	}
	return newRunner(ns, what+"-"+backend, what+"-"+backend+"-save", what+"-"+backend+"-restore")
}

// RestorePath returns the absolute path of the runner's iptables-restore, "" when it was not
// found.
func (r *Runner) RestorePath() string { return r.restore }

func newRunner(ns *netns.NS, what, save, restore string) *Runner {
	r := &Runner{ns: ns, saveName: save, restoreName: restore}
	if err := checkSystem(what); err != nil {
		r.lookErr = err
		return r
	}
	var errs []error
	var err error
	if r.save, err = exec.LookPath(save); err != nil {
		errs = append(errs, err)
	}
	if r.restore, err = exec.LookPath(restore); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		r.lookErr = &errclass.UnavailableError{
			What: what + " (" + save + " and " + restore + " in PATH)",
			Err:  errors.Join(errs...),
		}
	}
	return r
}

// Check returns nil when the binaries were found, or an *errclass.UnavailableError (matching
// cnm.ErrUnavailable) that names the missing one. On systems other than Linux it returns an
// error matching cnm.ErrNotSupported.
func (r *Runner) Check() error { return r.lookErr }

// Save returns what "iptables-save" (or "ip6tables-save") prints in the namespace (every table), without counters.
func (r *Runner) Save(ctx context.Context) (string, error) {
	if r.lookErr != nil {
		return "", r.lookErr
	}
	out, err := r.run(ctx, nil, r.save)
	if err != nil {
		return "", fmt.Errorf("%s: %w", r.saveName, err)
	}
	return out, nil
}

// Restore applies rules (iptables-restore input: "*table" sections ending in COMMIT) with
// "iptables-restore --noflush --wait" (or ip6tables-restore), in one transaction. An empty rules does nothing.
//
// With --noflush, a line declaring a user-defined chain (":NAME - [0:0]") creates it, or
// flushes it when it exists: declare only the chains that are missing or that are to be
// rebuilt.
func (r *Runner) Restore(ctx context.Context, rules string) error {
	if rules == "" {
		return nil
	}
	if r.lookErr != nil {
		return r.lookErr
	}
	if _, err := r.run(ctx, []byte(rules), r.restore, "--noflush", "--wait"); err != nil {
		return fmt.Errorf("%s: %w\ninput:\n%s", r.restoreName, err, rules)
	}
	return nil
}

// Table is one table of an iptables-save listing.
type Table struct {
	// Chains maps each chain's name to its policy ("ACCEPT", "DROP") for built-in chains, or
	// "-" for user-defined ones.
	Chains map[string]string
	// Rules maps a chain's name to its rules in order, each as iptables-save prints it without
	// the "-A CHAIN " prefix ("-i br0 ! -o br0 -j ACCEPT").
	Rules map[string][]string
}

// HasChain reports whether t has the chain. A nil table has none.
func (t *Table) HasChain(name string) bool {
	if t == nil {
		return false
	}
	_, ok := t.Chains[name]
	return ok
}

// Policy returns the policy of a built-in chain ("ACCEPT" for a nil table or a missing chain:
// the kernel's default).
func (t *Table) Policy(name string) string {
	if t == nil || t.Chains[name] == "" {
		return "ACCEPT"
	}
	return t.Chains[name]
}

// ChainRules returns the chain's rules; nil for a nil table or a missing chain.
func (t *Table) ChainRules(name string) []string {
	if t == nil {
		return nil
	}
	return t.Rules[name]
}

// Parse parses iptables-save output into its tables by name. Comments, counters and COMMIT
// lines are dropped.
func Parse(save string) (map[string]*Table, error) {
	tables := make(map[string]*Table)
	var cur *Table
	for i, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &Table{Chains: make(map[string]string), Rules: make(map[string][]string)}
			tables[line[1:]] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d outside a table: %q", i+1, line)
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain %q", i+1, line)
			}
			cur.Chains[f[0]] = f[1]
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			// Counters, when asked for, come first: "[0:0] -A ..."; we never ask.
			cur.Rules[chain] = append(cur.Rules[chain], rule)
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", i+1, line)
		}
	}
	return tables, nil
}

// Normalize returns save without comments, counters, and the "[packets:bytes]" of chain
// lines: a form to compare two listings by.
func Normalize(save string) string {
	var b strings.Builder
	for _, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, ":") {
			if i := strings.LastIndex(line, " ["); i > 0 {
				line = line[:i]
			}
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

//go:build linux

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchOptions are the command line: how many iterations of what, and where the figures go.
type benchOptions struct {
	out       string        // JSON file; "" writes none
	n         int           // attach/detach rounds (each subject once per round)
	netN      int           // network create/delete rounds
	k         int           // the k-th attach goes up to k
	kBudget   time.Duration // but stops when a subject's attaches have taken this long
	conc      []int         // attaches at once
	concTotal int           // attaches per concurrency level and subject
	ipamN     int           // in-process IPAM request+release pairs
	ipamExecN int           // host-local (a process per call) request+release pairs
	subjects  []string      // which subjects run
	quiet     float64       // the share of the CPUs the rest of the machine may use before a group starts
	quietWait time.Duration // how long to wait for that before measuring anyway
	cniBin    string        // prebuilt CNI plugin binaries; "" builds them
	smoke     bool          // a tiny run that only checks everything works
}

var allSubjects = []string{"raw", "cnm", "libnetwork", "cni"}

func parseFlags() benchOptions {
	var o benchOptions
	var conc, subjects string
	flag.StringVar(&o.out, "out", "results.json", "write every figure, with its samples, to this JSON file (\"\" for none)")
	flag.IntVar(&o.n, "n", 100, "attach/detach rounds; each round times each subject once, in rotating order")
	flag.IntVar(&o.netN, "netn", 20, "network create/delete rounds")
	flag.IntVar(&o.k, "k", 1000, "the k-th attach is timed for k = 1..K, then everything is detached")
	flag.DurationVar(&o.kBudget, "kbudget", 75*time.Second, "time budget of each subject's k-th attach series (namespace creation included); a subject that runs out stops there, and the k it reached is reported")
	flag.StringVar(&conc, "conc", "1,10,50", "attaches started at once, comma-separated")
	flag.IntVar(&o.concTotal, "conctotal", 100, "attaches per concurrency level and subject")
	flag.IntVar(&o.ipamN, "ipamn", 20000, "in-process IPAM request+release pairs")
	flag.IntVar(&o.ipamExecN, "ipamexecn", 50, "host-local IPAM request+release pairs (one plugin process each)")
	flag.StringVar(&subjects, "subjects", strings.Join(allSubjects, ","), "subjects to measure, comma-separated ("+strings.Join(allSubjects, ",")+")")
	flag.Float64Var(&o.quiet, "quiet", 0.5, "before each group, wait until the rest of the machine uses less than this share of all CPUs")
	flag.DurationVar(&o.quietWait, "quietwait", 30*time.Second, "longest wait for a quiet machine before each group (the load is recorded either way)")
	flag.StringVar(&o.cniBin, "cnibin", "", "directory with the CNI bridge and host-local binaries (default: build them from github.com/containernetworking/plugins@"+cniPluginsVersion+")")
	flag.BoolVar(&o.smoke, "smoke", false, "a tiny run (a few iterations, no waiting) that checks that every subject works")
	flag.Parse()
	if o.smoke {
		o.n, o.netN, o.k, o.concTotal, o.ipamN, o.ipamExecN, o.quietWait, o.kBudget = 3, 2, 5, 10, 1000, 3, 0, time.Minute
		conc = "1,5"
	}
	for _, f := range strings.Split(conc, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p < 1 {
			fatalf("-conc: %q is not a positive count", f)
		}
		o.conc = append(o.conc, p)
	}
	for _, s := range strings.Split(subjects, ",") {
		s = strings.TrimSpace(s)
		ok := false
		for _, a := range allSubjects {
			ok = ok || a == s
		}
		if !ok {
			fatalf("-subjects: unknown subject %q (have %s)", s, strings.Join(allSubjects, ", "))
		}
		o.subjects = append(o.subjects, s)
	}
	if o.n < 1 || o.netN < 1 || o.k < 1 || o.concTotal < 1 || o.ipamN < 100 || o.ipamExecN < 1 {
		fatalf("iteration counts must be positive (and -ipamn at least 100)")
	}
	return o
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	os.Exit(2)
}

func (o benchOptions) has(s string) bool {
	for _, x := range o.subjects {
		if x == s {
			return true
		}
	}
	return false
}

func main() {
	o := parseFlags()
	if os.Getenv(isolatedEnv) == "" {
		os.Exit(outside(o))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := isolate(); err != nil {
		fatalf("%v", err)
	}
	rep, err := run(ctx, o)
	if rep != nil {
		rep.print(os.Stdout)
		if o.out != "" {
			if werr := writeJSON(o.out, rep); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				os.Exit(1)
			}
			fmt.Printf("\nJSON: %s\n", o.out)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func writeJSON(path string, rep *report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

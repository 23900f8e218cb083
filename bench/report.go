//go:build linux

package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// report is everything one run measured, as written to the JSON file.
type report struct {
	Started  time.Time         `json:"started"`
	Machine  machine           `json:"machine"`
	Versions map[string]string `json:"versions"`
	Options  map[string]any    `json:"options"`
	Groups   []*group          `json:"groups"`
	Skipped  []string          `json:"skipped,omitempty"` // what was not measured, and why
	Seconds  float64           `json:"seconds"`
}

// machine describes where the figures come from.
type machine struct {
	CPU     string `json:"cpu"`
	CPUs    int    `json:"cpus"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	MemInfo string `json:"mem"`
}

// group is one set of figures measured together (interleaved, or back to back), with the load
// of the machine when it started and ended.
type group struct {
	Name  string    `json:"name"`
	Note  string    `json:"note,omitempty"`
	Quiet quietness `json:"quiet"`
	// Load1End is the 1-minute load average when the group ended (the run's own work included).
	Load1End float64   `json:"load1_end"`
	Figures  []*figure `json:"figures"`
}

// figure is one operation of one subject: its samples and their summary. Times are in
// milliseconds.
type figure struct {
	Op      string  `json:"op"`
	Subject string  `json:"subject"`
	Param   string  `json:"param,omitempty"`
	N       int     `json:"n"`
	Median  float64 `json:"median_ms"`
	P95     float64 `json:"p95_ms"`
	Mean    float64 `json:"mean_ms"`
	// OpsPerSec is the operations per second: N over the time the operations took (for
	// concurrent attaches, over the wall time of the batches).
	OpsPerSec float64 `json:"ops_per_s"`
	// VsFloor is Median over the median of the raw subject's same operation in the same group.
	VsFloor float64 `json:"x_floor,omitempty"`
	// VsCNM is Median over cnm's median of the same operation in the same group.
	VsCNM   float64   `json:"x_cnm,omitempty"`
	Load1   float64   `json:"load1"`             // 1-minute load average when the figure's measurement began
	Wall    float64   `json:"wall_ms,omitempty"` // total wall time, where it is a figure of its own
	Samples []float64 `json:"samples_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// newFigure summarizes samples.
func newFigure(op, subject, param string, samples []time.Duration) *figure {
	f := &figure{Op: op, Subject: subject, Param: param, N: len(samples)}
	if len(samples) == 0 {
		return f
	}
	s := make([]float64, len(samples))
	var sum float64
	for i, d := range samples {
		s[i] = ms(d)
		sum += s[i]
	}
	f.Samples = s
	sorted := slices.Clone(s)
	slices.Sort(sorted)
	f.Median = quantile(sorted, 0.5)
	f.P95 = quantile(sorted, 0.95)
	f.Mean = sum / float64(len(s))
	if sum > 0 {
		f.OpsPerSec = float64(len(s)) / (sum / 1e3)
	}
	return f
}

// quantile interpolates linearly between the closest ranks of sorted.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (sorted[hi]-sorted[lo])*(pos-float64(lo))
}

// ratios fills VsFloor and VsCNM from the other figures of the group.
func (g *group) ratios() {
	find := func(subject, op, param string) *figure {
		for _, f := range g.Figures {
			if f.Subject == subject && f.Op == op && f.Param == param && f.N > 0 {
				return f
			}
		}
		return nil
	}
	for _, f := range g.Figures {
		if r := find("raw", f.Op, f.Param); r != nil && r.Median > 0 {
			f.VsFloor = f.Median / r.Median
		}
		if c := find("cnm", f.Op, f.Param); c != nil && c.Median > 0 {
			f.VsCNM = f.Median / c.Median
		}
	}
}

// print writes the report as Markdown tables.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\n# cnm bench, %s\n\n", r.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "Machine: %s, %d CPUs, %s, kernel %s, %s\n", r.Machine.CPU, r.Machine.CPUs, r.Machine.MemInfo, r.Machine.Kernel, r.Machine.Go)
	keys := make([]string, 0, len(r.Versions))
	for k := range r.Versions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: %s\n", k, r.Versions[k])
	}
	for _, g := range r.Groups {
		fmt.Fprintf(w, "\n## %s\n\n", g.Name)
		if g.Note != "" {
			fmt.Fprintf(w, "%s\n\n", g.Note)
		}
		fmt.Fprintf(w, "Load before: 1-min load %.2f, the rest of the machine busy %.0f%% of the CPUs (waited %.0f s, quiet: %v); load after: %.2f\n\n",
			g.Quiet.Load1, 100*g.Quiet.OthersBusy, g.Quiet.Waited, g.Quiet.Quiet, g.Load1End)
		fmt.Fprintln(w, "| operation | subject | param | n | median ms | p95 ms | ops/s | x floor | x cnm | load1 |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		for _, f := range g.Figures {
			fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %.2f |\n", f.Op, f.Subject, f.Param, f.N,
				num(f.Median), num(f.P95), num(f.OpsPerSec), ratio(f.VsFloor), ratio(f.VsCNM), f.Load1)
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(w, "\n## Not measured")
		fmt.Fprintln(w)
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "- %s\n", s)
		}
	}
	fmt.Fprintf(w, "\nTotal: %.0f s\n", r.Seconds)
}

func num(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 0.01:
		return strconv.FormatFloat(v, 'f', 3, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func ratio(v float64) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

// describeMachine reads the CPU model, kernel and memory.
func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		if f := strings.Fields(l); len(f) >= 2 {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				m.MemInfo = fmt.Sprintf("%.0f GiB", kb/(1<<20))
			}
		}
	}
	return m
}

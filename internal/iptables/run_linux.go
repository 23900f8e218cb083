package iptables

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// checkSystem returns nil: iptables is Linux's.
func checkSystem(what string) error { return nil }

// run starts path with args in the namespace, stdin from input, and returns its standard
// output. A failure carries the standard error.
func (r *Runner) run(ctx context.Context, input []byte, path string, args ...string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	stdin, err := memFile("iptables-in", input)
	if err != nil {
		return "", err
	}
	defer stdin.Close()
	stdout, err := memFile("iptables-out", nil)
	if err != nil {
		return "", err
	}
	defer stdout.Close()
	stderr, err := memFile("iptables-err", nil)
	if err != nil {
		return "", err
	}
	defer stderr.Close()

	var p *os.Process
	r.runs.Add(1)
	// Only the start happens in the namespace: os.StartProcess forks from this locked thread,
	// so the child is born in the namespace. No goroutine is started and nothing is waited on.
	err = r.ns.Do(func() error {
		var err error
		p, err = os.StartProcess(path, append([]string{path}, args...), &os.ProcAttr{
			Env:   []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"},
			Files: []*os.File{stdin, stdout, stderr},
		})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("start in %s: %w", r.ns.Path(), err)
	}
	done := make(chan struct{})
	killed := make(chan struct{})
	go func() { // ends when the process does
		select {
		case <-ctx.Done():
			_ = p.Kill()
			close(killed)
		case <-done:
		}
	}()
	st, werr := p.Wait()
	close(done)
	out, rerr := readAll(stdout)
	errOut, _ := readAll(stderr)
	select {
	case <-killed:
		return "", ctx.Err()
	default:
	}
	switch {
	case werr != nil:
		return "", werr
	case rerr != nil:
		return "", rerr
	case !st.Success():
		return "", fmt.Errorf("%s: %s", st, strings.TrimSpace(errOut))
	}
	return out, nil
}

// memFile returns an anonymous in-memory file holding b, positioned at its start.
func memFile(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if len(b) > 0 {
		if _, err := f.Write(b); err != nil {
			f.Close()
			return nil, err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

func readAll(f *os.File) (string, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(f)
	return buf.String(), err
}

package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Open opens the network namespace at path (a bind mount or /proc/<pid>/ns/net).
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("netns: statfs %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, fmt.Errorf("netns: %s is not a network namespace", path)
	}
	return &NS{path: path, f: f}, nil
}

// Current opens the network namespace of the calling goroutine's thread at the time of the call.
func Current() (*NS, error) {
	var ns *NS
	err := onLockedThread(func(tid int) error {
		var err error
		ns, err = Open(threadNSPath(tid))
		return err
	})
	return ns, err
}

// threadNSPath returns the namespace path of thread tid: the thread's own, not the main
// thread's /proc/self/ns/net.
func threadNSPath(tid int) string { return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), tid) }

// onLockedThread runs f on a new goroutine locked to its thread and waits for it. f gets the
// thread ID. If f reports the thread unusable (errTaint), the goroutine exits locked and the
// runtime discards the thread.
func onLockedThread(f func(tid int) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := f(unix.Gettid())
		if errors.Is(err, errTaint) {
			errc <- err
			return // exit locked: the thread dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

var errTaint = errors.New("netns: could not restore the thread's namespace")

// Do runs f on a fresh goroutine locked to an OS thread that has entered ns, and waits for it.
// f must not start goroutines, lock or unlock the thread, or wait on other goroutines. If the
// thread's namespace cannot be restored afterwards, the thread is discarded and Do returns an
// error that wraps f's.
func (ns *NS) Do(f func() error) error {
	return onLockedThread(func(tid int) error {
		orig, err := os.Open(threadNSPath(tid))
		if err != nil {
			return fmt.Errorf("netns: open thread namespace: %w", err)
		}
		defer orig.Close()
		if err := unix.Setns(ns.FD(), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: enter %s: %w", ns.path, err)
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return errors.Join(ferr, errTaint, err)
		}
		return ferr
	})
}

// New creates a network namespace and bind-mounts it at path (whose directory is created
// when missing), and returns it open. The path must not exist. On error nothing is left behind.
func New(path string) (*NS, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("netns: create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("netns: create %s: %w", path, err)
	}
	f.Close()
	err = onLockedThread(func(tid int) error {
		self := threadNSPath(tid)
		orig, err := os.Open(self)
		if err != nil {
			return fmt.Errorf("netns: open thread namespace: %w", err)
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare: %w", err)
		}
		merr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if merr != nil {
			merr = fmt.Errorf("netns: bind-mount %s: %w", path, merr)
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return errors.Join(merr, errTaint, err)
		}
		return merr
	})
	if err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, err
	}
	ns, err := Open(path)
	if err != nil {
		_ = Remove(path)
		return nil, err
	}
	return ns, nil
}

// Remove unmounts the namespace bind-mounted at path and deletes the file. The namespace ends
// once no descriptor or process holds it. A missing path returns nil.
func Remove(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns: unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns: remove %s: %w", path, err)
	}
	return nil
}

// IsMounted reports whether path is a live network-namespace bind mount.
func IsMounted(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

package nstest

import "golang.org/x/sys/unix"

// detach lazily unmounts the bind mount at path.
func detach(path string) error { return unix.Unmount(path, unix.MNT_DETACH) }

//go:build unix

package runstore

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cnmkit/cnm/internal/errclass"
)

// lock takes the file's exclusive lock, waiting up to lockWait for another holder.
func lock(f *os.File) error {
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return &errclass.UnavailableError{What: "file lock", Err: err}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

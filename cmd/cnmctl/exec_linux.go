package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// execIn replaces cnmctl with argv run inside the network namespace at path, through
// nsenter (util-linux), so that the command's exit status is cnmctl's.
func execIn(path string, argv []string) error {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("exec needs nsenter (Debian: apt-get install util-linux): %w", err)
	}
	args := append([]string{"nsenter", "--net=" + path, "--"}, argv...)
	return syscall.Exec(nsenter, args, os.Environ())
}

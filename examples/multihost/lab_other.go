//go:build !linux

package main

import (
	"errors"
	"io"
)

func runLab(bin string, n int, crash bool, out io.Writer) error {
	return errors.New("the lab needs Linux (network namespaces)")
}

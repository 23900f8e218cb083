// Package errclass holds the error classes that callers branch on across cnm's layers, and the
// typed errors that carry the data of each. The root package cnm re-exports them, so a caller
// writes errors.Is(err, cnm.ErrNotFound) whichever layer failed.
//
// Every typed error maps to its class through an Is method and wraps its cause, if any, through
// Unwrap.
package errclass

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// The classes. Each typed error below reports Is(class) for exactly one of them.
var (
	ErrNotFound         = errors.New("not found")
	ErrAlreadyExists    = errors.New("already exists")
	ErrInvalidParameter = errors.New("invalid parameter")
	ErrConflict         = errors.New("conflict")
	ErrUnavailable      = errors.New("unavailable")
	ErrNotSupported     = errors.New("not supported")
)

// Sentinel returns a new sentinel error with the message msg that also reports Is(class).
// Contract packages use it for their own sentinels (kvstore.ErrKeyNotFound is a NotFound).
func Sentinel(msg string, class error) error { return &sentinel{msg: msg, class: class} }

type sentinel struct {
	msg   string
	class error
}

func (s *sentinel) Error() string        { return s.msg }
func (s *sentinel) Is(target error) bool { return target == s.class }

// NotFoundError reports that an object of Kind named Name does not exist.
type NotFoundError struct {
	Kind string // "network", "endpoint", "sandbox", "driver", ...
	Name string
	Err  error // optional cause
}

func (e *NotFoundError) Error() string {
	s := fmt.Sprintf("%s %q not found", e.Kind, e.Name)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }
func (e *NotFoundError) Unwrap() error        { return e.Err }

// AlreadyExistsError reports that an object of Kind named Name exists already.
type AlreadyExistsError struct {
	Kind string
	Name string
}

func (e *AlreadyExistsError) Error() string {
	return fmt.Sprintf("%s %q already exists", e.Kind, e.Name)
}
func (e *AlreadyExistsError) Is(target error) bool { return target == ErrAlreadyExists }

// InvalidParameterError reports a bad value for the named field.
type InvalidParameterError struct {
	Field  string // the option, field or argument, e.g. "subnet" or "com.docker.network.driver.mtu"
	Value  string // the value as given
	Reason string // why it is refused
	Err    error  // optional cause
}

func (e *InvalidParameterError) Error() string {
	s := fmt.Sprintf("invalid %s %q: %s", e.Field, e.Value, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}
func (e *InvalidParameterError) Is(target error) bool { return target == ErrInvalidParameter }
func (e *InvalidParameterError) Unwrap() error        { return e.Err }

// Invalid is shorthand for an *InvalidParameterError.
func Invalid(field, value, reason string) error {
	return &InvalidParameterError{Field: field, Value: value, Reason: reason}
}

// ConflictError reports that the operation conflicts with the state of an object, such as
// deleting a network that still has endpoints.
type ConflictError struct {
	Kind   string
	Name   string
	Reason string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.Kind, e.Name, e.Reason)
}
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// UnavailableError reports that a service the operation needs (a store, the kernel feature) can
// not be used now.
type UnavailableError struct {
	What string
	Err  error
}

func (e *UnavailableError) Error() string {
	if e.Err == nil {
		return e.What + " unavailable"
	}
	return e.What + " unavailable: " + e.Err.Error()
}
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }
func (e *UnavailableError) Unwrap() error        { return e.Err }

// NotSupportedError reports an operation or feature that a driver or the kernel does not have.
type NotSupportedError struct {
	What string
	Err  error
}

func (e *NotSupportedError) Error() string {
	if e.Err == nil {
		return e.What + " not supported"
	}
	return e.What + " not supported: " + e.Err.Error()
}
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }
func (e *NotSupportedError) Unwrap() error        { return e.Err }

// errNeedsLinux is the cause of every error [LinuxOnly] returns.
var errNeedsLinux = errors.New("needs Linux")

// LinuxOnly returns a *[NotSupportedError] for what, a kernel feature cnm uses, on a system
// other than Linux: "<what> on <GOOS> not supported: needs Linux". The stubs that cnm builds on
// other systems (the files named *_other.go) return it from every call that would reach the
// kernel.
func LinuxOnly(what string) error {
	return &NotSupportedError{What: what + " on " + runtime.GOOS, Err: errNeedsLinux}
}

// CheckContext returns an *[InvalidParameterError] (field "context") when ctx is nil, and nil
// otherwise. Every entry point that takes a context calls it first, before it reserves or
// touches anything, so that a nil context is refused rather than a panic halfway through.
func CheckContext(ctx context.Context) error {
	if ctx == nil {
		return &InvalidParameterError{Field: "context", Value: "<nil>", Reason: "the context is nil: pass context.Background() or a real one"}
	}
	return nil
}

// Closed returns the error of an operation refused because what it needs (what, such as
// "controller") is closing or closed: an *[UnavailableError].
func Closed(what string) error {
	return &UnavailableError{What: what, Err: errors.New("closed")}
}

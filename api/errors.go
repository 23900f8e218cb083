package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/cnmkit/cnm/internal/errclass"
)

// The error classes of cnm, as carried in [Error].Class. Each is the message of the class's
// sentinel (cnm.ErrNotFound is "not found").
const (
	ClassNotFound         = "not found"
	ClassAlreadyExists    = "already exists"
	ClassInvalidParameter = "invalid parameter"
	ClassConflict         = "conflict"
	ClassUnavailable      = "unavailable"
	ClassNotSupported     = "not supported"
)

// classes maps each class to its sentinel and HTTP status, in the order an error is tested:
// a bad argument is a 400 whatever else it wraps.
var classes = []struct {
	name   string
	err    error
	status int
}{
	{ClassInvalidParameter, errclass.ErrInvalidParameter, http.StatusBadRequest},
	{ClassNotFound, errclass.ErrNotFound, http.StatusNotFound},
	{ClassAlreadyExists, errclass.ErrAlreadyExists, http.StatusConflict},
	{ClassConflict, errclass.ErrConflict, http.StatusConflict},
	{ClassNotSupported, errclass.ErrNotSupported, http.StatusNotImplemented},
	{ClassUnavailable, errclass.ErrUnavailable, http.StatusServiceUnavailable},
}

// Error is the body of every error response, and the error api/client returns for one. It
// matches its class's sentinel with errors.Is: an *Error of class "not found" is
// errors.Is(err, cnm.ErrNotFound).
type Error struct {
	// Message is the typed error's message as the server had it, naming the object or field.
	Message string `json:"message"`
	// Class is one of the Class constants, or "" for an error of no class (status 500).
	Class string `json:"class,omitempty"`
	// Status is the HTTP status the error came with; it is not sent in the body.
	Status int `json:"-"`
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Is reports whether target is the sentinel of e's class (cnm.ErrNotFound and its kin). An
// Error without a class (from a server that sent none) is classed by its status: 404 not
// found, 400 invalid parameter, 501 not supported, 503 unavailable, 409 conflict.
func (e *Error) Is(target error) bool {
	for _, c := range classes {
		if e.Class == c.name {
			return target == c.err
		}
	}
	if e.Class == "" {
		for _, c := range classes {
			if c.status == e.Status && c.name != ClassAlreadyExists {
				return target == c.err
			}
		}
	}
	return false
}

// Class returns the class of err (one of the Class constants), or "" when it has none. A
// cancelled or timed-out context is unavailable.
func Class(err error) string {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ClassUnavailable
	}
	return ""
}

// Status returns the HTTP status for err: 400 invalid parameter, 404 not found, 409 already
// exists or conflict, 501 not supported, 503 unavailable (and a cancelled or timed-out
// context), 500 for anything else.
func Status(err error) int {
	cl := Class(err)
	for _, c := range classes {
		if c.name == cl {
			return c.status
		}
	}
	return http.StatusInternalServerError
}

// NewError returns the response body for err, with its class and status.
func NewError(err error) *Error {
	return &Error{Message: err.Error(), Class: Class(err), Status: Status(err)}
}

// Invalid returns an error of the invalid-parameter class for field and value (the value as
// given), saying why: "invalid subnet \"10.0.0.0/33\": not a prefix".
func Invalid(field, value, reason string) error { return errclass.Invalid(field, value, reason) }

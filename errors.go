package cnm

import "github.com/cnmkit/cnm/internal/errclass"

// Error classes. Every error cnm returns that a caller may branch on matches one of these
// with errors.Is, whichever layer (driver, IPAM, store, kernel) it came from.
var (
	ErrNotFound         = errclass.ErrNotFound
	ErrAlreadyExists    = errclass.ErrAlreadyExists
	ErrInvalidParameter = errclass.ErrInvalidParameter
	ErrConflict         = errclass.ErrConflict
	ErrUnavailable      = errclass.ErrUnavailable
	ErrNotSupported     = errclass.ErrNotSupported
)

// Typed errors, for errors.As; each carries the object or field it is about.
type (
	NotFoundError         = errclass.NotFoundError
	AlreadyExistsError    = errclass.AlreadyExistsError
	InvalidParameterError = errclass.InvalidParameterError
	ConflictError         = errclass.ConflictError
	UnavailableError      = errclass.UnavailableError
	NotSupportedError     = errclass.NotSupportedError
)

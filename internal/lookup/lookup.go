// Package lookup finds an object the way docker's commands do: by its name, its full ID, or a
// prefix of its ID that no other object shares.
package lookup

import (
	"strings"

	"github.com/cnmkit/cnm/internal/errclass"
)

// ByNameOrID returns the object whose name (in names: name -> ID; an empty ID marks a name
// being created) or ID (in byID) is key, else the only one whose ID starts with key. It fails
// with a *errclass.NotFoundError naming kind, or an invalid-parameter error when the prefix is
// ambiguous. The caller holds the lock guarding both maps.
func ByNameOrID[T any](kind, key string, names map[string]string, byID map[string]T) (T, error) {
	var zero T
	if id := names[key]; id != "" {
		if v, ok := byID[id]; ok {
			return v, nil
		}
	}
	var found T
	n := 0
	if key != "" {
		for id, v := range byID {
			if strings.HasPrefix(id, key) {
				found = v
				n++
			}
		}
	}
	switch n {
	case 0:
		return zero, &errclass.NotFoundError{Kind: kind, Name: key}
	case 1:
		return found, nil
	}
	return zero, errclass.Invalid(kind, key, "ambiguous ID prefix")
}

package lookup

import (
	"errors"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
)

func TestByNameOrID(t *testing.T) {
	byID := map[string]int{"abc123": 1, "abd456": 2}
	names := map[string]string{"one": "abc123", "two": "abd456", "pending": ""}
	for key, want := range map[string]int{"one": 1, "two": 2, "abc123": 1, "abc": 1, "abd4": 2} {
		if got, err := ByNameOrID("thing", key, names, byID); err != nil || got != want {
			t.Errorf("ByNameOrID(%q) = %d, %v; want %d", key, got, err, want)
		}
	}
	for key, class := range map[string]error{"ab": errclass.ErrInvalidParameter, "zz": errclass.ErrNotFound, "": errclass.ErrNotFound, "pending": errclass.ErrNotFound} {
		if _, err := ByNameOrID("thing", key, names, byID); !errors.Is(err, class) {
			t.Errorf("ByNameOrID(%q) error = %v, want %v", key, err, class)
		}
	}
}

//go:build !cuda

package cuda

import (
	"errors"
	"testing"
)

func TestNewWithoutCUDA(t *testing.T) {
	if e, err := New(); e != nil || !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("New() = %v, %v; want nil, ErrNoCUDA", e, err)
	}
}

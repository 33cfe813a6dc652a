//go:build !cuda

package cuda

// Engine is empty without -tags cuda; New never returns one.
type Engine struct{}

// New returns ErrNoCUDA: this binary was built without the GPU engine.
func New() (*Engine, error) { return nil, ErrNoCUDA }

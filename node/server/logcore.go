package server

import (
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// identityCore stamps every entry with the server's node id and its rank at
// the moment of writing: components get their logger before the scheduler
// has given the server a rank, and ranks change with scaling.
type identityCore struct {
	zapcore.Core
	nodeID string
	rank   *atomic.Int64
}

func (c *identityCore) With(fields []zapcore.Field) zapcore.Core {
	return &identityCore{Core: c.Core.With(fields), nodeID: c.nodeID, rank: c.rank}
}

func (c *identityCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *identityCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	all := make([]zapcore.Field, 0, len(fields)+2)
	all = append(all, zap.String("node_id", c.nodeID), zap.Int64("rank", c.rank.Load()))
	return c.Core.Write(e, append(all, fields...))
}

// withIdentity wraps log so that every line carries node_id and rank.
func withIdentity(log *zap.Logger, nodeID string, rank *atomic.Int64) *zap.Logger {
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return &identityCore{Core: c, nodeID: nodeID, rank: rank}
	}))
}

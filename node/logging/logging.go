// Package logging builds the process's zap logger from the log section:
// console lines for people, JSON for machines, to stderr or a file.
package logging

import (
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fedcluster/fedcluster/node/config"
)

// New returns the logger of a process; file names the log file inside
// c.Dir when c.Dir is set.
func New(c config.Log, file string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Sampling = nil // every iteration's lines matter
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Encoding = c.Format
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	if c.Format == "console" {
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
		zc.DisableCaller = true
	}
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	if c.Dir != "" {
		if err := os.MkdirAll(c.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("cannot create log dir: %w", err)
		}
		p := filepath.Join(c.Dir, file)
		zc.OutputPaths = []string{p}
		zc.ErrorOutputPaths = []string{p}
	}
	return zc.Build()
}

// Sync flushes the logger, ignoring the EINVAL that syncing a terminal
// returns on Linux.
func Sync(l *zap.Logger) { _ = l.Sync() }

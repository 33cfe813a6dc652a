package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/logging"
	"github.com/fedcluster/fedcluster/node/procs"
	"github.com/fedcluster/fedcluster/node/scheduler"
	"github.com/fedcluster/fedcluster/node/server"
)

// loadConfig parses a role's flags; it prints the problem and returns a
// non-zero exit code on failure (0 for --help).
func loadConfig(name string, role config.Role, args []string) (*config.Config, int) {
	c, rest, warnings, err := config.Load("fedcluster "+name, role, args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil, 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fedcluster %s: %v\n", name, err)
		return nil, 2
	}
	if len(rest) > 0 {
		fmt.Fprintf(os.Stderr, "fedcluster %s: unexpected arguments %q\n", name, rest)
		return nil, 2
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "fedcluster %s: warning: %s\n", name, w)
	}
	return c, -1
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func nodeID(c *config.Config) string {
	if c.Cluster.NodeID != "" {
		return c.Cluster.NodeID
	}
	return randomID()
}

// waitSignal blocks until SIGINT or SIGTERM, or until extra is closed.
func waitSignal(extra <-chan struct{}) os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(ch)
	select {
	case s := <-ch:
		return s
	case <-extra:
		return nil
	}
}

func runScheduler(name string, args []string) int {
	c, code := loadConfig(name, config.RoleScheduler, args)
	if c == nil {
		return code
	}
	id := nodeID(c)
	log, err := logging.New(c.Log, "scheduler.log")
	if err != nil {
		fmt.Fprintf(os.Stderr, "fedcluster %s: %v\n", name, err)
		return 2
	}
	defer logging.Sync(log)
	unregister, err := procs.Register(c.Cluster.SchedulerPort, "scheduler", id)
	if err != nil {
		log.Error("cannot register process", zap.Error(err))
		return 1
	}
	defer unregister()
	s, err := scheduler.New(c, id, log)
	if err != nil {
		log.Error("cannot create scheduler", zap.Error(err))
		return 1
	}
	if err := s.Start(); err != nil {
		log.Error("cannot start scheduler", zap.Error(err))
		return 1
	}
	reserveProcs(log, s.EventLoops())
	sig := waitSignal(nil)
	log.Info("stopping scheduler", zap.Stringer("signal", sig))
	if err := s.Close(); err != nil {
		log.Warn("scheduler stopped with errors", zap.Error(err))
	}
	return 0
}

func runServer(name string, args []string) int {
	c, code := loadConfig(name, config.RoleServer, args)
	if c == nil {
		return code
	}
	id := nodeID(c)
	log, err := logging.New(c.Log, "server.log")
	if err != nil {
		fmt.Fprintf(os.Stderr, "fedcluster %s: %v\n", name, err)
		return 2
	}
	defer logging.Sync(log)
	unregister, err := procs.Register(c.Cluster.SchedulerPort, "server", id)
	if err != nil {
		log.Error("cannot register process", zap.Error(err))
		return 1
	}
	defer unregister()
	s := server.New(c, id, log)
	if err := s.Start(); err != nil {
		log.Error("cannot start server", zap.String("node_id", id), zap.Error(err))
		return 1
	}
	reserveProcs(s.Logger(), s.ReservedProcs())
	var exitOnScaleIn <-chan struct{}
	if c.Server.ExitOnScaleIn {
		exitOnScaleIn = s.ScaledIn()
	}
	sig := waitSignal(exitOnScaleIn)
	if sig == nil {
		log.Info("scaled in, exiting (--exit_on_scale_in)", zap.String("node_id", id))
	} else {
		log.Info("stopping server", zap.String("node_id", id), zap.Stringer("signal", sig))
	}
	if err := s.Close(); err != nil {
		log.Warn("server stopped with errors", zap.Error(err))
	}
	return 0
}

// reserveProcs adds a P for each of the process's gnet event loops to
// GOMAXPROCS. A loop waits in epoll_wait, an ordinary system call that keeps
// its goroutine's P until sysmon takes it back, 20 µs to 10 ms later; with
// GOMAXPROCS at the core count, idle loops hold Ps that request handlers
// wait for, and sysmon, taking Ps back all the time, wakes every 20 µs
// (6,000 wake-ups a second per server, measured on 2 cores). A GOMAXPROCS
// the user set is left as it is.
func reserveProcs(log *zap.Logger, loops int) {
	if os.Getenv("GOMAXPROCS") != "" || loops <= 0 {
		return
	}
	cores := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(cores + loops)
	log.Info("GOMAXPROCS set", zap.Int("cores", cores), zap.Int("event_loops", loops), zap.Int("gomaxprocs", cores+loops))
}

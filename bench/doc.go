// Package bench holds fedcluster's system benchmarks: the control plane (one
// scheduler, 100 servers over gnet) and the device cycle (real clusters of
// fedcluster processes driven by simulated devices over HTTP on loopback).
// They are Benchmark functions only, so `go test ./...` without -bench
// builds and starts nothing; `make bench` runs them. bench/RESULTS.md
// records what was measured, on which machine, with which command.
package bench

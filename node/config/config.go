// Package config is fedcluster's configuration: one struct decoded from TOML
// over the defaults (unknown keys rejected), overridden by flags that carry
// MindSpore's names, with MS_NODE_ID and MindSpore's config.json honoured.
//
// Precedence, lowest first: Default(), the TOML file (--config), MindSpore's
// config.json (--config_file_path, its node_id, recovery and metrics
// sections), MS_NODE_ID, then every flag given on the command line.
package config

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/fedcluster/fedcluster/node/iteration"
)

// MaxServerNum bounds server_num, at start and after a scale-out.
const MaxServerNum = 4096

// Config is the whole configuration of every role. Each role reads the
// sections it needs; flags of the same names override the file.
type Config struct {
	Cluster     Cluster     `toml:"cluster"`
	Server      Server      `toml:"server"`
	FL          FL          `toml:"fl"`
	Model       Model       `toml:"model"`
	Aggregation Aggregation `toml:"aggregation"`
	Log         Log         `toml:"log"`
	Recovery    Recovery    `toml:"recovery"`
	Metrics     Metrics     `toml:"metrics"`
}

// Cluster is what the scheduler and the servers must agree on.
type Cluster struct {
	// SchedulerIP is the scheduler's TCP address (servers dial it, the
	// scheduler binds it). MindSpore's default 0.0.0.0 means "all
	// interfaces" for the scheduler and loopback for a server dialling it.
	SchedulerIP string `toml:"scheduler_ip"`
	// SchedulerPort is the scheduler's TCP port (registration, heartbeats,
	// iteration control).
	SchedulerPort int `toml:"scheduler_port"`
	// SchedulerManagePort is the REST management port of the scheduler.
	SchedulerManagePort int `toml:"scheduler_manage_port"`
	// ManageIP is the address the REST API binds; loopback unless an
	// operator opens it on purpose.
	ManageIP string `toml:"manage_ip"`
	// ServerNum is the global number of servers the cluster waits for.
	ServerNum int `toml:"server_num"`
	// NodeID names this process in the cluster; a server restarted with the
	// same id gets its old rank back. Empty means MS_NODE_ID, else random.
	NodeID string `toml:"node_id"`
	// HeartbeatInterval is how often a server reports to the scheduler.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// HeartbeatTimeout is how long the scheduler waits before declaring a
	// silent server dead.
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	// MaxFrameSize bounds one cluster TCP frame, checked before allocating.
	MaxFrameSize Bytes `toml:"max_frame_size"`
}

// Server is the device-facing part of a server process.
type Server struct {
	// FLServerPort is the device HTTP port; the launcher gives the i-th local
	// server FLServerPort+i.
	FLServerPort int `toml:"fl_server_port"`
	// ServerIP is the address devices and peers use to reach this server:
	// what it advertises to the scheduler, and binds unless BindIP is set.
	ServerIP string `toml:"server_ip"`
	// BindIP, when set, is the address the server's listeners bind
	// (0.0.0.0 in a container), while ServerIP stays the advertised one.
	BindIP string `toml:"bind_ip"`
	// LocalServerNum is how many servers `launch` starts on this host;
	// -1 means ServerNum.
	LocalServerNum int `toml:"local_server_num"`
	// HTTPURLPrefix is put before every device route (≈r1.7).
	HTTPURLPrefix string `toml:"http_url_prefix"`
	// MaxBodySize bounds one device request body; larger ones get 413.
	MaxBodySize Bytes `toml:"max_body_size"`
	// UploadMemory bounds the memory holding updateModel bodies being read
	// and folded: uploads in flight are min(cores + 1, UploadMemory / the
	// model's upload size), at least 1, and at most cores for a model of
	// 16 MiB or more; the others wait in their connections.
	UploadMemory Bytes `toml:"upload_memory"`
	// ExitOnScaleIn makes a scaled-in server exit instead of waiting for
	// SIGTERM as MindSpore's do.
	ExitOnScaleIn bool `toml:"exit_on_scale_in"`
	// GetModelWait is how long getModel holds a request for the current
	// iteration's model before answering SucNotReady (0: answer at once,
	// as MindSpore does).
	GetModelWait Duration `toml:"get_model_wait"`
}

// FL holds MindSpore's federated-learning hyper-parameters, same names,
// times in milliseconds as in set_fl_context.
type FL struct {
	FLName                    string  `toml:"fl_name"`
	ServerMode                string  `toml:"server_mode"`
	StartFLJobThreshold       int     `toml:"start_fl_job_threshold"`
	StartFLJobTimeWindow      int64   `toml:"start_fl_job_time_window"`
	UpdateModelRatio          float64 `toml:"update_model_ratio"`
	UpdateModelTimeWindow     int64   `toml:"update_model_time_window"`
	GlobalIterationTimeWindow int64   `toml:"global_iteration_time_window"`
	FLIterationNum            int     `toml:"fl_iteration_num"`
	ClientEpochNum            int     `toml:"client_epoch_num"`
	ClientBatchSize           int     `toml:"client_batch_size"`
	ClientLearningRate        float64 `toml:"client_learning_rate"`
	EncryptType               string  `toml:"encrypt_type"`
	// ReplayAttackTimeDiff is the largest |server clock − request
	// timestamp| accepted, in ms.
	ReplayAttackTimeDiff int64 `toml:"replay_attack_time_diff"`
	// LegacyTimestamps says what to do with non-numeric timestamps such as
	// r1.5's "2020/11/16/19/18": "reject" or "accept".
	LegacyTimestamps string `toml:"legacy_timestamps"`
}

// Model says where the initial model comes from and where models go.
type Model struct {
	// InitFile is a safetensors file with the initial model; empty means
	// the built-in LeNet-5 initialiser.
	InitFile string `toml:"init_file"`
	// InitSeed seeds the built-in initialiser; every server must use the
	// same seed so they start from one model.
	InitSeed uint64 `toml:"init_seed"`
	// CheckpointDir receives <fl_name>_iteration_<N>.safetensors.
	CheckpointDir string `toml:"checkpoint_dir"`
	// CheckpointKeep is how many stored iterations stay on disk.
	CheckpointKeep int `toml:"checkpoint_keep"`
}

// Aggregation picks the fold engine.
type Aggregation struct {
	// Engine is "auto", "avx2", "avx512", "purego" or "cuda".
	Engine string `toml:"engine"`
}

// Log configures zap.
type Log struct {
	// Format is "console" (people) or "json" (machines).
	Format string `toml:"format"`
	// Level is a zap level: debug, info, warn, error.
	Level string `toml:"level"`
	// Dir, when set, receives the process's log file instead of stderr.
	Dir string `toml:"dir"`
}

// Recovery is MindSpore's config.json "recovery" section: when present,
// the scheduler persists its control state and servers their identity.
type Recovery struct {
	StorageType     int    `toml:"storage_type"`
	StorageFilePath string `toml:"storage_file_path"`
}

// Enabled reports whether recovery state is persisted.
func (r Recovery) Enabled() bool { return r.StorageType != 0 }

// Metrics is MindSpore's config.json "metrics" section: where the
// per-iteration records (metrics.json) go.
type Metrics struct {
	StorageType     int    `toml:"storage_type"`
	StorageFilePath string `toml:"storage_file_path"`
}

// Enabled reports whether metrics.json is written.
func (m Metrics) Enabled() bool { return m.StorageType != 0 }

// Default is the configuration used when nothing is set: MindSpore's
// documented values, with windows long enough for real devices.
func Default() Config {
	p := iteration.DefaultParams()
	return Config{
		Cluster: Cluster{
			SchedulerIP:         "127.0.0.1",
			SchedulerPort:       6667,
			SchedulerManagePort: 11202,
			ManageIP:            "127.0.0.1",
			ServerNum:           1,
			HeartbeatInterval:   Duration(3 * time.Second),
			HeartbeatTimeout:    Duration(30 * time.Second),
			MaxFrameSize:        Bytes(256 << 20),
		},
		Server: Server{
			FLServerPort:   6668,
			ServerIP:       "127.0.0.1",
			LocalServerNum: -1,
			MaxBodySize:    Bytes(100 << 20),
			UploadMemory:   Bytes(256 << 20),
			GetModelWait:   Duration(time.Second),
		},
		FL: FL{
			FLName:                    "LeNet",
			ServerMode:                "FEDERATED_LEARNING",
			StartFLJobThreshold:       p.StartFLJobThreshold,
			StartFLJobTimeWindow:      p.StartFLJobTimeWindow,
			UpdateModelRatio:          p.UpdateModelRatio,
			UpdateModelTimeWindow:     p.UpdateModelTimeWindow,
			GlobalIterationTimeWindow: p.GlobalIterationTimeWindow,
			FLIterationNum:            p.FLIterationNum,
			ClientEpochNum:            p.ClientEpochNum,
			ClientBatchSize:           p.ClientBatchSize,
			ClientLearningRate:        p.ClientLearningRate,
			EncryptType:               "NOT_ENCRYPT",
			ReplayAttackTimeDiff:      600000,
			LegacyTimestamps:          "reject",
		},
		Model: Model{
			InitSeed:       1,
			CheckpointDir:  "./checkpoints",
			CheckpointKeep: 3,
		},
		Aggregation: Aggregation{Engine: "auto"},
		Log:         Log{Format: "console", Level: "info"},
	}
}

// EngineNames are the accepted aggregation.engine values.
var EngineNames = []string{"auto", "avx2", "avx512", "purego", "cuda"}

// Validate checks every value and returns all problems at once, each
// naming its key and the allowed range.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	port := func(key string, v int) {
		if v < 1 || v > 65535 {
			bad(key, "must be a port in 1..65535, got %d", v)
		}
	}
	ip := func(key, v string) {
		if v == "" || (net.ParseIP(v) == nil && !validHost(v)) {
			bad(key, "must be an IP address or host name, got %q", v)
		}
	}
	positive := func(key string, v int64) {
		if v < 1 {
			bad(key, "must be a positive integer, got %d", v)
		}
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(key, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	}

	cl := &c.Cluster
	ip("cluster.scheduler_ip", cl.SchedulerIP)
	port("cluster.scheduler_port", cl.SchedulerPort)
	port("cluster.scheduler_manage_port", cl.SchedulerManagePort)
	ip("cluster.manage_ip", cl.ManageIP)
	if cl.ServerNum < 1 || cl.ServerNum > MaxServerNum {
		bad("cluster.server_num", "must be in 1..%d, got %d", MaxServerNum, cl.ServerNum)
	}
	if len(cl.NodeID) > 100 {
		bad("cluster.node_id", "must be at most 100 characters, got %d", len(cl.NodeID))
	}
	if strings.ContainsAny(cl.NodeID, " \t\n\"\\/") {
		bad("cluster.node_id", "must not contain spaces, quotes or slashes, got %q", cl.NodeID)
	}
	if cl.HeartbeatInterval <= 0 {
		bad("cluster.heartbeat_interval", "must be a positive duration, got %s", cl.HeartbeatInterval)
	}
	if cl.HeartbeatTimeout <= cl.HeartbeatInterval {
		bad("cluster.heartbeat_timeout", "must be longer than heartbeat_interval (%s), got %s", cl.HeartbeatInterval, cl.HeartbeatTimeout)
	}
	if cl.MaxFrameSize < 1<<20 || cl.MaxFrameSize > 4<<30 {
		bad("cluster.max_frame_size", "must be in 1MiB..4GiB, got %s", cl.MaxFrameSize)
	}

	s := &c.Server
	port("server.fl_server_port", s.FLServerPort)
	ip("server.server_ip", s.ServerIP)
	if ip := net.ParseIP(s.ServerIP); ip != nil && ip.IsUnspecified() {
		bad("server.server_ip", "must be an address peers can dial, not %s; bind all interfaces with bind_ip", s.ServerIP)
	}
	if s.BindIP != "" {
		ip("server.bind_ip", s.BindIP)
	}
	if s.LocalServerNum != -1 && (s.LocalServerNum < 1 || s.LocalServerNum > cl.ServerNum) {
		bad("server.local_server_num", "must be -1 (= server_num) or in 1..server_num (%d), got %d", cl.ServerNum, s.LocalServerNum)
	}
	if s.FLServerPort+s.LocalCount(cl.ServerNum)-1 > 65535 {
		bad("server.fl_server_port", "fl_server_port + local_server_num - 1 must stay within 65535")
	}
	if s.HTTPURLPrefix != "" && (!strings.HasPrefix(s.HTTPURLPrefix, "/") || strings.HasSuffix(s.HTTPURLPrefix, "/")) {
		bad("server.http_url_prefix", "must start with / and not end with /, got %q", s.HTTPURLPrefix)
	}
	if s.GetModelWait < 0 || s.GetModelWait > Duration(time.Minute) {
		bad("server.get_model_wait", "must be in 0s..1m, got %s", s.GetModelWait)
	}
	if s.MaxBodySize < 1<<10 || s.MaxBodySize > 2<<30 {
		bad("server.max_body_size", "must be in 1KiB..2GiB, got %s", s.MaxBodySize)
	}
	if s.UploadMemory < 1<<20 {
		bad("server.upload_memory", "must be at least 1MiB, got %s", s.UploadMemory)
	}

	f := &c.FL
	if f.FLName == "" {
		bad("fl.fl_name", "must not be empty")
	}
	oneOf("fl.server_mode", f.ServerMode, "FEDERATED_LEARNING")
	// The round parameters are the iteration machine's: it owns their ranges.
	if err := f.Params().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("fl: %w", err))
	}
	oneOf("fl.encrypt_type", f.EncryptType, "NOT_ENCRYPT")
	positive("fl.replay_attack_time_diff", f.ReplayAttackTimeDiff)
	oneOf("fl.legacy_timestamps", f.LegacyTimestamps, "reject", "accept")

	m := &c.Model
	if m.CheckpointDir == "" {
		bad("model.checkpoint_dir", "must not be empty")
	}
	if m.CheckpointKeep < 1 || m.CheckpointKeep > 1000 {
		bad("model.checkpoint_keep", "must be in 1..1000, got %d", m.CheckpointKeep)
	}
	oneOf("aggregation.engine", c.Aggregation.Engine, EngineNames...)
	oneOf("log.format", c.Log.Format, "console", "json")
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	if c.Recovery.StorageType != 0 {
		if c.Recovery.StorageType != 1 {
			bad("recovery.storage_type", "must be 1 (file storage), got %d", c.Recovery.StorageType)
		}
		if c.Recovery.StorageFilePath == "" {
			bad("recovery.storage_file_path", "must not be empty when recovery is enabled")
		}
	}
	if c.Metrics.StorageType != 0 {
		if c.Metrics.StorageType != 1 {
			bad("metrics.storage_type", "must be 1 (file storage), got %d", c.Metrics.StorageType)
		}
		if c.Metrics.StorageFilePath == "" {
			bad("metrics.storage_file_path", "must not be empty when metrics are enabled")
		}
	}
	// Records appended to a recovery slot would break its checksum, and
	// the slot's next save would overwrite them.
	if c.Recovery.Enabled() && c.Metrics.Enabled() && c.Metrics.StorageFilePath != "" {
		for _, f := range RecoveryStateFiles(c.Recovery.StorageFilePath) {
			if samePath(c.Metrics.StorageFilePath, f) {
				bad("metrics.storage_file_path", "must not be a file of the recovery state (%s), got %q", f, c.Metrics.StorageFilePath)
			}
		}
	}
	return errors.Join(errs...)
}

// RecoveryStateFiles are the two files the scheduler's recovery state at
// path (recovery.storage_file_path) alternates between, so that a crash
// while one is written leaves the other whole.
func RecoveryStateFiles(path string) [2]string { return [2]string{path, path + ".1"} }

// Params are the round and plan parameters as the iteration machine takes them.
func (f FL) Params() iteration.Params {
	return iteration.Params{
		StartFLJobThreshold:       f.StartFLJobThreshold,
		StartFLJobTimeWindow:      f.StartFLJobTimeWindow,
		UpdateModelRatio:          f.UpdateModelRatio,
		UpdateModelTimeWindow:     f.UpdateModelTimeWindow,
		GlobalIterationTimeWindow: f.GlobalIterationTimeWindow,
		FLIterationNum:            f.FLIterationNum,
		ClientEpochNum:            f.ClientEpochNum,
		ClientBatchSize:           f.ClientBatchSize,
		ClientLearningRate:        f.ClientLearningRate,
	}
}

// LocalCount is the number of servers `launch` starts here.
func (s Server) LocalCount(serverNum int) int {
	if s.LocalServerNum == -1 {
		return serverNum
	}
	return s.LocalServerNum
}

// DialableIP turns a wildcard bind address (MindSpore's scheduler_ip
// default 0.0.0.0) into one a client on this host can dial.
func DialableIP(ip string) string {
	if ip == "0.0.0.0" || ip == "::" || ip == "" {
		return "127.0.0.1"
	}
	return ip
}

func validHost(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, r := range h {
		if !(r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DecodeTOML decodes r over c, rejecting unknown keys with their names.
func DecodeTOML(r io.Reader, c *Config) error {
	dec := toml.NewDecoder(r).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			var keys []string
			for _, e := range strict.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return fmt.Errorf("unknown configuration key(s) %s:\n%s", strings.Join(keys, ", "), strict.String())
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			if len(de.Key()) == 0 { // a syntax error names no key
				return fmt.Errorf("line %d column %d: %s", row, col, de.Error())
			}
			return fmt.Errorf("line %d column %d: %s (key %s)", row, col, de.Error(), strings.Join(de.Key(), "."))
		}
		return err
	}
	return nil
}

// LoadTOML decodes the TOML file at path over c.
func LoadTOML(path string, c *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read config file: %w", err)
	}
	if err := DecodeTOML(bytes.NewReader(b), c); err != nil {
		return fmt.Errorf("cannot load config file %s: %w", path, err)
	}
	return nil
}

// msConfig is the part of MindSpore's config.json fedcluster understands.
// TLS keys are accepted so that the seed's file loads, and reported as
// unsupported by LoadMindSporeJSON's caller.
type msConfig struct {
	NodeID   *string `json:"node_id"`
	Recovery *struct {
		StorageType             *int   `json:"storage_type"`
		StorageFilePath         string `json:"storage_file_path"`
		StorgeFilePath          string `json:"storge_file_path"`
		SchedulerStorageFileDir string `json:"scheduler_storage_file_path"`
	} `json:"recovery"`
	ServerRecovery *json.RawMessage `json:"server_recovery"`
	Metrics        *struct {
		StorageType     *int   `json:"storage_type"`
		StorageFilePath string `json:"storage_file_path"`
	} `json:"metrics"`

	ServerCertPath             *json.RawMessage `json:"server_cert_path"`
	CrlPath                    *json.RawMessage `json:"crl_path"`
	ClientCertPath             *json.RawMessage `json:"client_cert_path"`
	CaCertPath                 *json.RawMessage `json:"ca_cert_path"`
	CipherList                 *json.RawMessage `json:"cipher_list"`
	CertExpireWarningTimeInDay *json.RawMessage `json:"cert_expire_warning_time_in_day"`
	CertCheckIntervalInHour    *json.RawMessage `json:"cert_check_interval_in_hour"`
	ConnectionNum              *json.RawMessage `json:"connection_num"`
	ClientPassword             *json.RawMessage `json:"client_password"`
	ServerPassword             *json.RawMessage `json:"server_password"`
}

// LoadMindSporeJSON applies MindSpore's config.json at path to c: node_id,
// recovery (both spellings of the path key) and metrics. Relative paths
// resolve against the working directory, as in MindSpore. It returns
// warnings for keys that are accepted but have no effect.
func LoadMindSporeJSON(path string, c *Config) (warnings []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config_file_path: %w", err)
	}
	var mc msConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mc); err != nil {
		return nil, fmt.Errorf("cannot load config_file_path %s: %w", path, err)
	}
	if mc.NodeID != nil {
		c.Cluster.NodeID = *mc.NodeID
	}
	if r := mc.Recovery; r != nil {
		c.Recovery.StorageType = 1
		if r.StorageType != nil {
			c.Recovery.StorageType = *r.StorageType
		}
		p := r.StorageFilePath
		if p == "" {
			p = r.StorgeFilePath
		} else if r.StorgeFilePath != "" && r.StorgeFilePath != p {
			warnings = append(warnings, fmt.Sprintf("recovery: storage_file_path %q and storge_file_path %q differ; using storage_file_path", p, r.StorgeFilePath))
		}
		if p != "" && samePath(p, path) {
			return warnings, fmt.Errorf("recovery.storage_file_path: %q is the config file itself; name another file for the recovery state", p)
		}
		c.Recovery.StorageFilePath = p
	}
	if m := mc.Metrics; m != nil {
		c.Metrics.StorageType = 1
		if m.StorageType != nil {
			c.Metrics.StorageType = *m.StorageType
		}
		c.Metrics.StorageFilePath = m.StorageFilePath
		if m.StorageFilePath != "" && samePath(m.StorageFilePath, path) {
			return warnings, fmt.Errorf("metrics.storage_file_path: %q is the config file itself; name another file for the metrics", m.StorageFilePath)
		}
	}
	if mc.ServerCertPath != nil || mc.ClientCertPath != nil || mc.CaCertPath != nil || mc.CipherList != nil {
		warnings = append(warnings, "TLS keys in config_file_path are accepted but TLS is not supported; put a TLS proxy in front")
	}
	return warnings, nil
}

func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// Role selects which flags a subcommand takes.
type Role int

const (
	RoleScheduler Role = iota
	RoleServer
	RoleLaunch
	RoleStop
	RoleDevices
)

// Bind registers on fs the flags of role, bound to c's fields. Every flag
// keeps MindSpore's name.
func Bind(fs *flag.FlagSet, c *Config, role Role) {
	cl, s, f, m := &c.Cluster, &c.Server, &c.FL, &c.Model
	fs.StringVar(&cl.SchedulerIP, "scheduler_ip", cl.SchedulerIP, "scheduler TCP address")
	fs.IntVar(&cl.SchedulerPort, "scheduler_port", cl.SchedulerPort, "scheduler TCP port")
	fs.StringVar(&c.Log.Format, "log_format", c.Log.Format, "log encoding: console or json")
	fs.StringVar(&c.Log.Level, "log_level", c.Log.Level, "log level: debug, info, warn, error")
	if role == RoleStop || role == RoleDevices {
		return
	}
	fs.IntVar(&cl.SchedulerManagePort, "scheduler_manage_port", cl.SchedulerManagePort, "scheduler REST management port")
	fs.StringVar(&cl.ManageIP, "manage_ip", cl.ManageIP, "address the REST management API binds")
	fs.IntVar(&cl.ServerNum, "server_num", cl.ServerNum, "global number of servers in the cluster")
	fs.StringVar(&cl.NodeID, "node_id", cl.NodeID, "node id (else MS_NODE_ID, else config, else random)")
	fs.Var(&cl.HeartbeatInterval, "heartbeat_interval", "how often servers report to the scheduler (Go duration)")
	fs.Var(&cl.HeartbeatTimeout, "heartbeat_timeout", "silence after which a server is declared dead (Go duration)")
	fs.Var(&cl.MaxFrameSize, "max_frame_size", "largest cluster TCP frame (e.g. 256MiB)")
	fs.IntVar(&s.FLServerPort, "fl_server_port", s.FLServerPort, "device HTTP port (the i-th local server uses +i)")
	fs.StringVar(&s.ServerIP, "server_ip", s.ServerIP, "address devices and peers use to reach this server")
	fs.StringVar(&s.BindIP, "bind_ip", s.BindIP, "address the server binds, when not server_ip (e.g. 0.0.0.0 in a container)")
	fs.IntVar(&s.LocalServerNum, "local_server_num", s.LocalServerNum, "servers launched on this host (-1: server_num)")
	fs.StringVar(&s.HTTPURLPrefix, "http_url_prefix", s.HTTPURLPrefix, "prefix of every device URL")
	fs.Var(&s.MaxBodySize, "max_body_size", "largest device request body (e.g. 100MiB)")
	fs.Var(&s.UploadMemory, "upload_memory", "memory for updateModel bodies in flight (e.g. 256MiB; at most cores+1 uploads, fewer for a large model)")
	fs.BoolVar(&s.ExitOnScaleIn, "exit_on_scale_in", s.ExitOnScaleIn, "exit once scaled in instead of waiting for SIGTERM")
	fs.Var(&s.GetModelWait, "get_model_wait", "how long getModel holds a poll for the model being aggregated (0: answer SucNotReady at once)")
	fs.StringVar(&f.FLName, "fl_name", f.FLName, "job name sent in FLPlan")
	fs.StringVar(&f.ServerMode, "server_mode", f.ServerMode, "FEDERATED_LEARNING")
	fs.IntVar(&f.StartFLJobThreshold, "start_fl_job_threshold", f.StartFLJobThreshold, "devices admitted per iteration")
	fs.Int64Var(&f.StartFLJobTimeWindow, "start_fl_job_time_window", f.StartFLJobTimeWindow, "startFLJob round window (ms)")
	fs.Float64Var(&f.UpdateModelRatio, "update_model_ratio", f.UpdateModelRatio, "updateModel threshold = ceil(start_fl_job_threshold × ratio)")
	fs.Int64Var(&f.UpdateModelTimeWindow, "update_model_time_window", f.UpdateModelTimeWindow, "updateModel round window (ms)")
	fs.Int64Var(&f.GlobalIterationTimeWindow, "global_iteration_time_window", f.GlobalIterationTimeWindow, "hard cap of one iteration (ms)")
	fs.IntVar(&f.FLIterationNum, "fl_iteration_num", f.FLIterationNum, "iterations of the job")
	fs.IntVar(&f.ClientEpochNum, "client_epoch_num", f.ClientEpochNum, "local epochs, sent in FLPlan")
	fs.IntVar(&f.ClientBatchSize, "client_batch_size", f.ClientBatchSize, "local batch size, sent in FLPlan")
	fs.Float64Var(&f.ClientLearningRate, "client_learning_rate", f.ClientLearningRate, "local learning rate, sent in FLPlan")
	fs.StringVar(&f.EncryptType, "encrypt_type", f.EncryptType, "NOT_ENCRYPT")
	fs.Int64Var(&f.ReplayAttackTimeDiff, "replay_attack_time_diff", f.ReplayAttackTimeDiff, "largest accepted |server clock - request timestamp| (ms)")
	fs.StringVar(&f.LegacyTimestamps, "legacy_timestamps", f.LegacyTimestamps, "non-numeric request timestamps: reject or accept")
	fs.StringVar(&m.InitFile, "init_file", m.InitFile, "safetensors file with the initial model (default: built-in LeNet-5)")
	fs.Uint64Var(&m.InitSeed, "init_seed", m.InitSeed, "seed of the built-in initial model")
	fs.StringVar(&m.CheckpointDir, "checkpoint_dir", m.CheckpointDir, "where <fl_name>_iteration_<N>.safetensors are written")
	fs.IntVar(&m.CheckpointKeep, "checkpoint_keep", m.CheckpointKeep, "stored iterations kept on disk")
	fs.StringVar(&c.Aggregation.Engine, "engine", c.Aggregation.Engine, "aggregation engine: "+strings.Join(EngineNames, ", "))
	fs.StringVar(&c.Log.Dir, "log_dir", c.Log.Dir, "write the log file into this folder instead of stderr")
}

// Files are the two config file flags, parsed before the others.
type Files struct {
	TOML      string // --config
	MindSpore string // --config_file_path
}

// Load builds the configuration of role from args and the environment:
// defaults, files, MS_NODE_ID, then the flags, then Validate. It returns
// the remaining arguments and warnings worth logging.
func Load(name string, role Role, args []string, getenv func(string) string, output io.Writer) (*Config, []string, []string, error) {
	// First pass: find the files (and reject bad flags) on a throwaway copy.
	var files Files
	probe := Default()
	fs := newFlagSet(name, role, &probe, &files, output)
	if err := fs.Parse(args); err != nil {
		return nil, nil, nil, err
	}
	c := Default()
	var warnings []string
	tomlPath := files.TOML
	msPath := files.MindSpore
	if msPath != "" && strings.HasSuffix(msPath, ".toml") && tomlPath == "" {
		tomlPath, msPath = msPath, ""
	}
	if tomlPath != "" {
		if err := LoadTOML(tomlPath, &c); err != nil {
			return nil, nil, nil, err
		}
	}
	if msPath != "" {
		w, err := LoadMindSporeJSON(msPath, &c)
		warnings = append(warnings, w...)
		if err != nil {
			return nil, nil, nil, err
		}
	}
	if id := getenv("MS_NODE_ID"); id != "" {
		c.Cluster.NodeID = id
	}
	// Second pass: flags given on the command line override everything.
	fs = newFlagSet(name, role, &c, &files, io.Discard)
	if err := fs.Parse(args); err != nil {
		return nil, nil, nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return &c, fs.Args(), warnings, nil
}

func newFlagSet(name string, role Role, c *Config, files *Files, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	Bind(fs, c, role)
	fs.StringVar(&files.TOML, "config", "", "TOML configuration file (unknown keys rejected)")
	fs.StringVar(&files.MindSpore, "config_file_path", "", "MindSpore config.json (recovery, metrics, node_id) or a .toml file")
	return fs
}

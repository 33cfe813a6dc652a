package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestPrecedence(t *testing.T) {
	toml := write(t, "c.toml", `
[cluster]
server_num = 3
node_id = "from-toml"
heartbeat_interval = "1s"
[fl]
start_fl_job_threshold = 5
`)
	js := write(t, "config.json", `{"recovery": {"storage_type": 1, "storge_file_path": "rec.json"}, "metrics": {"storage_type": 1, "storage_file_path": "m.json"}, "node_id": "from-json"}`)
	c, rest, _, err := Load("x", RoleServer, []string{"--config=" + toml, "--config_file_path=" + js, "--start_fl_job_threshold=7", "--heartbeat_timeout=9s"}, env(map[string]string{"MS_NODE_ID": "from-env"}), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("rest %v", rest)
	}
	if c.Cluster.ServerNum != 3 || c.FL.StartFLJobThreshold != 7 || c.Cluster.NodeID != "from-env" ||
		time.Duration(c.Cluster.HeartbeatInterval) != time.Second || time.Duration(c.Cluster.HeartbeatTimeout) != 9*time.Second {
		t.Fatalf("precedence wrong: %+v %+v", c.Cluster, c.FL)
	}
	if !c.Recovery.Enabled() || c.Recovery.StorageFilePath != "rec.json" || c.Metrics.StorageFilePath != "m.json" {
		t.Fatalf("config.json sections: %+v %+v", c.Recovery, c.Metrics)
	}
	// A --node_id flag beats MS_NODE_ID.
	c, _, _, err = Load("x", RoleServer, []string{"--node_id=flag"}, env(map[string]string{"MS_NODE_ID": "env"}), os.Stderr)
	if err != nil || c.Cluster.NodeID != "flag" {
		t.Fatalf("node id %q %v", c.Cluster.NodeID, err)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	f := func(args []string, want ...string) {
		t.Helper()
		_, _, _, err := Load("x", RoleServer, args, env(nil), &strings.Builder{})
		if err == nil {
			t.Fatalf("Load(%v) succeeded", args)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("Load(%v) error %q lacks %q", args, err, w)
			}
		}
	}
	f([]string{"--server_num=0"}, "cluster.server_num", "1..4096")
	f([]string{"--scheduler_port=70000"}, "cluster.scheduler_port", "1..65535")
	f([]string{"--update_model_ratio=1.5"}, "update_model_ratio", "(0, 1]")
	f([]string{"--start_fl_job_threshold=-1"}, "start_fl_job_threshold")
	f([]string{"--client_learning_rate=0"}, "client_learning_rate")
	f([]string{"--heartbeat_interval=5s", "--heartbeat_timeout=1s"}, "cluster.heartbeat_timeout")
	f([]string{"--heartbeat_interval=5"}, "heartbeat_interval", "Go duration")
	f([]string{"--engine=gpu"}, "aggregation.engine", "auto")
	f([]string{"--legacy_timestamps=maybe"}, "fl.legacy_timestamps")
	f([]string{"--local_server_num=9", "--server_num=4"}, "server.local_server_num")
	f([]string{"--upload_memory=4KiB"}, "server.upload_memory", "at least 1MiB")
	f([]string{"--no_such_flag=1"}, "no_such_flag")
	f([]string{"--config=" + write(t, "bad.toml", "[cluster]\nserver_num = 2\nsever_num = 3\n")}, "unknown configuration key", "cluster.sever_num")
	f([]string{"--config=" + write(t, "type.toml", "[cluster]\nserver_num = \"two\"\n")}, "server_num")
	f([]string{"--config_file_path=" + write(t, "c.json", `{"recovery": {"storage_type": 1}, "bogus": 1}`)}, "bogus")
	// The metrics file must not be one of the recovery state's two slots.
	f([]string{"--config=" + write(t, "same.toml", "[recovery]\nstorage_type = 1\nstorage_file_path = \"state.json\"\n[metrics]\nstorage_type = 1\nstorage_file_path = \"./state.json\"\n")}, "metrics.storage_file_path", "recovery state")
	f([]string{"--config_file_path=" + write(t, "slot.json", `{"recovery": {"storage_file_path": "/tmp/fc/state.json"}, "metrics": {"storage_file_path": "/tmp/fc/state.json.1"}}`)}, "metrics.storage_file_path", "state.json.1")
	// A syntax error has a place but no key to name.
	var c Config
	if err := DecodeTOML(strings.NewReader("[cluster]\n[fl\n"), &c); err == nil || !strings.Contains(err.Error(), "line 2 column") || strings.Contains(err.Error(), "(key") {
		t.Errorf("syntax error: %v", err)
	}
	dir := t.TempDir()
	self := filepath.Join(dir, "config.json")
	os.WriteFile(self, []byte(`{"recovery": {"storage_type": 1, "storge_file_path": "`+self+`"}}`), 0o644)
	f([]string{"--config_file_path=" + self}, "recovery.storage_file_path", "config file itself")
}

func TestUnits(t *testing.T) {
	f := func(in string, want Bytes) {
		t.Helper()
		var b Bytes
		if err := b.Set(in); err != nil || b != want {
			t.Fatalf("Bytes.Set(%q) = %d, %v; want %d", in, b, err, want)
		}
		var again Bytes
		if err := again.Set(b.String()); err != nil || again != b {
			t.Fatalf("String %q does not parse back", b.String())
		}
	}
	f("100MiB", 100<<20)
	f("1GiB", 1<<30)
	f("4096", 4096)
	f("2KB", 2000)
	var b Bytes
	for _, bad := range []string{"", "MiB", "-1", "1.5MiB", "99999999999GiB"} {
		if b.Set(bad) == nil {
			t.Fatalf("Bytes.Set(%q) accepted", bad)
		}
	}
}

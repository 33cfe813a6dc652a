package config

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// FuzzDecodeTOML feeds arbitrary files to the config decoder. It must
// answer with an error, never a panic, and a configuration it accepts must
// come back unchanged through its own TOML encoding, so that what an
// operator reads back (e.g. from a generated file) is what runs.
func FuzzDecodeTOML(f *testing.F) {
	for _, s := range []string{
		"[cluster]\nserver_num = 4\nheartbeat_interval = \"2s\"\nmax_frame_size = \"64MiB\"\n",
		"[fl]\nupdate_model_ratio = 0.7\nclient_learning_rate = 0.01\nstart_fl_job_time_window = 3000\n",
		"[server]\nfl_server_port = 65535\nlocal_server_num = 1\nhttp_url_prefix = \"/fl\"\nget_model_wait = \"1m\"\n",
		"[recovery]\nstorage_type = 1\nstorage_file_path = \"r.json\"\n[metrics]\nstorage_type = 1\nstorage_file_path = \"m.json\"\n",
		"[model]\ninit_seed = 18446744073709551615\ncheckpoint_keep = 1000\n",
		"[cluster]\nmax_frame_size = 4611686018427387904\n",
		"[fl]\nclient_learning_rate = inf\n",
		"[cluster]\n[fl\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := DecodeTOML(bytes.NewReader(data), &c); err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			return
		}
		enc, err := toml.Marshal(c)
		if err != nil {
			t.Fatalf("a valid configuration does not encode: %v\n%+v", err, c)
		}
		back := Default()
		if err := DecodeTOML(bytes.NewReader(enc), &back); err != nil {
			t.Fatalf("a valid configuration's encoding does not decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip changed the configuration:\n%+v\n%+v\nthrough\n%s", c, back, enc)
		}
	})
}

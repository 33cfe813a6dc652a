package iteration

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The scripts under testdata/ drive a Machine with a fake clock. A script is
// a sequence of blocks:
//
//	# comment
//	<command>
//	----
//	<expected output>
//	<blank line>
//
// Commands (times in ms; the clock starts at the Unix epoch, so printed
// times, deadlines and next_req_time values are milliseconds since 0):
//
//	config [key=value ...]        new Machine; keys: threshold start ratio update global iters epochs batch lr agg
//	join <server>...              ServerJoined
//	lost <server>                 ServerLost
//	admit <server> <fl_id> <size> Admit
//	count <server> <fl_id> <iter> CountUpdate
//	done <server> <iter> <attempt> <sha> <folded>  AggregationDone
//	uncounted <server> <iter> <folded> UncountedLost
//	clock <+N|N>                  move the clock only
//	tick <+N|N>                   move the clock and Tick
//	disable | enable              Disable / Enable
//	newinstance [key=value ...]   NewInstance over Query()
//	query | status | deadline     Query / Status / NextDeadline
//	restore                       Snapshot → JSON → Restore at the current clock
//
// Each block's output is the call's result followed by the drained actions.
// Run with -rewrite to regenerate the expected outputs.
var rewrite = flag.Bool("rewrite", false, "rewrite the expected outputs of testdata/*.txt")

func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScript(t, f) })
	}
}

type block struct {
	line int
	cmd  string
	want string
	pre  []string // comment and blank lines before the command
}

func parseScript(t *testing.T, path string) []block {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var blocks []block
	var pre []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pre = append(pre, l)
			continue
		}
		b := block{line: i + 1, cmd: l, pre: pre}
		pre = nil
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s:%d: command without ---- separator", path, i+1)
		}
		i += 2
		var out []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			out = append(out, lines[i])
		}
		b.want = strings.Join(out, "\n")
		blocks = append(blocks, b)
	}
	// Trailing comments are dropped; scripts end with a block.
	return blocks
}

func runScript(t *testing.T, path string) {
	blocks := parseScript(t, path)
	e := &env{t: t, now: time.UnixMilli(0)}
	var sb strings.Builder
	for _, b := range blocks {
		got := e.exec(b.cmd)
		for _, p := range b.pre {
			if strings.TrimSpace(p) != "" {
				sb.WriteString(p + "\n")
			}
		}
		sb.WriteString(b.cmd + "\n----\n" + got + "\n\n")
		if *rewrite {
			continue
		}
		if got != b.want {
			t.Errorf("%s:%d: %s\n got:\n%s\nwant:\n%s", path, b.line, b.cmd, got, b.want)
		}
	}
	if *rewrite {
		out := strings.TrimRight(sb.String(), "\n") + "\n"
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type env struct {
	t   *testing.T
	m   *Machine
	cfg Config
	now time.Time
}

func testConfig() Config {
	return Config{
		Params: Params{
			StartFLJobThreshold:       2,
			StartFLJobTimeWindow:      3000,
			UpdateModelRatio:          1,
			UpdateModelTimeWindow:     3000,
			GlobalIterationTimeWindow: 10000,
			FLIterationNum:            20,
			ClientEpochNum:            1,
			ClientBatchSize:           32,
			ClientLearningRate:        0.01,
		},
		AggregationTimeout: 5000,
	}
}

func setKeys(c *Config, kvs []string) error {
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("bad key=value %q", kv)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return err
		}
		switch k {
		case "threshold":
			c.StartFLJobThreshold = int(f)
		case "start":
			c.StartFLJobTimeWindow = int64(f)
		case "ratio":
			c.UpdateModelRatio = f
		case "update":
			c.UpdateModelTimeWindow = int64(f)
		case "global":
			c.GlobalIterationTimeWindow = int64(f)
		case "iters":
			c.FLIterationNum = int(f)
		case "epochs":
			c.ClientEpochNum = int(f)
		case "batch":
			c.ClientBatchSize = int(f)
		case "lr":
			c.ClientLearningRate = f
		case "agg":
			c.AggregationTimeout = int64(f)
		default:
			return fmt.Errorf("unknown key %q", k)
		}
	}
	return nil
}

func (e *env) setClock(arg string) {
	if rel, ok := strings.CutPrefix(arg, "+"); ok {
		e.now = e.now.Add(time.Duration(e.atoi(strings.TrimSuffix(rel, "ms"))) * time.Millisecond)
		return
	}
	e.now = time.UnixMilli(int64(e.atoi(strings.TrimSuffix(arg, "ms"))))
}

func (e *env) atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		e.t.Fatalf("bad number %q", s)
	}
	return n
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

func (e *env) exec(cmd string) string {
	f := strings.Fields(cmd)
	var out string
	if f[0] != "config" && e.m == nil {
		e.t.Fatalf("%q before config", cmd)
	}
	switch f[0] {
	case "config":
		e.cfg = testConfig()
		if err := setKeys(&e.cfg, f[1:]); err != nil {
			e.t.Fatal(err)
		}
		m, err := NewMachine(e.cfg, e.now)
		out = errString(err)
		if err == nil {
			e.m = m
		}
	case "join":
		for _, s := range f[1:] {
			e.m.ServerJoined(e.now, s)
		}
		out = "ok"
	case "lost":
		e.m.ServerLost(e.now, f[1])
		out = "ok"
	case "admit":
		out = fmtReply(e.m.Admit(e.now, f[1], f[2], e.atoi(f[3])))
	case "count":
		out = fmtReply(e.m.CountUpdate(e.now, f[1], f[2], uint64(e.atoi(f[3]))))
	case "done":
		sha := f[4]
		if sha == `""` {
			sha = ""
		}
		out = errString(e.m.AggregationDone(e.now, f[1], uint64(e.atoi(f[2])), e.atoi(f[3]), sha, e.atoi(f[5])))
	case "attemptseen":
		e.m.AttemptSeen(uint64(e.atoi(f[1])), e.atoi(f[2]))
		out = "ok"
	case "rejoined": // rejoined SERVER ITERATION FLID:SIZE,... (- for none)
		var ups []Folded
		if f[3] != "-" {
			for _, u := range strings.Split(f[3], ",") {
				id, size, _ := strings.Cut(u, ":")
				ups = append(ups, Folded{FLID: id, DataSize: e.atoi(size)})
			}
		}
		out = fmt.Sprintf("rejoined=%t", e.m.Rejoined(e.now, f[1], uint64(e.atoi(f[2])), ups))
	case "partialgone":
		out = fmt.Sprintf("failed=%t", e.m.PartialGone(e.now, f[1]))
	case "uncounted":
		out = fmt.Sprintf("lost=%d", e.m.UncountedLost(e.now, f[1], uint64(e.atoi(f[2])), e.atoi(f[3])))
	case "clock":
		e.setClock(f[1])
		out = fmt.Sprintf("now=%d", e.now.UnixMilli())
	case "tick":
		e.setClock(f[1])
		e.m.Tick(e.now)
		out = fmt.Sprintf("now=%d", e.now.UnixMilli())
	case "disable":
		out = errString(e.m.Disable(e.now))
	case "enable":
		out = errString(e.m.Enable(e.now))
	case "newinstance":
		c := Config{Params: e.m.Query(), AggregationTimeout: 1}
		if err := setKeys(&c, f[1:]); err != nil {
			e.t.Fatal(err)
		}
		out = errString(e.m.NewInstance(e.now, c.Params))
	case "query":
		out = fmtParams(e.m.Query())
		if p, ok := e.m.Pending(); ok {
			out += "\npending " + fmtParams(p)
		}
	case "status":
		s := e.m.Status()
		out = fmt.Sprintf("iter=%d phase=%s instance=%s admitted=%d/%d updated=%d/%d lost=%d next=%d members=%v attempt=%d",
			s.Iteration, s.Phase, s.Instance, s.Admitted, s.Threshold, s.Updated, s.UpdateThreshold, s.Lost, s.NextReqTime, s.Members, s.Attempt)
	case "deadline":
		if d, ok := e.m.NextDeadline(); ok {
			out = fmt.Sprintf("deadline=%d", d.UnixMilli())
		} else {
			out = "no deadline"
		}
	case "restore":
		if pending := e.m.Ready(); len(pending) > 0 {
			e.t.Fatalf("restore with %d undrained actions", len(pending))
		}
		data, err := json.Marshal(e.m.Snapshot())
		if err != nil {
			e.t.Fatal(err)
		}
		var s Snapshot
		if err := json.Unmarshal(data, &s); err != nil {
			e.t.Fatal(err)
		}
		m, err := Restore(s, e.cfg, e.now)
		out = errString(err)
		if err == nil {
			e.m = m
		}
	default:
		e.t.Fatalf("unknown command %q", cmd)
	}
	if e.m != nil {
		for _, a := range e.m.Ready() {
			out += "\n  " + fmtAction(a)
		}
	}
	return out
}

func fmtReply(r Reply) string {
	if r.Code == CodeSucceed {
		return fmt.Sprintf("%s iter=%d next=%d size=%d", r.Code, r.Iteration, r.NextReqTime, r.DataSize)
	}
	return fmt.Sprintf("%s iter=%d next=%d reject=%s: %s", r.Code, r.Iteration, r.NextReqTime, r.Reject, r.Reason)
}

func fmtParams(p Params) string {
	return fmt.Sprintf("threshold=%d start=%d ratio=%v update=%d global=%d iters=%d epochs=%d batch=%d lr=%v",
		p.StartFLJobThreshold, p.StartFLJobTimeWindow, p.UpdateModelRatio, p.UpdateModelTimeWindow,
		p.GlobalIterationTimeWindow, p.FLIterationNum, p.ClientEpochNum, p.ClientBatchSize, p.ClientLearningRate)
}

func msOf(d time.Duration) int64 { return d.Milliseconds() }

func fmtAction(a Action) string {
	switch a := a.(type) {
	case RoundEvent:
		return fmt.Sprintf("RoundEvent iter=%d %s %s at=%d next=%d", a.Iteration, a.Round, a.Kind, a.At.UnixMilli(), a.NextReqTime)
	case StartAggregation:
		return fmt.Sprintf("StartAggregation iter=%d attempt=%d servers=%v expected=%v total=%d deadline=%d",
			a.Iteration, a.Attempt, a.Servers, a.Expected, a.Total, a.Deadline.UnixMilli())
	case NextIteration:
		return fmt.Sprintf("NextIteration iter=%d completed=%d valid=%t sha=%q instance=%s reason=%q",
			a.Iteration, a.Completed, a.Valid, a.Sha256, a.Instance, a.Reason)
	case ParamsChanged:
		return fmt.Sprintf("ParamsChanged iter=%d %s", a.Iteration, fmtParams(a.Params))
	case InstanceChanged:
		return fmt.Sprintf("InstanceChanged iter=%d state=%s reason=%q", a.Iteration, a.State, a.Reason)
	case Record:
		start := int64(-1)
		if !a.StartedAt.IsZero() {
			start = a.StartedAt.UnixMilli()
		}
		return fmt.Sprintf("Record iter=%d valid=%t instance=%s admitted=%d updated=%d lost=%d lost_by=%v rejected=%v (updateModel %d) servers=%v attempts=%d sha=%q started=%d ended=%d durations(start=%d update=%d switch=%d exec=%d) reason=%q",
			a.Iteration, a.Valid, a.Instance, a.Admitted, a.Updated, a.Lost, a.LostByServer, a.Rejected, a.RejectedUpdates, a.Servers, a.Attempts, a.Sha256,
			start, a.EndedAt.UnixMilli(), msOf(a.StartFLJobDuration), msOf(a.UpdateModelDuration), msOf(a.SwitchTime), msOf(a.ExecutionTime), a.Reason)
	}
	return fmt.Sprintf("unknown action %T", a)
}

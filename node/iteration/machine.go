package iteration

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Plain-text bodies that servers send for CodeDisabled and CodeSafemode
// (reference section 11.1).
const (
	TextDisabledOrFinished = "The server's training job is disabled or finished."
	TextSafemode           = "The cluster is in safemode."
)

// Errors of the instance commands and of AggregationDone.
var (
	// ErrFinished refuses enable/disable once the instance is finished.
	ErrFinished = errors.New("the instance is completed")
	// ErrStale: an AggregationDone for an iteration or attempt that is not
	// being aggregated. Harmless; the scheduler logs and drops it.
	ErrStale = errors.New("stale aggregation report")
	// ErrNotParticipant: an AggregationDone from a server outside the
	// attempt's Servers.
	ErrNotParticipant = errors.New("server does not take part in this aggregation")
	// ErrDuplicateReport: a second AggregationDone from the same server for
	// the same attempt.
	ErrDuplicateReport = errors.New("duplicate aggregation report")
	// ErrBadReport: an AggregationDone with an empty checksum or a negative
	// fold count.
	ErrBadReport = errors.New("malformed aggregation report")
)

// InstanceState is MindSpore's instance state.
type InstanceState uint8

// Instance states; String gives metrics.json's instanceStatus.
const (
	InstanceRunning InstanceState = iota
	InstanceDisabled
	InstanceFinished
)

func (s InstanceState) String() string {
	switch s {
	case InstanceRunning:
		return "running"
	case InstanceDisabled:
		return "disable"
	case InstanceFinished:
		return "finish"
	}
	return "unknown"
}

// Phase is where the current iteration stands.
type Phase uint8

const (
	// PhaseWaiting: no device admitted yet in this iteration; no timer runs.
	PhaseWaiting Phase = iota
	// PhaseCollecting: startFLJob and updateModel are counted; the timers of
	// the rounds that had a first count run, and the global timer.
	PhaseCollecting
	// PhaseAggregating: the updateModel threshold was reached; servers
	// all-reduce; devices get OutOfTime until the next iteration.
	PhaseAggregating
)

func (p Phase) String() string {
	switch p {
	case PhaseWaiting:
		return "waiting"
	case PhaseCollecting:
		return "collecting"
	case PhaseAggregating:
		return "aggregating"
	}
	return "unknown"
}

// Code is how a server must answer the device.
type Code uint8

const (
	// CodeSucceed: proceed (retcode SUCCEED 200).
	CodeSucceed Code = iota
	// CodeOutOfTime: retcode OutOfTime (300) with Reason and NextReqTime.
	CodeOutOfTime
	// CodeDisabled: the plain text TextDisabledOrFinished.
	CodeDisabled
	// CodeSafemode: the plain text TextSafemode (the asking server is not a
	// live member, e.g. cut off and declared dead).
	CodeSafemode
)

func (c Code) String() string {
	switch c {
	case CodeSucceed:
		return "SUCCEED"
	case CodeOutOfTime:
		return "OutOfTime"
	case CodeDisabled:
		return "Disabled"
	case CodeSafemode:
		return "Safemode"
	}
	return "unknown"
}

// Reply is the Machine's answer to Admit and CountUpdate.
type Reply struct {
	Code Code
	// Reason is the reply's reason text for CodeOutOfTime; empty on success
	// (the server writes "success" / "success not ready").
	Reason string
	// Reject classifies a refusal (RejectNone on success).
	Reject Reject
	// Iteration is the current iteration number.
	Iteration uint64
	// NextReqTime is the iteration's next-request time in epoch
	// milliseconds: (first accepted startFLJob, or the moment the iteration
	// became current if none yet) + start_fl_job_time_window +
	// update_model_time_window (reference 11.3).
	NextReqTime int64
	// DataSize is, for a counted update, the fl_id's data size from its
	// startFLJob (the FedAvg weight).
	DataSize int
}

type device struct {
	flID       string
	dataSize   int
	admittedBy string
	updatedBy  string // "" until counted
	lost       bool   // counted by a server that died before aggregating it
}

type report struct {
	sha    string
	folded int
}

type aggregation struct {
	attempt   int
	servers   []string
	expected  map[string]int
	reports   map[string]report
	sha       string
	startedAt time.Time // this attempt
	deadline  time.Time
}

// Machine is the control state of the iterations of one cluster: the
// iteration number, the instance state, the global counters and the round
// timers. It does no I/O, starts no goroutine and reads no clock; it is not
// safe for concurrent use: the scheduler serialises every call.
//
// Every entry point takes the current time and first fires the timers that
// expired by then, so the outcome does not depend on how promptly the
// scheduler calls Tick.
type Machine struct {
	cfg     Config // cfg.Params is the instance's current Params
	pending *Params
	// pendingEnable says the pending instance enables a disabled one when
	// it starts (it was asked for while disabled and aggregating).
	pendingEnable bool

	instance InstanceState
	base     uint64 // iterations completed before this instance began
	iter     uint64
	phase    Phase
	members  map[string]struct{}

	began        time.Time // the iteration became current
	started      time.Time // first accepted startFLJob (zero while waiting)
	startFullAt  time.Time // startFLJob threshold reached
	updFirstAt   time.Time // first counted updateModel
	updFullAt    time.Time // updateModel threshold reached
	startDL      time.Time // startFLJob window deadline (zero: not armed)
	updDL        time.Time // updateModel window deadline
	globalDL     time.Time // global window deadline
	updThreshold int

	devIndex  map[string]int
	devs      []device
	updated   int
	countedBy map[string]int // live server → counted, not lost, updates
	lost      int
	lostBy    map[string]int
	moved     map[string]int // server → its lost updates counted again elsewhere (recount)
	uncounted int            // of lost: acknowledged updates the machine never counted
	rejects   [numRejects]int
	attempts  int
	// rejectedUpdates is the part of rejects refusing updateModel.
	rejectedUpdates int

	// restored is the iteration running when the Machine was restored
	// (0 for a new one).
	restored uint64
	// failedUncounted is the last iteration UncountedLost failed, with
	// what each server counted in it, for servers that register later.
	failedUncounted failedUncounted

	agg     *aggregation
	actions []Action
}

type failedUncounted struct {
	iteration uint64
	counted   map[string]int
}

// NewMachine returns a Machine at iteration 1, instance running, no member.
// The scheduler adds servers with ServerJoined.
func NewMachine(cfg Config, now time.Time) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := newMachine(cfg)
	m.iter = 1
	m.began = now
	return m, nil
}

func newMachine(cfg Config) *Machine {
	return &Machine{
		cfg:          cfg,
		members:      map[string]struct{}{},
		devIndex:     map[string]int{},
		countedBy:    map[string]int{},
		lostBy:       map[string]int{},
		moved:        map[string]int{},
		updThreshold: cfg.UpdateModelThreshold(),
	}
}

// Ready returns the actions produced since the last call, in order, and
// forgets them.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	return a
}

func (m *Machine) emit(a Action) { m.actions = append(m.actions, a) }

// Iteration returns the current iteration number.
func (m *Machine) Iteration() uint64 { return m.iter }

// Query returns the hyper-parameters in force (not a pending new instance's).
func (m *Machine) Query() Params { return m.cfg.Params }

// Pending returns the hyper-parameters of a new instance that will start at
// the next iteration boundary, if any.
func (m *Machine) Pending() (Params, bool) {
	if m.pending == nil {
		return Params{}, false
	}
	return *m.pending, true
}

// Status is a read-only view for /state and logs.
type Status struct {
	Iteration       uint64
	Phase           Phase
	Instance        InstanceState
	Admitted        int
	Updated         int
	Threshold       int
	UpdateThreshold int
	Lost            int
	NextReqTime     int64
	Members         []string
	Attempt         int // current aggregation attempt, 0 if not aggregating
}

// Status reports the current state.
func (m *Machine) Status() Status {
	s := Status{
		Iteration:       m.iter,
		Phase:           m.phase,
		Instance:        m.instance,
		Admitted:        len(m.devs),
		Updated:         m.updated,
		Threshold:       m.cfg.StartFLJobThreshold,
		UpdateThreshold: m.updThreshold,
		Lost:            m.lost,
		NextReqTime:     m.nextReqTime(),
		Members:         m.memberList(),
	}
	if m.agg != nil {
		s.Attempt = m.agg.attempt
	}
	return s
}

func (m *Machine) memberList() []string {
	l := make([]string, 0, len(m.members))
	for s := range m.members {
		l = append(l, s)
	}
	slices.Sort(l)
	return l
}

func (m *Machine) nextReqTime() int64 {
	base := m.began
	if !m.started.IsZero() {
		base = m.started
	}
	return base.Add(ms(m.cfg.StartFLJobTimeWindow + m.cfg.UpdateModelTimeWindow)).UnixMilli()
}

// aggregatingRetry is the least a device refused while the round is
// aggregated waits before it asks again.
const aggregatingRetry = 100 * time.Millisecond

// soonIfAggregating brings r's next request time forward while the round
// is aggregated: the iteration ends as soon as the servers agree, not at
// its windows' end, and a device sent to wait that long (an update
// refused because the round filled, with one of the counts lost, say)
// would sit the next round's start out. It comes back after as long as
// the aggregation has run so far (at least aggregatingRetry).
func (m *Machine) soonIfAggregating(now time.Time, r Reply) Reply {
	if m.phase == PhaseAggregating {
		wait := max(aggregatingRetry, now.Sub(m.updFullAt))
		r.NextReqTime = min(r.NextReqTime, now.Add(wait).UnixMilli())
	}
	return r
}

// succeed is the answer to an admission or count taken in the current
// iteration, for a device of dataSize.
func (m *Machine) succeed(dataSize int) Reply {
	return Reply{Code: CodeSucceed, Iteration: m.iter, NextReqTime: m.nextReqTime(), DataSize: dataSize}
}

func (m *Machine) refuse(code Code, kind Reject, reason string) Reply {
	m.rejects[kind]++
	return Reply{Code: code, Reject: kind, Reason: reason, Iteration: m.iter, NextReqTime: m.nextReqTime()}
}

// refuseUpdate is refuse for updateModel: safemode and disabled refuse
// either round, and the record tells them apart.
func (m *Machine) refuseUpdate(code Code, kind Reject, reason string) Reply {
	m.rejectedUpdates++
	return m.refuse(code, kind, reason)
}

// Admit is the global part of startFLJob, asked by serverID for a device
// whose request it has already verified. On CodeSucceed the device is a
// participant of Reply.Iteration and the server serves the model of
// Reply.Iteration−1.
func (m *Machine) Admit(now time.Time, serverID, flID string, dataSize int) Reply {
	m.advance(now)
	if _, ok := m.members[serverID]; !ok {
		return m.refuse(CodeSafemode, RejectSafemode, TextSafemode)
	}
	if m.instance != InstanceRunning {
		return m.refuse(CodeDisabled, RejectDisabled, TextDisabledOrFinished)
	}
	if i, ok := m.devIndex[flID]; ok && m.phase != PhaseAggregating && m.readmit(i, serverID, dataSize) {
		return m.succeed(dataSize)
	}
	if len(m.devs) >= m.cfg.StartFLJobThreshold {
		return m.soonIfAggregating(now, m.refuse(CodeOutOfTime, RejectStartThreshold,
			"Current amount for startFLJob has reached the threshold. Please startFLJob later."))
	}
	if m.phase == PhaseAggregating {
		return m.soonIfAggregating(now, m.refuse(CodeOutOfTime, RejectAggregating,
			fmt.Sprintf("Iteration %d is being aggregated. Please startFLJob later.", m.iter)))
	}
	if dataSize < 1 {
		return m.refuse(CodeOutOfTime, RejectDataSize, "FL job data size is not enough.")
	}
	if _, dup := m.devIndex[flID]; dup {
		return m.refuse(CodeOutOfTime, RejectDuplicateAdmit, "Updating device metadata failed for fl id "+flID)
	}
	m.admit(now, serverID, flID, dataSize)
	return m.succeed(dataSize)
}

// readmit takes device i's startFLJob again, through serverID, if the
// server that admitted it died, maybe before its answer reached the
// device, which asks again elsewhere: refused, it would sit the iteration
// out while the round waits for its update. Not once its update is
// counted, nor with another data size.
func (m *Machine) readmit(i int, serverID string, dataSize int) bool {
	d := &m.devs[i]
	if _, alive := m.members[d.admittedBy]; alive || d.updatedBy != "" || d.dataSize != dataSize {
		return false
	}
	d.admittedBy = serverID
	return true
}

// admit adds a device to the iteration, with the startFLJob round's
// bookkeeping, and returns its index.
func (m *Machine) admit(now time.Time, serverID, flID string, dataSize int) int {
	i := len(m.devs)
	m.devIndex[flID] = i
	m.devs = append(m.devs, device{flID: flID, dataSize: dataSize, admittedBy: serverID})
	if len(m.devs) == 1 {
		m.phase = PhaseCollecting
		m.started = now
		m.startDL = now.Add(ms(m.cfg.StartFLJobTimeWindow))
		m.globalDL = now.Add(ms(m.cfg.GlobalIterationTimeWindow))
		m.emit(RoundEvent{Iteration: m.iter, Round: RoundStartFLJob, Kind: FirstCount, At: now, NextReqTime: m.nextReqTime()})
	}
	if len(m.devs) == m.cfg.StartFLJobThreshold {
		m.startFullAt = now
		m.startDL = time.Time{}
		m.emit(RoundEvent{Iteration: m.iter, Round: RoundStartFLJob, Kind: LastCount, At: now, NextReqTime: m.nextReqTime()})
	}
	return i
}

// CountUpdate is the global part of updateModel, asked by serverID after it
// decoded and validated the update without side effects. On CodeSucceed the
// server must fold the update (weighted by Reply.DataSize) into its partial
// sum of Reply.Iteration; the scheduler expects it in serverID's fold count.
// Each fl_id is counted at most once per iteration.
func (m *Machine) CountUpdate(now time.Time, serverID, flID string, iteration uint64) Reply {
	m.advance(now)
	if _, ok := m.members[serverID]; !ok {
		return m.refuseUpdate(CodeSafemode, RejectSafemode, TextSafemode)
	}
	if m.instance != InstanceRunning {
		return m.refuseUpdate(CodeDisabled, RejectDisabled, TextDisabledOrFinished)
	}
	if m.updated >= m.updThreshold || m.phase == PhaseAggregating {
		return m.soonIfAggregating(now, m.refuseUpdate(CodeOutOfTime, RejectUpdateThreshold,
			"Current amount for updateModel is enough. Please retry later."))
	}
	// An update for an iteration that has ended comes from a device that
	// was held up (its server was cut off or died mid-request, or the
	// iteration failed under it at a scheduler's restart): it is sent back
	// to startFLJob at once, not at the running iteration's end, so that
	// it can take part in it; a round short of one device would otherwise
	// wait for its window.
	if iteration != m.iter {
		r := m.refuseUpdate(CodeOutOfTime, RejectWrongIteration,
			fmt.Sprintf("UpdateModel iteration number is invalid:%d, current iteration:%d. Retry later.", iteration, m.iter))
		if iteration < m.iter {
			r.NextReqTime = now.UnixMilli()
		}
		return r
	}
	i, ok := m.devIndex[flID]
	if !ok {
		r := m.refuseUpdate(CodeOutOfTime, RejectNotAdmitted,
			"devices_meta for "+flID+" is not set. Please retry later.")
		if m.iter == m.restored {
			r.NextReqTime = now.UnixMilli()
		}
		return r
	}
	d := &m.devs[i]
	if d.updatedBy != "" && !d.lost {
		return m.refuseUpdate(CodeOutOfTime, RejectDuplicateUpdate,
			fmt.Sprintf("UpdateModel for fl_id %s was already counted in iteration %d. Please retry later.", flID, m.iter))
	}
	if d.lost {
		// Counted through a server that died with it, maybe before its
		// answer reached the device, which sent it again elsewhere: refused,
		// it would sit the next round's start out. Counted for this server
		// instead; the round's count stays.
		m.recount(serverID, d)
		return m.succeed(d.dataSize)
	}
	full := m.count(now, serverID, i)
	r := m.succeed(d.dataSize)
	if full {
		m.startAggregation(now)
	}
	return r
}

// recount moves a lost update's count to serverID, which has it again.
func (m *Machine) recount(serverID string, d *device) {
	if m.lostBy[d.updatedBy]--; m.lostBy[d.updatedBy] <= 0 {
		delete(m.lostBy, d.updatedBy)
	}
	m.lost--
	if d.updatedBy != serverID { // not the same server, restarted
		m.moved[d.updatedBy]++
	}
	d.updatedBy, d.lost = serverID, false
	m.countedBy[serverID]++
}

// count marks device i's update counted for serverID, with the updateModel
// round's bookkeeping, and reports whether that filled the round.
func (m *Machine) count(now time.Time, serverID string, i int) (full bool) {
	m.devs[i].updatedBy = serverID
	m.updated++
	m.countedBy[serverID]++
	if m.updated == 1 {
		m.updFirstAt = now
		m.updDL = now.Add(ms(m.cfg.UpdateModelTimeWindow))
		m.emit(RoundEvent{Iteration: m.iter, Round: RoundUpdateModel, Kind: FirstCount, At: now, NextReqTime: m.nextReqTime()})
	}
	if m.updated == m.updThreshold {
		m.updFullAt = now
		m.emit(RoundEvent{Iteration: m.iter, Round: RoundUpdateModel, Kind: LastCount, At: now, NextReqTime: m.nextReqTime()})
		return true
	}
	return false
}

// startAggregation ends the collection: round timers stop (the global timer
// keeps running) and the live members are told to all-reduce.
func (m *Machine) startAggregation(now time.Time) {
	m.phase = PhaseAggregating
	m.startDL, m.updDL = time.Time{}, time.Time{}
	m.newAttempt(now, m.memberList(), m.countedBy)
}

// newAttempt starts aggregation attempt m.attempts+1 among servers, each
// expected to have folded counts[server] updates.
func (m *Machine) newAttempt(now time.Time, servers []string, counts map[string]int) {
	total := 0
	for _, s := range servers {
		total += counts[s]
	}
	if total == 0 {
		m.endIteration(now, false, fmt.Sprintf(
			"All updates counted in iteration %d were lost with their servers. This iteration is invalid. Proceed to next iteration.", m.iter), "")
		return
	}
	expected := make(map[string]int, len(servers))
	for _, s := range servers {
		expected[s] = counts[s]
	}
	m.attempts++
	m.agg = &aggregation{
		attempt:   m.attempts,
		servers:   servers,
		expected:  expected,
		reports:   map[string]report{},
		startedAt: now,
		deadline:  now.Add(ms(m.cfg.AggregationTimeout)),
	}
	m.emit(StartAggregation{
		Iteration: m.iter,
		Attempt:   m.attempts,
		Servers:   slices.Clone(servers),
		Expected:  maps.Clone(expected),
		Total:     total,
		Deadline:  m.agg.deadline,
	})
}

// AggregationDone records that serverID finished the all-reduce of
// (iteration, attempt) with a model of checksum sha256 after folding
// `folded` updates itself. When every server of the attempt reported the
// same checksum the iteration completes. A checksum differing from an
// earlier report fails the iteration at once; more folds than counted fail
// it too (the partial sum holds something the scheduler never
// acknowledged); fewer folds than counted are recorded as lost.
//
// The error is non-nil only when the report was ignored.
func (m *Machine) AggregationDone(now time.Time, serverID string, iteration uint64, attempt int, sha256 string, folded int) error {
	m.advance(now)
	a := m.agg
	if m.phase != PhaseAggregating || a == nil || iteration != m.iter || attempt != a.attempt {
		return fmt.Errorf("%w: %s reported iteration %d attempt %d; current iteration %d, phase %s",
			ErrStale, serverID, iteration, attempt, m.iter, m.phase)
	}
	exp, ok := a.expected[serverID]
	if !ok {
		return fmt.Errorf("%w: %s in iteration %d attempt %d", ErrNotParticipant, serverID, iteration, attempt)
	}
	if _, dup := a.reports[serverID]; dup {
		return fmt.Errorf("%w: %s in iteration %d attempt %d", ErrDuplicateReport, serverID, iteration, attempt)
	}
	if sha256 == "" || folded < 0 {
		return fmt.Errorf("%w: %s sent checksum %q, folded %d", ErrBadReport, serverID, sha256, folded)
	}
	if folded > exp {
		m.endIteration(now, false, fmt.Sprintf(
			"Server %s folded %d updates in iteration %d but %d were counted. This iteration is invalid. Proceed to next iteration.",
			serverID, folded, m.iter, exp), "")
		return nil
	}
	if a.sha != "" && sha256 != a.sha {
		first := ""
		for _, s := range a.servers {
			if r, ok := a.reports[s]; ok {
				first = s + " reported " + r.sha
				break
			}
		}
		m.endIteration(now, false, fmt.Sprintf(
			"Aggregation checksum mismatch in iteration %d: %s, %s reported %s. This iteration is invalid. Proceed to next iteration.",
			m.iter, first, serverID, sha256), "")
		return nil
	}
	a.sha = sha256
	a.reports[serverID] = report{sha: sha256, folded: folded}
	if folded < exp {
		m.addLost(serverID, exp-folded)
	}
	m.maybeComplete(now)
	return nil
}

// maybeComplete ends the iteration as valid once every server of the
// current attempt reported.
func (m *Machine) maybeComplete(now time.Time) {
	a := m.agg
	if len(a.reports) < len(a.servers) {
		return
	}
	folded := 0
	for _, r := range a.reports {
		folded += r.folded
	}
	if folded == 0 {
		m.endIteration(now, false, fmt.Sprintf(
			"No update was folded in iteration %d. This iteration is invalid. Proceed to next iteration.", m.iter), "")
		return
	}
	m.endIteration(now, true, "", a.sha)
}

// UpdatesBy is how many updates of the current iteration serverID counted
// (lost ones included, and those counted again elsewhere since).
func (m *Machine) UpdatesBy(serverID string) int {
	n := m.moved[serverID]
	for i := range m.devs {
		if m.devs[i].updatedBy == serverID {
			n++
		}
	}
	return n
}

// UncountedLost accounts for the updates of iteration that serverID
// acknowledged (folded of them) but the machine never counted: it was
// restored from a state saved before them, and the server dropped them
// with its partial sum when it registered again. They are recorded as lost
// and their number returned. Their devices were told SUCCEED and wait for
// the iteration's model without sending again, so the round may never
// fill: unless the iteration is already aggregating, it fails at once and
// the devices move on to the next one.
//
// Another server of that iteration may register only after it failed so:
// its uncounted updates are returned too, but the iteration's Record is
// out already, so the caller must account for them itself.
func (m *Machine) UncountedLost(now time.Time, serverID string, iteration uint64, folded int) int {
	m.advance(now)
	switch {
	case iteration == m.iter:
		n := folded - m.UpdatesBy(serverID)
		if n <= 0 {
			return 0
		}
		m.addLost(serverID, n)
		m.uncounted += n
		if m.phase != PhaseAggregating {
			m.failedUncounted = failedUncounted{iteration: m.iter, counted: m.updatesByServer()}
			m.failedUncounted.counted[serverID] = folded // accounted for here
			m.endIteration(now, false, fmt.Sprintf(
				"Acknowledged updates of iteration %d were lost with the scheduler's restart. This iteration is invalid. Proceed to next iteration.", m.iter), "")
		}
		return n
	case iteration == m.failedUncounted.iteration && iteration != 0:
		n := folded - m.failedUncounted.counted[serverID]
		if n <= 0 {
			return 0
		}
		m.failedUncounted.counted[serverID] = folded // once per server
		return n
	}
	return 0
}

// PartialGone is called when a member of the restored iteration will not
// register again with its partial sum: it restarted too (a host went down
// with the scheduler) or the heartbeat timeout declared it dead first.
// The state was saved up to a moment before the previous scheduler went,
// and updates the server acknowledged after that are gone with the sum:
// neither the server nor the state can count them, and their devices,
// told SUCCEED, wait for the iteration's model without sending again, so
// the round may never fill. Unless the round was already full when the
// state was saved (aggregating: every count is in it), the restored
// iteration fails at once and the devices move on to the next one. It
// reports whether the iteration failed.
func (m *Machine) PartialGone(now time.Time, serverID string) bool {
	m.advance(now)
	if m.iter != m.restored || m.instance != InstanceRunning || m.phase == PhaseAggregating {
		return false
	}
	m.endIteration(now, false, fmt.Sprintf(
		"Server %s did not come back with the updates it acknowledged in iteration %d before the scheduler's restart; they may be lost. This iteration is invalid. Proceed to next iteration.",
		serverID, m.iter), "")
	return true
}

// AttemptSeen makes the next aggregation attempt of iteration number more
// than attempt: a server registering after a scheduler restart may have
// seen attempts the restored state does not know, and an attempt under
// one of their numbers would mix with that attempt's pieces.
func (m *Machine) AttemptSeen(iteration uint64, attempt int) {
	if iteration == m.iter {
		m.attempts = max(m.attempts, attempt)
	}
}

// Folded is an update a server folded into its partial sum: the device
// and the data size it was weighted with.
type Folded struct {
	FLID     string
	DataSize int
}

// Rejoined is called for a member registering again on a new link, after
// a scheduler restart or a link that broke while it ran on, with the
// updates of iteration its partial sum holds. It reports whether that sum
// can stay: every update in it is either counted for the server or one the
// machine has not counted anywhere (the restored state was saved before
// the server counted it) with the data size its device was admitted with.
// Those are counted now, for the server, admitting their devices if the
// state lacks them too. The server stays a member and keeps its partial
// sum; if an aggregation attempt including it is running, a new attempt
// among the same servers starts, with the new counts, and reaches it on
// its new link. An update counted for the server but missing from its sum
// (the scheduler went before the server had the count, so the device was
// not told SUCCEED) shows as lost when the server reports its fold count.
// Otherwise the caller must report the server with ServerLost.
func (m *Machine) Rejoined(now time.Time, serverID string, iteration uint64, updates []Folded) bool {
	m.advance(now)
	if _, member := m.members[serverID]; !member || len(updates) == 0 || iteration != m.iter || m.instance != InstanceRunning {
		return false
	}
	if m.phase == PhaseAggregating && !slices.Contains(m.agg.servers, serverID) {
		return false
	}
	var adopt []Folded
	seen := make(map[string]bool, len(updates))
	for _, u := range updates {
		if seen[u.FLID] || u.DataSize < 1 {
			return false
		}
		seen[u.FLID] = true
		if i, ok := m.devIndex[u.FLID]; ok {
			d := m.devs[i]
			switch {
			case d.updatedBy == serverID && !d.lost:
				continue // counted
			case d.updatedBy != "" || d.dataSize != u.DataSize:
				return false // counted elsewhere, or not this device's
			}
		}
		adopt = append(adopt, u)
	}
	full := false
	for _, u := range adopt {
		i, ok := m.devIndex[u.FLID]
		if !ok {
			i = m.admit(now, serverID, u.FLID, u.DataSize)
		}
		full = m.count(now, serverID, i) || full
	}
	switch {
	case m.phase == PhaseAggregating:
		m.undoReportLosses()
		expected := make(map[string]int, len(m.agg.servers))
		for _, s := range m.agg.servers {
			expected[s] = m.countedBy[s]
		}
		m.newAttempt(now, m.agg.servers, expected)
	case full:
		m.startAggregation(now)
	}
	return true
}

// updatesByServer is UpdatesBy of every server that counted an update.
func (m *Machine) updatesByServer() map[string]int {
	by := maps.Clone(m.moved)
	for i := range m.devs {
		if s := m.devs[i].updatedBy; s != "" {
			by[s]++
		}
	}
	return by
}

func (m *Machine) addLost(serverID string, n int) {
	m.lost += n
	m.lostBy[serverID] += n
}

// ServerJoined adds a live member. It takes part in admissions at once and
// in the next aggregation attempt (not in one already running). The
// scheduler calls it when the server holds the model of Iteration()−1. A
// server that restarted must first be reported with ServerLost: its
// partial sums are gone.
func (m *Machine) ServerJoined(now time.Time, serverID string) {
	m.advance(now)
	m.members[serverID] = struct{}{}
}

// ServerLost removes a member (dead, partitioned, or scaled in after its
// aggregation). From then on its Admit/CountUpdate get CodeSafemode.
//
// Updates it counted but never aggregated are lost: they stay counted (the
// devices were told SUCCEED and will not resend; the threshold is not
// re-opened) and are recorded as Lost in the iteration's Record. During an
// aggregation:
//   - if every other server of the attempt already reported, the all-reduce
//     finished (it cannot finish on any member without every member's
//     contribution), so the iteration completes as valid and nothing is lost;
//   - otherwise the dead server's updates are lost and a new attempt starts
//     among the survivors (StartAggregation with Attempt+1); if no update
//     survives, the iteration fails.
func (m *Machine) ServerLost(now time.Time, serverID string) {
	m.advance(now)
	if _, ok := m.members[serverID]; !ok {
		return
	}
	delete(m.members, serverID)
	switch m.phase {
	case PhaseWaiting, PhaseCollecting:
		if n := m.countedBy[serverID]; n > 0 {
			m.markLost(serverID)
			m.addLost(serverID, n)
		}
		delete(m.countedBy, serverID)
	case PhaseAggregating:
		a := m.agg
		exp, inAgg := a.expected[serverID]
		if !inAgg {
			return
		}
		survivors := make([]string, 0, len(a.servers))
		allReported := true
		for _, s := range a.servers {
			if s == serverID {
				continue
			}
			survivors = append(survivors, s)
			if _, ok := a.reports[s]; !ok {
				allReported = false
			}
		}
		if len(survivors) > 0 && allReported {
			if _, ok := a.reports[serverID]; !ok {
				// Its folds are in the survivors' model; count them as
				// reported so the fold total stays right.
				a.reports[serverID] = report{sha: a.sha, folded: exp}
			}
			m.maybeComplete(now)
			return
		}
		// Start again among the survivors; everything the dead server
		// counted (or already reported folding) is lost, as are the losses
		// recorded from earlier reports of this attempt, which are redone.
		m.undoReportLosses()
		m.markLost(serverID)
		delete(m.countedBy, serverID)
		if exp > 0 {
			m.addLost(serverID, exp)
		}
		if len(survivors) == 0 {
			m.endIteration(now, false, fmt.Sprintf(
				"All aggregating servers of iteration %d were lost. This iteration is invalid. Proceed to next iteration.", m.iter), "")
			return
		}
		m.newAttempt(now, survivors, m.countedBy)
	}
}

// undoReportLosses removes the losses recorded from folded<expected reports
// of the current attempt, since the attempt is redone and its servers
// report afresh.
func (m *Machine) undoReportLosses() {
	a := m.agg
	for s, r := range a.reports {
		if d := a.expected[s] - r.folded; d > 0 {
			m.lost -= d
			if m.lostBy[s] -= d; m.lostBy[s] == 0 {
				delete(m.lostBy, s)
			}
		}
	}
}

func (m *Machine) markLost(serverID string) {
	for i := range m.devs {
		if m.devs[i].updatedBy == serverID {
			m.devs[i].lost = true
		}
	}
}

// Disable is /disableFLS: devices are refused (CodeDisabled) until Enable.
// An iteration that is collecting ends at once as failed ("Forcibly move to
// next iteration."); one that is waiting stays (nothing to drop; its number
// is reused after Enable); one that is aggregating is allowed to finish, so
// acknowledged updates are not thrown away. Disabling a disabled instance
// is a no-op; a finished instance gives ErrFinished.
func (m *Machine) Disable(now time.Time) error {
	m.advance(now)
	switch m.instance {
	case InstanceFinished:
		return fmt.Errorf("%w: please do not disable the server now", ErrFinished)
	case InstanceDisabled:
		return nil
	}
	m.instance = InstanceDisabled
	m.pendingEnable = false // a later disable wins over an earlier new instance's enable
	m.emit(InstanceChanged{Iteration: m.iter, State: InstanceDisabled, Reason: "disableFLS"})
	if m.phase == PhaseCollecting {
		m.endIteration(now, false, "Forcibly move to next iteration.", "")
	}
	return nil
}

// Enable is /enableFLS: a disabled instance runs again; enabling a running
// instance is a no-op; a finished instance gives ErrFinished (start a new
// instance instead).
func (m *Machine) Enable(now time.Time) error {
	m.advance(now)
	switch m.instance {
	case InstanceFinished:
		return fmt.Errorf("%w: please do not enable the server now", ErrFinished)
	case InstanceRunning:
		return nil
	}
	m.instance = InstanceRunning
	m.emit(InstanceChanged{Iteration: m.iter, State: InstanceRunning, Reason: "enableFLS"})
	return nil
}

// NewInstance is /newInstance: the hyper-parameters p (validated; the error
// names the key) start a new instance of fl_iteration_num iterations.
//
// Unlike MindSpore, the iteration number is not reset to 1: numbers keep
// growing so stored models and checkpoints are never overwritten, and the
// latest model is the new instance's starting point (as in MindSpore).
// The new instance counts its own iterations (fl_iteration_num from its
// start). It starts:
//   - at once if the current iteration has not started (waiting), or the
//     instance is finished or disabled (which also enables it, as r1.7's
//     StartNewInstance does);
//   - otherwise at the next iteration boundary: the current iteration
//     finishes under the old parameters ("new hyper-parameters from the
//     next iteration"), and a later NewInstance before then replaces it.
//
// Started instances are announced with ParamsChanged (and InstanceChanged
// when the state changes).
func (m *Machine) NewInstance(now time.Time, p Params) error {
	if err := p.Validate(); err != nil {
		return err
	}
	m.advance(now)
	switch {
	case m.phase == PhaseAggregating:
		// The aggregation in flight belongs to the old instance: start the
		// new one at its end, enabling it then if it is disabled now.
		m.pending = &p
		m.pendingEnable = m.instance != InstanceRunning
	case m.phase == PhaseWaiting || m.instance != InstanceRunning:
		m.pending, m.pendingEnable = nil, false
		m.startInstance(p, true)
	default:
		m.pending, m.pendingEnable = &p, false
	}
	return nil
}

func (m *Machine) startInstance(p Params, enable bool) {
	m.cfg.Params = p
	m.updThreshold = p.UpdateModelThreshold()
	m.base = m.iter - 1
	m.emit(ParamsChanged{Iteration: m.iter, Params: p})
	if enable && m.instance != InstanceRunning {
		m.instance = InstanceRunning
		m.emit(InstanceChanged{Iteration: m.iter, State: InstanceRunning, Reason: "newInstance"})
	}
}

// NextDeadline returns the earliest armed timer, or false if none runs. The
// scheduler arms one timer for it and calls Tick when it fires.
func (m *Machine) NextDeadline() (time.Time, bool) {
	var best time.Time
	for _, t := range m.deadlines() {
		if !t.IsZero() && (best.IsZero() || t.Before(best)) {
			best = t
		}
	}
	return best, !best.IsZero()
}

func (m *Machine) deadlines() [4]time.Time {
	var d [4]time.Time
	if m.phase == PhaseWaiting {
		return d
	}
	d[0], d[1], d[2] = m.startDL, m.updDL, m.globalDL
	if m.phase == PhaseAggregating && m.agg != nil {
		d[3] = m.agg.deadline
	}
	return d
}

// Tick fires the timers that expired by now: an expired round window, the
// global window or the aggregation deadline fails the iteration.
func (m *Machine) Tick(now time.Time) { m.advance(now) }

func (m *Machine) advance(now time.Time) {
	d := m.deadlines()
	idx := -1
	for i, t := range d {
		if !t.IsZero() && !now.Before(t) && (idx < 0 || t.Before(d[idx])) {
			idx = i
		}
	}
	var reason string
	switch idx {
	case -1:
		return
	case 0:
		reason = "Round startFLJob timeout! This iteration is invalid. Proceed to next iteration."
	case 1:
		reason = "Round updateModel timeout! This iteration is invalid. Proceed to next iteration."
	case 2:
		reason = fmt.Sprintf("Global Iteration %d timeout! This iteration is invalid. Proceed to next iteration.", m.iter)
	case 3:
		var missing []string
		for _, s := range m.agg.servers {
			if _, ok := m.agg.reports[s]; !ok {
				missing = append(missing, s)
			}
		}
		reason = fmt.Sprintf("Aggregation of iteration %d attempt %d timeout! No report from %v. This iteration is invalid. Proceed to next iteration.",
			m.iter, m.agg.attempt, missing)
	}
	// The iteration ends at the deadline, not at the late call.
	m.endIteration(d[idx], false, reason, "")
}

// endIteration closes the current iteration, emits ParamsChanged (if a new
// instance starts), NextIteration, InstanceChanged (if the instance
// finished) and the Record, and resets the per-iteration state.
func (m *Machine) endIteration(now time.Time, valid bool, reason, sha string) {
	completed := m.iter
	rec := Record{
		Iteration:       completed,
		Valid:           valid,
		Reason:          reason,
		FLIterationNum:  m.cfg.FLIterationNum,
		Threshold:       m.cfg.StartFLJobThreshold,
		UpdateThreshold: m.updThreshold,
		Admitted:        len(m.devs),
		Updated:         m.updated,
		Attempts:        m.attempts,
		Sha256:          sha,
		StartedAt:       m.started,
		EndedAt:         now,
		Rejected:        map[string]int{},
		LostByServer:    map[string]int{},
	}
	rec.Lost, rec.Uncounted = m.lost, m.uncounted
	rec.RejectedUpdates = m.rejectedUpdates
	for s, n := range m.lostBy {
		rec.LostByServer[s] = n
	}
	for k, n := range m.rejects {
		if n > 0 {
			rec.Rejected[Reject(k).String()] = n
		}
	}
	if m.agg != nil {
		rec.Servers = slices.Clone(m.agg.servers)
	}
	rec.StartFLJobDuration = span(m.started, m.startFullAt, now)
	rec.UpdateModelDuration = span(m.updFirstAt, m.updFullAt, now)
	if !m.updFullAt.IsZero() {
		rec.SwitchTime = nonneg(now.Sub(m.updFullAt))
	}
	if !m.started.IsZero() {
		rec.ExecutionTime = nonneg(now.Sub(m.started))
	}

	m.iter++
	m.resetIteration(now)
	if m.pending != nil {
		p, enable := *m.pending, m.pendingEnable
		m.pending, m.pendingEnable = nil, false
		m.startInstance(p, enable)
	} else if m.instance != InstanceFinished && m.iter-1-m.base >= uint64(m.cfg.FLIterationNum) {
		m.instance = InstanceFinished
	}
	rec.Instance = m.instance
	m.emit(NextIteration{Iteration: m.iter, Completed: completed, Valid: valid, Reason: reason, Sha256: sha, Instance: m.instance})
	if m.instance == InstanceFinished {
		m.emit(InstanceChanged{Iteration: m.iter, State: InstanceFinished,
			Reason: fmt.Sprintf("fl_iteration_num %d reached", m.cfg.FLIterationNum)})
	}
	m.emit(rec)
}

// span is the duration from start to end, or to now when end is unset; 0 if
// start is unset.
func span(start, end, now time.Time) time.Duration {
	if start.IsZero() {
		return 0
	}
	if end.IsZero() {
		end = now
	}
	return nonneg(end.Sub(start))
}

func nonneg(d time.Duration) time.Duration { return max(d, 0) }

func (m *Machine) resetIteration(now time.Time) {
	m.phase = PhaseWaiting
	m.began = now
	m.started, m.startFullAt, m.updFirstAt, m.updFullAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	m.startDL, m.updDL, m.globalDL = time.Time{}, time.Time{}, time.Time{}
	clear(m.devIndex)
	clear(m.devs)
	m.devs = m.devs[:0]
	m.updated = 0
	clear(m.countedBy)
	m.lost = 0
	m.uncounted = 0
	clear(m.lostBy)
	clear(m.moved)
	m.rejects = [numRejects]int{}
	m.rejectedUpdates = 0
	m.attempts = 0
	m.agg = nil
}

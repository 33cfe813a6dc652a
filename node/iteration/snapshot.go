package iteration

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// SnapshotVersion is the version written by Snapshot and the only one
// Restore accepts.
const SnapshotVersion = 1

// ErrBadSnapshot is wrapped by Restore's errors.
var ErrBadSnapshot = errors.New("invalid iteration snapshot")

// Snapshot is the Machine's control state, JSON-serialisable, for the
// scheduler's recovery file. Take it after draining Ready (actions are not
// part of it). Zero times mean "unset".
type Snapshot struct {
	Version      int     `json:"version"`
	Iteration    uint64  `json:"iteration"`
	InstanceBase uint64  `json:"instance_base"`
	Instance     string  `json:"instance_state"`
	Phase        string  `json:"phase"`
	Params       Params  `json:"params"`
	Pending      *Params `json:"pending_params,omitempty"`
	// PendingEnable: the pending instance enables the disabled one.
	PendingEnable bool           `json:"pending_enable,omitempty"`
	Members       []string       `json:"members"`
	Began         time.Time      `json:"began"`
	Started       time.Time      `json:"started"`
	StartFullAt   time.Time      `json:"start_full_at"`
	UpdFirstAt    time.Time      `json:"update_first_at"`
	UpdFullAt     time.Time      `json:"update_full_at"`
	StartDL       time.Time      `json:"start_fl_job_deadline"`
	UpdDL         time.Time      `json:"update_model_deadline"`
	GlobalDL      time.Time      `json:"global_deadline"`
	Devices       []DeviceState  `json:"devices"`
	Lost          int            `json:"lost"`
	Uncounted     int            `json:"uncounted,omitempty"`
	LostByServer  map[string]int `json:"lost_by_server,omitempty"`
	Moved         map[string]int `json:"moved,omitempty"` // per server, its lost updates counted again elsewhere
	Rejected      map[string]int `json:"rejected,omitempty"`
	// RejectedUpdates is the part of Rejected refusing updateModel.
	RejectedUpdates int `json:"rejected_updates,omitempty"`
	Attempts        int `json:"attempts"`
	// Aggregation is set while aggregating.
	Aggregation *AggregationState `json:"aggregation,omitempty"`
	// FailedUncounted is the last iteration UncountedLost failed, and
	// what each server counted in it.
	FailedUncounted *FailedUncountedState `json:"failed_uncounted,omitempty"`
}

// FailedUncountedState is the iteration a restart failed for updates the
// restored state never counted, and what each server counted in it, for
// servers that register after it ended.
type FailedUncountedState struct {
	Iteration uint64         `json:"iteration"`
	Counted   map[string]int `json:"counted"`
}

// DeviceState is one admitted device of the current iteration.
type DeviceState struct {
	FLID       string `json:"fl_id"`
	DataSize   int    `json:"data_size"`
	AdmittedBy string `json:"admitted_by"`
	UpdatedBy  string `json:"updated_by,omitempty"`
	Lost       bool   `json:"lost,omitempty"`
}

// AggregationState is the running aggregation attempt.
type AggregationState struct {
	Attempt   int                    `json:"attempt"`
	Servers   []string               `json:"servers"`
	Expected  map[string]int         `json:"expected"`
	Reports   map[string]ReportState `json:"reports,omitempty"`
	Sha256    string                 `json:"sha256,omitempty"`
	StartedAt time.Time              `json:"started_at"`
	Deadline  time.Time              `json:"deadline"`
}

// ReportState is one server's AggregationDone.
type ReportState struct {
	Sha256 string `json:"sha256"`
	Folded int    `json:"folded"`
}

// Snapshot returns the control state.
func (m *Machine) Snapshot() Snapshot {
	s := Snapshot{
		Version:      SnapshotVersion,
		Iteration:    m.iter,
		InstanceBase: m.base,
		Instance:     m.instance.String(),
		Phase:        m.phase.String(),
		Params:       m.cfg.Params,
		Members:      m.memberList(),
		Began:        m.began,
		Started:      m.started,
		StartFullAt:  m.startFullAt,
		UpdFirstAt:   m.updFirstAt,
		UpdFullAt:    m.updFullAt,
		StartDL:      m.startDL,
		UpdDL:        m.updDL,
		GlobalDL:     m.globalDL,
		Devices:      make([]DeviceState, len(m.devs)),
		Lost:         m.lost,
		Uncounted:    m.uncounted,
		LostByServer: maps.Clone(m.lostBy),
		Moved:        maps.Clone(m.moved),
		Rejected:     map[string]int{},
		Attempts:     m.attempts,

		RejectedUpdates: m.rejectedUpdates,
	}
	if m.pending != nil {
		p := *m.pending
		s.Pending, s.PendingEnable = &p, m.pendingEnable
	}
	for i, d := range m.devs {
		s.Devices[i] = DeviceState{FLID: d.flID, DataSize: d.dataSize, AdmittedBy: d.admittedBy, UpdatedBy: d.updatedBy, Lost: d.lost}
	}
	for k, n := range m.rejects {
		if n > 0 {
			s.Rejected[Reject(k).String()] = n
		}
	}
	if f := m.failedUncounted; f.iteration != 0 {
		s.FailedUncounted = &FailedUncountedState{Iteration: f.iteration, Counted: maps.Clone(f.counted)}
	}
	if a := m.agg; a != nil {
		as := &AggregationState{
			Attempt:   a.attempt,
			Servers:   slices.Clone(a.servers),
			Expected:  maps.Clone(a.expected),
			Reports:   map[string]ReportState{},
			Sha256:    a.sha,
			StartedAt: a.startedAt,
			Deadline:  a.deadline,
		}
		for k, r := range a.reports {
			as.Reports[k] = ReportState{Sha256: r.sha, Folded: r.folded}
		}
		s.Aggregation = as
	}
	return s
}

func parseInstance(s string) (InstanceState, bool) {
	for _, st := range []InstanceState{InstanceRunning, InstanceDisabled, InstanceFinished} {
		if st.String() == s {
			return st, true
		}
	}
	return 0, false
}

func parsePhase(s string) (Phase, bool) {
	for _, p := range []Phase{PhaseWaiting, PhaseCollecting, PhaseAggregating} {
		if p.String() == s {
			return p, true
		}
	}
	return 0, false
}

func parseReject(s string) (Reject, bool) {
	for k := range numRejects {
		if k.String() == s {
			return k, true
		}
	}
	return 0, false
}

// Restore rebuilds a Machine from a snapshot taken by a previous scheduler.
// The hyper-parameters come from the snapshot (a newInstance survives the
// restart); cfg supplies the control-plane settings (AggregationTimeout) and
// must be valid. Round timers keep their absolute deadlines, so windows that
// expired while the scheduler was down fail the iteration at once (visible
// in Ready). An aggregation in progress is restarted as a new attempt among
// its servers that are still members, since reports may have been sent to
// the dead scheduler. The scheduler then reports membership changes seen
// since (ServerLost / ServerJoined).
func Restore(s Snapshot, cfg Config, now time.Time) (*Machine, error) {
	if s.Version != SnapshotVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadSnapshot, s.Version, SnapshotVersion)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := s.Params.Validate(); err != nil {
		return nil, fmt.Errorf("%w: params: %w", ErrBadSnapshot, err)
	}
	if s.Pending != nil {
		if err := s.Pending.Validate(); err != nil {
			return nil, fmt.Errorf("%w: pending params: %w", ErrBadSnapshot, err)
		}
	}
	if s.Iteration < 1 || s.InstanceBase >= s.Iteration {
		return nil, fmt.Errorf("%w: iteration %d, instance base %d", ErrBadSnapshot, s.Iteration, s.InstanceBase)
	}
	inst, ok := parseInstance(s.Instance)
	if !ok {
		return nil, fmt.Errorf("%w: instance state %q", ErrBadSnapshot, s.Instance)
	}
	phase, ok := parsePhase(s.Phase)
	if !ok {
		return nil, fmt.Errorf("%w: phase %q", ErrBadSnapshot, s.Phase)
	}
	cfg.Params = s.Params
	m := newMachine(cfg)
	m.iter, m.base, m.instance, m.phase = s.Iteration, s.InstanceBase, inst, phase
	m.restored = m.iter
	if s.Pending != nil {
		p := *s.Pending
		m.pending, m.pendingEnable = &p, s.PendingEnable
	}
	for _, id := range s.Members {
		m.members[id] = struct{}{}
	}
	m.began, m.started, m.startFullAt, m.updFirstAt, m.updFullAt = s.Began, s.Started, s.StartFullAt, s.UpdFirstAt, s.UpdFullAt
	m.startDL, m.updDL, m.globalDL = s.StartDL, s.UpdDL, s.GlobalDL
	if len(s.Devices) > m.cfg.StartFLJobThreshold {
		return nil, fmt.Errorf("%w: %d devices over threshold %d", ErrBadSnapshot, len(s.Devices), m.cfg.StartFLJobThreshold)
	}
	if (phase == PhaseWaiting) != (len(s.Devices) == 0) {
		return nil, fmt.Errorf("%w: phase %s with %d devices", ErrBadSnapshot, phase, len(s.Devices))
	}
	for _, d := range s.Devices {
		if _, dup := m.devIndex[d.FLID]; dup || d.DataSize < 1 {
			return nil, fmt.Errorf("%w: device %q", ErrBadSnapshot, d.FLID)
		}
		m.devIndex[d.FLID] = len(m.devs)
		m.devs = append(m.devs, device{flID: d.FLID, dataSize: d.DataSize, admittedBy: d.AdmittedBy, updatedBy: d.UpdatedBy, lost: d.Lost})
		if d.UpdatedBy != "" {
			m.updated++
			if !d.Lost {
				m.countedBy[d.UpdatedBy]++
			}
		}
	}
	m.lost, m.uncounted = s.Lost, s.Uncounted
	maps.Copy(m.lostBy, s.LostByServer)
	maps.Copy(m.moved, s.Moved)
	for k, n := range s.Rejected {
		if r, ok := parseReject(k); ok {
			m.rejects[r] = n
		}
	}
	m.rejectedUpdates = s.RejectedUpdates
	if f := s.FailedUncounted; f != nil && f.Iteration < m.iter {
		m.failedUncounted = failedUncounted{iteration: f.Iteration, counted: maps.Clone(f.Counted)}
		if m.failedUncounted.counted == nil {
			m.failedUncounted.counted = map[string]int{}
		}
	}
	m.attempts = s.Attempts
	if phase == PhaseAggregating {
		a := s.Aggregation
		if a == nil {
			return nil, fmt.Errorf("%w: aggregating without aggregation state", ErrBadSnapshot)
		}
		m.agg = &aggregation{
			attempt:   a.Attempt,
			servers:   slices.Clone(a.Servers),
			expected:  maps.Clone(a.Expected),
			reports:   map[string]report{},
			sha:       a.Sha256,
			startedAt: a.StartedAt,
			deadline:  a.Deadline,
		}
		for k, r := range a.Reports {
			m.agg.reports[k] = report{sha: r.Sha256, folded: r.Folded}
		}
		m.attempts = max(m.attempts, a.Attempt)
		m.undoReportLosses()
		var servers []string
		for _, id := range a.Servers {
			if _, ok := m.members[id]; ok {
				servers = append(servers, id)
			}
		}
		m.newAttempt(now, servers, m.countedBy)
	}
	m.advance(now)
	return m, nil
}

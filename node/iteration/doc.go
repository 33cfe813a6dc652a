// Package iteration is the scheduler's control state of federated
// iterations: which iteration runs, whether the instance is running,
// disabled or finished, which devices were admitted this iteration (with
// their data sizes and servers), which updates were counted, the round
// timers, and the aggregation hand-shake with the servers.
//
// It is a state machine in the etcd-raft style: no I/O, no goroutines, no
// clock. The scheduler owns one *Machine, serialises every call to it,
// passes the current time in, drains the resulting Actions with Ready and
// carries them out in order (broadcast to servers, persist, write records).
// NextDeadline tells it when to call Tick.
//
// Flow of one NOT_ENCRYPT iteration N (iterations number from 1; the
// initial model is iteration 0):
//
//   - startFLJob: a server verifies the request, then asks Admit. The first
//     admission starts the startFLJob window and the global window and fixes
//     next_req_time = first admission + start_fl_job_time_window +
//     update_model_time_window; the start_fl_job_threshold-th stops the
//     startFLJob window. The device is served the model of N−1.
//   - updateModel: a server decodes and validates the update without side
//     effects, then asks CountUpdate; on success it folds the update
//     (weight = the device's data size from Admit) into its partial sum.
//     Each fl_id is counted at most once. The first count starts the
//     updateModel window; the ceil(threshold × ratio)-th emits
//     StartAggregation to every live member.
//   - aggregation: the members all-reduce and each reports AggregationDone
//     with the model's sha256 and how many updates it folded. When all
//     reported the same checksum: NextIteration{Valid: true} and a Record.
//   - failure: a round window, the global window or the aggregation
//     deadline expiring, a checksum mismatch, more folds than counts, or
//     /disableFLS during collection ends the iteration with
//     NextIteration{Valid: false}; servers drop their partial sums and store
//     a copy of their latest model under N.
//
// Lost updates (DESIGN.md promise 3): an update counted by a server that
// dies before the aggregation finishes stays counted (the device was told
// SUCCEED) and is recorded in Record.Lost; the aggregation is redone among
// the survivors as a new attempt. Servers must keep their partial sums until
// NextIteration and answer the latest StartAggregation attempt.
//
// Differences from MindSpore, on purpose: no safemode at the switch (the
// next iteration admits devices as soon as NextIteration is emitted); a
// duplicate updateModel is refused instead of being folded twice;
// /newInstance keeps the iteration numbers growing (instead of resetting
// to 1) and takes effect at the next iteration boundary (at once when no
// iteration is running); /disableFLS while an aggregation runs lets it
// finish instead of throwing acknowledged updates away.
package iteration

// Package device is the Go device SDK: one Client is one federated-learning
// device speaking MindSpore's FlatBuffers-over-HTTP protocol to fedcluster
// (or MindSpore) servers.
//
// # Rounds
//
// RunIteration does what MindSpore's device clients do for one iteration
// (NOT_ENCRYPT): POST /startFLJob; train the served model with the FLPlan's
// epochs, mini-batch and learning rate (a Trainer); POST /updateModel with
// every weight multiplied by the device's data_size (the server divides
// the sum by the sum of data sizes); POST /getModel until the iteration's
// model is served. StartFLJob, UpdateModel, GetModel and PollModel are the
// single rounds for callers that drive the sequence themselves.
//
// Every request goes to a server picked at random from Options.Servers
// (MindSpore's "ELB" mode; ParseServers expands "127.0.0.1:6668-6671" or a
// host:port list) at URL base + http_url_prefix + "/" + round. Each carries
// a timestamp in epoch milliseconds as decimal text.
//
// # Downloading the model once per iteration
//
// With Options.ReuseModel (on in DefaultOptions), startFLJob names the
// model the device holds in the header Fedcluster-Held-Model-Sha256: the
// checksum a server gave with the last model it served this device
// (Fedcluster-Model-Sha256), while the device's copy is unchanged. A
// fedcluster server that would serve that very model leaves it out of its
// answer, so a device in consecutive iterations trains the model its last
// getModel brought instead of downloading it again. An answer without the
// model that does not confirm the named checksum is a bad answer. Other
// servers ignore the header and send the model.
//
// # Reactions and bounds
//
// The client never spins: every wait is a timer and every retry has a
// count bound and a time bound, after which the call returns an error
// wrapping ErrGaveUp.
//
//   - SucNotReady (getModel): poll again after a back-off doubling from
//     PollMinDelay to PollMaxDelay, jittered ±25%, never past the
//     next-request time the answer announces; at most MaxPolls polls and
//     MaxPollTime.
//   - OutOfTime: wait until next_req_time, clamped to [OutOfTimeMinWait,
//     OutOfTimeMaxWait] plus a little jitter, then start again at
//     startFLJob; at most MaxRestarts times per iteration.
//   - RequestError, SystemError, unknown codes: a *RetcodeError.
//   - "The cluster is in safemode." / "The server's training job is not
//     ready.": the same request again after RefusalDelay (jittered), at
//     most MaxRefusals times.
//   - "The server's training job is disabled or finished.": ErrJobFinished;
//     the device should stop.
//   - No answer (connection refused or reset, timeout) or HTTP 502/503/504:
//     the same request on another server after a jittered exponential
//     back-off (RetryMinDelay to RetryMaxDelay), at most MaxAttempts tries.
//   - Any other HTTP status: a *HTTPError.
//   - An answer that fails FlatBuffers verification, another plain text,
//     or a model that does not fit Options.Layout: an error wrapping
//     ErrBadResponse (and the flmsg error); nothing of it is used.
//
// A request in flight is not interrupted by its context; it ends within
// RequestTimeout (or the context's deadline, whichever is first). Waits
// between requests end as soon as the context does.
//
// # Memory and observation
//
// A Client reuses its FlatBuffers builder, its fasthttp request and
// response, its model and its upload buffer: after the first iteration a
// request allocates nothing proportional to the model. Clients of one
// process should share one fasthttp.Client (NewHTTPClient) so connections
// are pooled per server. Options.Observe sees every HTTP exchange with its
// endpoint, server, latency, outcome and retcode, which is what load
// benchmarks turn into per-endpoint percentiles.
//
// # Load generators
//
// With Options.LoadBlock a Client simulates a device without holding a
// model: every update is a head of its own followed by the shared block
// (one serialized update for all devices of a process), and the answers
// that carry a model are read to their end but only their first
// flmsg.HeadSize bytes are kept and verified (the model's part of them
// against the answer's length). A thousand such devices of a 10M-parameter
// model hold a few hundred KiB each instead of three copies of the model.
package device

package iteration

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrInvalidParam is wrapped by every error of Params.Validate and
// Config.Validate; the message names the key and its allowed range.
var ErrInvalidParam = errors.New("invalid parameter")

// Limits used by Validate.
const (
	// MaxCount bounds every integer count parameter (thresholds, iteration and
	// epoch numbers, batch size): MindSpore reads them as C++ int / size_t, and
	// the device schema carries them as int32.
	MaxCount = math.MaxInt32
	// MaxWindowMs bounds every time window: one year in milliseconds.
	MaxWindowMs = int64(365 * 24 * time.Hour / time.Millisecond)
)

// Params are the hyper-parameters of one instance: the keys of MindSpore's
// set_fl_context that /newInstance may change and /queryInstance reports.
// JSON and TOML keys are MindSpore's. Time windows are integer milliseconds,
// as on MindSpore's command line and REST API.
//
// The REST handler of /newInstance should decode the request body over a
// copy of Machine.Query(): keys absent from the body keep their value.
type Params struct {
	// StartFLJobThreshold is the number of devices admitted per iteration
	// (startFLJob round threshold). Range [1, MaxCount].
	StartFLJobThreshold int `json:"start_fl_job_threshold" toml:"start_fl_job_threshold"`
	// StartFLJobTimeWindow (ms) runs from the first accepted startFLJob of an
	// iteration; if the threshold is not reached by then the iteration fails.
	// Range [1, MaxWindowMs].
	StartFLJobTimeWindow int64 `json:"start_fl_job_time_window" toml:"start_fl_job_time_window"`
	// UpdateModelRatio sets the updateModel threshold to
	// ceil(StartFLJobThreshold × UpdateModelRatio). Range (0, 1].
	UpdateModelRatio float64 `json:"update_model_ratio" toml:"update_model_ratio"`
	// UpdateModelTimeWindow (ms) runs from the first accepted updateModel of
	// an iteration; if the updateModel threshold is not reached by then the
	// iteration fails. Range [1, MaxWindowMs].
	UpdateModelTimeWindow int64 `json:"update_model_time_window" toml:"update_model_time_window"`
	// GlobalIterationTimeWindow (ms) is the hard cap of one iteration, from
	// its first accepted startFLJob to the end of its aggregation.
	// Range [1, MaxWindowMs].
	GlobalIterationTimeWindow int64 `json:"global_iteration_time_window" toml:"global_iteration_time_window"`
	// FLIterationNum is the number of iterations of the instance, valid or
	// not; then the instance is finished. Range [1, MaxCount].
	FLIterationNum int `json:"fl_iteration_num" toml:"fl_iteration_num"`
	// ClientEpochNum is sent to devices as FLPlan.epochs. Range [1, MaxCount].
	ClientEpochNum int `json:"client_epoch_num" toml:"client_epoch_num"`
	// ClientBatchSize is sent to devices as FLPlan.mini_batch.
	// Range [1, MaxCount].
	ClientBatchSize int `json:"client_batch_size" toml:"client_batch_size"`
	// ClientLearningRate is sent to devices as FLPlan.lr. A finite number > 0.
	ClientLearningRate float64 `json:"client_learning_rate" toml:"client_learning_rate"`
}

// Config is what a Machine is created with: the instance's first Params and
// the settings of the control plane itself.
type Config struct {
	Params
	// AggregationTimeout (ms) bounds the wait for every aggregating server's
	// AggregationDone after StartAggregation (each attempt gets it afresh);
	// on expiry the iteration fails. Range [1, MaxWindowMs].
	AggregationTimeout int64 `json:"aggregation_timeout" toml:"aggregation_timeout"`
}

// DefaultParams returns MindSpore r1.7's C++ defaults, except
// start_fl_job_threshold, which is 1 (MindSpore's C++ default 0 is invalid).
func DefaultParams() Params {
	return Params{
		StartFLJobThreshold:       1,
		StartFLJobTimeWindow:      300000,
		UpdateModelRatio:          1.0,
		UpdateModelTimeWindow:     300000,
		GlobalIterationTimeWindow: 3600000,
		FLIterationNum:            20,
		ClientEpochNum:            25,
		ClientBatchSize:           32,
		ClientLearningRate:        0.001,
	}
}

// DefaultConfig returns DefaultParams and a 30 s aggregation timeout.
func DefaultConfig() Config {
	return Config{Params: DefaultParams(), AggregationTimeout: 30000}
}

func checkCount(key string, v int) error {
	if v < 1 || v > MaxCount {
		return fmt.Errorf("%w: %s = %d, allowed range is [1, %d]", ErrInvalidParam, key, v, MaxCount)
	}
	return nil
}

func checkWindow(key string, v int64) error {
	if v < 1 || v > MaxWindowMs {
		return fmt.Errorf("%w: %s = %d ms, allowed range is [1, %d] ms", ErrInvalidParam, key, v, MaxWindowMs)
	}
	return nil
}

// Validate checks every parameter; the error names the first bad key and its
// allowed range.
func (p Params) Validate() error {
	if err := checkCount("start_fl_job_threshold", p.StartFLJobThreshold); err != nil {
		return err
	}
	if err := checkWindow("start_fl_job_time_window", p.StartFLJobTimeWindow); err != nil {
		return err
	}
	if !(p.UpdateModelRatio > 0 && p.UpdateModelRatio <= 1) {
		return fmt.Errorf("%w: update_model_ratio = %v, allowed range is (0, 1]", ErrInvalidParam, p.UpdateModelRatio)
	}
	if err := checkWindow("update_model_time_window", p.UpdateModelTimeWindow); err != nil {
		return err
	}
	if err := checkWindow("global_iteration_time_window", p.GlobalIterationTimeWindow); err != nil {
		return err
	}
	if err := checkCount("fl_iteration_num", p.FLIterationNum); err != nil {
		return err
	}
	if err := checkCount("client_epoch_num", p.ClientEpochNum); err != nil {
		return err
	}
	if err := checkCount("client_batch_size", p.ClientBatchSize); err != nil {
		return err
	}
	if !(p.ClientLearningRate > 0) || math.IsInf(p.ClientLearningRate, 0) {
		return fmt.Errorf("%w: client_learning_rate = %v, allowed range is (0, +Inf) (finite)", ErrInvalidParam, p.ClientLearningRate)
	}
	return nil
}

// Validate checks Params and the control-plane settings.
func (c Config) Validate() error {
	if err := c.Params.Validate(); err != nil {
		return err
	}
	return checkWindow("aggregation_timeout", c.AggregationTimeout)
}

// UpdateModelThreshold is ceil(StartFLJobThreshold × UpdateModelRatio), at
// least 1. An absolute tolerance of 1e-6 absorbs binary rounding (10 × 0.7
// is 7.000000000000001 in float64, and MindSpore's float32 product gives 7);
// float64's spacing stays far below it for every int32 threshold, where a
// relative one would drop a whole device above 1e9.
func (p Params) UpdateModelThreshold() int {
	x := float64(p.StartFLJobThreshold) * p.UpdateModelRatio
	n := int(math.Ceil(x - 1e-6))
	if n < 1 {
		n = 1
	}
	if n > p.StartFLJobThreshold {
		n = p.StartFLJobThreshold
	}
	return n
}

func ms(v int64) time.Duration { return time.Duration(v) * time.Millisecond }

package iteration

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if got := DefaultParams().StartFLJobThreshold; got != 1 {
		t.Fatalf("default start_fl_job_threshold = %d, want 1", got)
	}
}

func TestConfigValidate(t *testing.T) {
	f := func(mod func(c *Config), key string) {
		t.Helper()
		c := DefaultConfig()
		mod(&c)
		err := c.Validate()
		if key == "" {
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		if !errors.Is(err, ErrInvalidParam) || !strings.Contains(err.Error(), key+" = ") || !strings.Contains(err.Error(), "allowed range") {
			t.Fatalf("want an error naming %s and its range, got %v", key, err)
		}
	}
	f(func(c *Config) {}, "")
	f(func(c *Config) { c.StartFLJobThreshold = 0 }, "start_fl_job_threshold")
	f(func(c *Config) { c.StartFLJobThreshold = -1 }, "start_fl_job_threshold")
	f(func(c *Config) { c.StartFLJobTimeWindow = 0 }, "start_fl_job_time_window")
	f(func(c *Config) { c.StartFLJobTimeWindow = MaxWindowMs + 1 }, "start_fl_job_time_window")
	f(func(c *Config) { c.UpdateModelRatio = 0 }, "update_model_ratio")
	f(func(c *Config) { c.UpdateModelRatio = 1.0001 }, "update_model_ratio")
	f(func(c *Config) { c.UpdateModelRatio = math.NaN() }, "update_model_ratio")
	f(func(c *Config) { c.UpdateModelRatio = 1 }, "")
	f(func(c *Config) { c.UpdateModelTimeWindow = -5 }, "update_model_time_window")
	f(func(c *Config) { c.GlobalIterationTimeWindow = 0 }, "global_iteration_time_window")
	f(func(c *Config) { c.FLIterationNum = 0 }, "fl_iteration_num")
	f(func(c *Config) { c.ClientEpochNum = 0 }, "client_epoch_num")
	f(func(c *Config) { c.ClientBatchSize = 0 }, "client_batch_size")
	f(func(c *Config) { c.ClientLearningRate = 0 }, "client_learning_rate")
	f(func(c *Config) { c.ClientLearningRate = math.Inf(1) }, "client_learning_rate")
	f(func(c *Config) { c.ClientLearningRate = math.NaN() }, "client_learning_rate")
	f(func(c *Config) { c.AggregationTimeout = 0 }, "aggregation_timeout")
}

func TestUpdateModelThreshold(t *testing.T) {
	f := func(threshold int, ratio float64, want int) {
		t.Helper()
		p := DefaultParams()
		p.StartFLJobThreshold, p.UpdateModelRatio = threshold, ratio
		if got := p.UpdateModelThreshold(); got != want {
			t.Fatalf("ceil(%d × %v) = %d, want %d", threshold, ratio, got, want)
		}
	}
	f(1, 1, 1)
	f(16, 1, 16)
	f(10, 0.7, 7) // 7.000000000000001 in float64
	f(3, 0.5, 2)
	f(3, 0.6, 2)
	f(3, 0.67, 3)
	f(100, 0.01, 1)
	f(100, 0.001, 1)
	f(1000, 0.999, 999)
}

func TestNewMachineRejectsBadConfig(t *testing.T) {
	c := DefaultConfig()
	c.FLIterationNum = 0
	if _, err := NewMachine(c, time.UnixMilli(0)); !errors.Is(err, ErrInvalidParam) {
		t.Fatalf("got %v", err)
	}
}

func TestUpdateModelThresholdLarge(t *testing.T) {
	f := func(threshold int, ratio float64, want int) {
		t.Helper()
		p := DefaultParams()
		p.StartFLJobThreshold, p.UpdateModelRatio = threshold, ratio
		if got := p.UpdateModelThreshold(); got != want {
			t.Fatalf("ceil(%d × %v) = %d, want %d", threshold, ratio, got, want)
		}
	}
	f(10, 0.7, 7)
	f(999_999_999, 1, 999_999_999)
	f(2_147_483_647, 1, 2_147_483_647)
	f(2_147_483_647, 0.5, 1_073_741_824)
}

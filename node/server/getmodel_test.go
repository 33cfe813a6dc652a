package server

import (
	"strconv"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// TestGetModelCutOffAnswersAtOnce: a server cut off from the scheduler
// cannot learn that an iteration ended, so a poll for a model newer than
// any it holds gets SucNotReady at once, not after get_model_wait: the
// device polls again, likely at another server, which may have it.
func TestGetModelCutOffAnswersAtOnce(t *testing.T) {
	s := newTestServer(t, false)
	s.cfg.Server.GetModelWait = config.Duration(time.Hour)
	s.metrics = newMetrics(s)
	var ctx fasthttp.RequestCtx
	ctx.Request.SetBody(flmsg.BuildRequestGetModel(flatbuffers.NewBuilder(0),
		&flmsg.GetModelArgs{FLName: "LeNet", Iteration: 5, Timestamp: strconv.FormatInt(time.Now().UnixMilli(), 10)}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.getModel(&ctx)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a server without a scheduler held a poll for a model it cannot get")
	}
	r, err := flmsg.DecodeResponseGetModel(ctx.Response.Body())
	if err != nil || r.Retcode != flmsg.SucNotReady {
		t.Fatalf("getModel(5) on a cut-off server holding iteration 0: %+v %v, want SucNotReady", r, err)
	}
}

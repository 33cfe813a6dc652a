package bench

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/model"
)

// BenchmarkDeviceCycleBare is the device cycle's ceiling on this machine,
// PERF.md's "bare fasthttp" run: an in-process fasthttp server and M
// client goroutines on loopback moving the bodies of a LeNet device-
// iteration (a model-sized startFLJob answer, a model-sized updateModel
// request, a model-sized getModel answer) with no protocol at all: no
// FlatBuffers, checks, scheduler, folding or rounds. One op is one device-
// iteration of every device; devIter/s and CPU per device-iteration
// compare with BenchmarkDeviceCycle/lenet/1srv.
func BenchmarkDeviceCycleBare(b *testing.B) {
	for _, devices := range []int{8, 32, 256} {
		b.Run(fmt.Sprintf("%ddev", devices), func(b *testing.B) { runBareCycle(b, devices) })
	}
}

func runBareCycle(b *testing.B, devices int) {
	body := make([]byte, 4*model.LeNet5Layout().Size+1024)
	for i := range body {
		body[i] = byte(i)
	}
	small := make([]byte, 200)
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/startFLJob", "/getModel":
				ctx.SetBody(body)
			default:
				ctx.SetBody(small)
			}
		},
		MaxRequestBodySize: 2 * len(body),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		if err := srv.Shutdown(); err != nil {
			b.Error(err)
		}
		<-done
	}()
	client := &fasthttp.HostClient{Addr: ln.Addr().String(), MaxConns: devices, MaxResponseBodySize: 2 * len(body)}
	exchange := func(path string, req []byte, want int) error {
		rq, rs := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(rq)
		defer fasthttp.ReleaseResponse(rs)
		rq.SetRequestURI("http://" + client.Addr + path)
		rq.Header.SetMethod(fasthttp.MethodPost)
		rq.SetBodyRaw(req)
		if err := client.Do(rq, rs); err != nil {
			return err
		}
		if got := len(rs.Body()); got != want {
			return fmt.Errorf("%s: %d bytes back, want %d", path, got, want)
		}
		return nil
	}
	// An op moves three model-sized bodies for every device.
	b.SetBytes(int64(3 * devices * len(body)))
	b.ReportAllocs()
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for range devices {
		wg.Go(func() {
			for range b.N {
				for _, x := range []struct {
					path string
					req  []byte
					want int
				}{{"/startFLJob", small, len(body)}, {"/updateModel", body, len(small)}, {"/getModel", small, len(body)}} {
					if err := exchange(x.path, x.req, x.want); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	n := float64(devices * b.N)
	b.ReportMetric(n/elapsed.Seconds(), "devIter/s")
	b.ReportMetric(float64(cpu.Microseconds())/n, "CPU-us/devIter")
}

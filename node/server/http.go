package server

import (
	"encoding/json"
	"errors"
	"net"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

func (s *Server) newHTTP() *fasthttp.Server {
	return &fasthttp.Server{
		Name:               "fedcluster",
		MaxRequestBodySize: int(s.cfg.Server.MaxBodySize),
		StreamRequestBody:  true,
		ReadTimeout:        httpReadTimeout,
		WriteTimeout:       60 * time.Second,
		IdleTimeout:        120 * time.Second,
		Concurrency:        64 << 10,
		CloseOnShutdown:    true,
		// A large model's server may hold a thousand device connections,
		// most of them idle between requests: their buffers and request
		// contexts go back to the pools meanwhile.
		ReduceMemoryUsage: s.plane.large,
		Logger:            zap.NewStdLog(s.Logger().Named("http")),
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				writeJSON(ctx, fasthttp.StatusRequestEntityTooLarge, map[string]any{"code": 1, "error_message": "request body exceeds max_body_size"})
				return
			}
			writeJSON(ctx, fasthttp.StatusBadRequest, map[string]any{"code": 1, "error_message": "cannot parse request: " + err.Error()})
		},
		Handler: s.route,
	}
}

func (s *Server) route(ctx *fasthttp.RequestCtx) {
	defer func() {
		if r := recover(); r != nil {
			s.Logger().Error("device handler panicked", zap.Any("panic", r), zap.ByteString("path", ctx.Path()))
			ctx.ResetBody()
			writeJSON(ctx, fasthttp.StatusInternalServerError, map[string]any{"code": 1, "error_message": "internal error"})
		}
	}()
	path := string(ctx.Path())
	if pre := s.cfg.Server.HTTPURLPrefix; pre != "" && len(path) > len(pre) && path[:len(pre)] == pre {
		switch path[len(pre):] {
		case "/startFLJob", "/updateModel", "/getModel":
			path = path[len(pre):]
		}
	} else if pre != "" && (path == "/startFLJob" || path == "/updateModel" || path == "/getModel") {
		path = "" // device routes live under the prefix only
	}
	switch path {
	case "/startFLJob", "/updateModel", "/getModel":
		if !ctx.IsPost() {
			// Only a POST carries a request table; anything else is a
			// client or a probe at the wrong method, told so, not fed to
			// the decoder as an empty request.
			ctx.Response.Header.Set("Allow", fasthttp.MethodPost)
			writeJSON(ctx, fasthttp.StatusMethodNotAllowed, map[string]any{"code": 1,
				"error_message": "method " + string(ctx.Method()) + " not allowed on " + string(ctx.Path()) + "; use POST"})
			return
		}
	}
	switch path {
	case "/startFLJob":
		s.timed("startFLJob", ctx, s.startFLJob)
	case "/updateModel":
		s.timed("updateModel", ctx, s.updateModel)
	case "/getModel":
		s.timed("getModel", ctx, s.getModel)
	case "/status":
		writeJSON(ctx, fasthttp.StatusOK, s.status())
	case "/metrics":
		s.metrics.serve(ctx)
	default:
		writeJSON(ctx, fasthttp.StatusNotFound, map[string]any{"code": 1, "error_message": "no such endpoint " + string(ctx.Path())})
	}
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// deviceRecvBuffer bounds the kernel's receive buffer of a device
// connection. An upload waiting for a buffer (uploads) keeps its
// connection open with its body unread; with the kernel's autotuned
// buffers, megabytes each, hundreds of waiting large uploads would put TCP
// under memory pressure, where every connection slows down. On a
// connection being read, 256 KiB in flight is plenty.
const deviceRecvBuffer = 256 << 10

// largeModelSendBuffer bounds the kernel's send buffer of a device
// connection when the model is large. Its answers are then written by as
// many goroutines as devices downloading, and with autotuned buffers each
// write copies megabytes into the kernel: with 1,024 devices of a 10M
// model on 2 cores, every other goroutine (the scheduler link's
// heartbeats among them) waited seconds for its turn. Bounded: 22 % more
// updates/s there, heartbeats answered in 1.2 s at worst instead of 2.7.
// LeNet's answers fit in one autotuned write, which measured faster.
const largeModelSendBuffer = 256 << 10

// deviceListener sets deviceRecvBuffer, and sendBuffer unless 0, on every
// device connection.
type deviceListener struct {
	net.Listener
	sendBuffer int
}

func (l deviceListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(deviceRecvBuffer)
		if l.sendBuffer > 0 {
			_ = tc.SetWriteBuffer(l.sendBuffer)
		}
	}
	return c, err
}

package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/membership"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/rest"
)

// route is one management endpoint and the methods it answers.
type route struct {
	methods []string
	handle  func(ctx *fasthttp.RequestCtx) (any, error)
}

// badRequest is an error answered with 400 and the seed's error body.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func errBad(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// errRaw tells the router a handler answered by itself (HTML, metrics).
var errRaw = errors.New("answered")

func (s *Scheduler) routes() map[string]route {
	get := []string{fasthttp.MethodGet}
	post := []string{fasthttp.MethodPost}
	both := []string{fasthttp.MethodGet, fasthttp.MethodPost}
	return map[string]route{
		"/state":    {both, s.handleState},
		"/nodes":    {both, s.handleNodes},
		"/scaleout": {post, s.handleScaleOut},
		"/scalein":  {post, s.handleScaleIn},
		"/members":  {get, s.handleMembers},

		"/scaleoutRollback": {post, s.handleScaleOutRollback},

		"/newInstance":   {post, s.handleNewInstance},
		"/queryInstance": {both, s.handleQueryInstance},
		"/enableFLS":     {post, s.handleEnable},
		"/disableFLS":    {post, s.handleDisable},
		"/records":       {get, s.handleRecords},
		"/metrics":       {get, s.handleMetrics},
		"/":              {get, s.handleDashboard},
	}
}

func (s *Scheduler) newREST() *fasthttp.Server {
	routes := s.routes()
	return &fasthttp.Server{
		Name:               "fedcluster-scheduler",
		MaxRequestBodySize: 100 << 20,
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       30 * time.Second,
		IdleTimeout:        90 * time.Second,
		Logger:             zap.NewStdLog(s.log.Named("rest")),
		Handler: func(ctx *fasthttp.RequestCtx) {
			defer func() {
				if r := recover(); r != nil {
					s.log.Error("REST handler panicked", zap.Any("panic", r), zap.ByteString("path", ctx.Path()))
					writeJSON(ctx, fasthttp.StatusInternalServerError, rest.Error{Code: rest.CodeError, ErrorMessage: "internal error"})
				}
			}()
			r, ok := routes[string(ctx.Path())]
			if !ok {
				writeJSON(ctx, fasthttp.StatusNotFound, rest.Error{Code: rest.CodeError, ErrorMessage: fmt.Sprintf("no such endpoint %s", ctx.Path())})
				return
			}
			allowed := false
			for _, m := range r.methods {
				allowed = allowed || string(ctx.Method()) == m
			}
			if !allowed {
				ctx.Response.Header.Set("Allow", joinMethods(r.methods))
				writeJSON(ctx, fasthttp.StatusMethodNotAllowed, rest.Error{Code: rest.CodeError, ErrorMessage: fmt.Sprintf("method %s not allowed on %s; use %s", ctx.Method(), ctx.Path(), joinMethods(r.methods))})
				return
			}
			v, err := r.handle(ctx)
			if err == errRaw {
				return // the handler wrote its own answer
			}
			if err != nil {
				writeJSON(ctx, fasthttp.StatusBadRequest, rest.Error{Code: rest.CodeError, ErrorMessage: err.Error()})
				return
			}
			writeJSON(ctx, fasthttp.StatusOK, v)
		},
	}
}

func joinMethods(ms []string) string {
	out := ""
	for i, m := range ms {
		if i > 0 {
			out += ", "
		}
		out += m
	}
	return out
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = fasthttp.StatusInternalServerError
		b = []byte(`{"code":1,"error_message":"cannot encode answer"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// decodeBody decodes a JSON body strictly: unknown keys and wrong types are
// reported with the key's name.
func decodeBody(ctx *fasthttp.RequestCtx, v any) error {
	body := ctx.PostBody()
	if len(bytes.TrimSpace(body)) == 0 {
		return errBad("The post message size is invalid.")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if ok := asType(err, &te); ok {
			return errBad("Illegal JSON format: key %s must be %s, got %s", te.Field, te.Type, te.Value)
		}
		return errBad("Illegal JSON format: %v", err)
	}
	if dec.More() {
		return errBad("Illegal JSON format: trailing data after the object")
	}
	return nil
}

func asType(err error, target **json.UnmarshalTypeError) bool {
	te, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*target = te
	}
	return ok
}

func (s *Scheduler) handleState(*fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.iter.Status()
	return rest.State{Code: rest.CodeOK, Message: "Get cluster state successful.", ClusterState: s.clusterStateLocked(),
		Iteration: st.Iteration, Instance: st.Instance.String(), Phase: st.Phase.String(), ServerNum: s.members.ServerNum(),
		Admitted: st.Admitted, Updated: st.Updated}, nil
}

func (s *Scheduler) handleNodes(*fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := rest.Nodes{Code: rest.CodeOK, Message: "Get nodes info successful.", NodeIDs: []rest.NodeInfo{}}
	for _, n := range s.members.Members() {
		out.NodeIDs = append(out.NodeIDs, rest.NodeInfo{Alive: strconv.FormatBool(n.Alive), NodeID: n.ID, RankID: strconv.Itoa(n.Rank), Role: ctl.RoleServer})
	}
	out.NodeIDs = append(out.NodeIDs, rest.NodeInfo{Alive: "true", NodeID: s.nodeID, RankID: "0", Role: ctl.RoleScheduler})
	return out, nil
}

// handleMembers is fedcluster's own richer view: addresses, pids, scaled-in servers.
func (s *Scheduler) handleMembers(*fasthttp.RequestCtx) (any, error) {
	return s.Members(), nil
}

func (s *Scheduler) handleScaleOut(ctx *fasthttp.RequestCtx) (any, error) {
	var req rest.ScaleOut
	if err := decodeBody(ctx, &req); err != nil {
		return nil, err
	}
	if req.ServerNum == nil {
		return nil, errBad("The json is not contain the key:server_num")
	}
	if *req.ServerNum < 0 || (req.WorkerNum != nil && *req.WorkerNum < 0) {
		return nil, errBad("The value should not be less than 0.")
	}
	if req.WorkerNum != nil && *req.WorkerNum != 0 {
		return nil, errBad("The Worker does not currently support scale out.")
	}
	if *req.ServerNum == 0 {
		return nil, errBad("server_num must be at least 1 to scale out")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.clusterStateLocked(); st != "CLUSTER_READY" {
		return nil, errBad("The cluster is not ready.")
	}
	if n := s.members.ServerNum(); *req.ServerNum > config.MaxServerNum-n {
		return nil, errBad("server_num %d would take the cluster from %d to over %d servers", *req.ServerNum, n, config.MaxServerNum)
	}
	if err := s.members.ScaleOut(*req.ServerNum); err != nil {
		return nil, errBad("%v", err)
	}
	s.log.Info("scale-out requested", zap.Int("add", *req.ServerNum), zap.Int("server_num", s.members.ServerNum()))
	s.broadcastLocked()
	return rest.Message{Code: rest.CodeOK, Message: "Cluster begin to scale out."}, nil
}

// handleScaleOutRollback gives up the part of a scale-out whose servers
// have not registered, e.g. because they failed to start.
func (s *Scheduler) handleScaleOutRollback(ctx *fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped, err := s.members.RollbackScaleOut()
	if err != nil {
		return nil, errBad("%v", err)
	}
	s.log.Info("scale-out rolled back", zap.Int("not_started", dropped), zap.Int("server_num", s.members.ServerNum()))
	s.broadcastLocked()
	return rest.Message{Code: rest.CodeOK, Message: "Cluster scale out rollback success."}, nil
}

func (s *Scheduler) handleScaleIn(ctx *fasthttp.RequestCtx) (any, error) {
	var req rest.ScaleIn
	if err := decodeBody(ctx, &req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Unlike MindSpore, a cluster with a dead server (NODE_TIMEOUT) can
	// scale it, or any other, in: a host that is gone for good must not
	// block every later scaling.
	if st := s.clusterStateLocked(); st != membership.ClusterReady && st != membership.NodeTimeout {
		return nil, errBad("The cluster is not ready.")
	}
	s.log.Info("scale-in requested", zap.Strings("node_ids", req.NodeIDs))
	if err := s.scaleInLocked(req.NodeIDs); err != nil {
		return nil, errBad("%v", err)
	}
	s.broadcastLocked()
	return rest.Message{Code: rest.CodeOK, Message: "Cluster begin to scale in."}, nil
}

func (s *Scheduler) handleNewInstance(ctx *fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.iter.Query() // keys absent from the body keep their values
	if pending, ok := s.iter.Pending(); ok {
		p = pending
	}
	if err := decodeBody(ctx, &p); err != nil {
		return nil, err
	}
	if err := s.iter.NewInstance(s.now(), p); err != nil {
		return nil, errBad("Start new instance failed: %v", err)
	}
	s.log.Info("new instance", zap.Any("params", p))
	s.runActionsLocked()
	return rest.Instance{Code: rest.CodeOK, Message: "Start new instance successful.", Result: true}, nil
}

func (s *Scheduler) handleQueryInstance(*fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return rest.Instance{Code: rest.CodeOK, Message: "Query Instance successful.", Result: s.iter.Query()}, nil
}

func (s *Scheduler) handleEnable(*fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.iter.Status().Instance != iteration.InstanceDisabled {
		return nil, errBad("The cluster state is not CLUSTER_DISABLE_FLS, does not need to enable fls.")
	}
	if err := s.iter.Enable(s.now()); err != nil {
		return nil, errBad("start enabling FL-Server failed: %v", err)
	}
	s.runActionsLocked()
	return rest.Instance{Code: rest.CodeOK, Message: "start enabling FL-Server successful.", Result: true}, nil
}

func (s *Scheduler) handleDisable(*fasthttp.RequestCtx) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.iter.Status().Instance == iteration.InstanceDisabled {
		return nil, errBad("The cluster state is already in CLUSTER_DISABLE_FLS.")
	}
	if err := s.iter.Disable(s.now()); err != nil {
		return nil, errBad("start disabling FL-Server failed: %v", err)
	}
	s.runActionsLocked()
	return rest.Instance{Code: rest.CodeOK, Message: "start disabling FL-Server successful.", Result: true}, nil
}

// handleRecords returns the recent per-iteration records (?n=, default 100).
func (s *Scheduler) handleRecords(ctx *fasthttp.RequestCtx) (any, error) {
	n := 100
	if ctx.QueryArgs().Has("n") {
		v, err := ctx.QueryArgs().GetUint("n")
		if err != nil || v < 1 {
			return nil, errBad("n must be a positive integer, got %q", ctx.QueryArgs().Peek("n"))
		}
		n = v
	}
	return s.records.Last(n), nil
}

func (s *Scheduler) handleMetrics(ctx *fasthttp.RequestCtx) (any, error) {
	s.metrics(ctx)
	return nil, errRaw
}

func (s *Scheduler) handleDashboard(ctx *fasthttp.RequestCtx) (any, error) {
	serveDashboard(ctx)
	return nil, errRaw
}

package device

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"
)

// Instance states a fedcluster server reports in ServerStatus.Instance
// (MindSpore's names for them).
const (
	InstanceRunning  = "running"
	InstanceDisabled = "disable"
	InstanceFinished = "finish"
)

// ServerStatus is what a fedcluster server answers on GET /status. It is
// not part of MindSpore's device protocol: a device uses it only to tell
// apart what the protocol's one refusal, "disabled or finished", leaves
// open.
type ServerStatus struct {
	NodeID    string `json:"node_id"`
	Iteration uint64 `json:"iteration"`
	// Instance is InstanceRunning, InstanceDisabled or InstanceFinished.
	Instance    string `json:"instance"`
	ModelSHA256 string `json:"model_sha256"`
}

// statusLimit bounds the /status answer read: it is a few hundred bytes.
const statusLimit = 64 << 10

// Status asks one server, picked as for the protocol's requests, for its
// GET /status (served outside the URL prefix), in a single attempt of at
// most RequestTimeout. A server that does not serve it (a MindSpore one)
// makes it fail.
func (c *Client) Status(ctx context.Context) (ServerStatus, error) {
	server := c.pick(-1)
	url := c.o.Servers[server] + "/status"
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(fasthttp.MethodGet)
	deadline := time.Now().Add(c.o.RequestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.http.DoDeadline(req, resp, deadline); err != nil {
		c.suspend(server)
		return ServerStatus{}, fmt.Errorf("cannot get %s: %w", url, err)
	}
	body := resp.Body()
	if resp.StatusCode() != fasthttp.StatusOK {
		return ServerStatus{}, fmt.Errorf("%s answered HTTP %d: %q", url, resp.StatusCode(), clip(body))
	}
	if len(body) > statusLimit {
		return ServerStatus{}, fmt.Errorf("%s: %d bytes of status: %w", url, len(body), ErrBadResponse)
	}
	var st ServerStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return ServerStatus{}, fmt.Errorf("%s: %v: %w", url, err, ErrBadResponse)
	}
	switch st.Instance {
	case InstanceRunning, InstanceDisabled, InstanceFinished:
		return st, nil
	}
	return ServerStatus{}, fmt.Errorf("%s: unknown instance state %q: %w", url, st.Instance, ErrBadResponse)
}

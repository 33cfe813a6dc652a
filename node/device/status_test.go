package device

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string // the instance, or "" for an error
		bad    bool   // the error is ErrBadResponse
	}{
		{name: "running", body: `{"node_id":"n0","iteration":12,"instance":"running","model_sha256":"ab"}`, want: InstanceRunning},
		{name: "disabled", body: `{"iteration":12,"instance":"disable"}`, want: InstanceDisabled},
		{name: "finished", body: `{"iteration":31,"instance":"finish"}`, want: InstanceFinished},
		{name: "no such endpoint", status: http.StatusNotFound, body: "404 page not found"},
		{name: "not JSON", body: "The cluster is in safemode.", bad: true},
		{name: "unknown state", body: `{"instance":"paused"}`, bad: true},
		{name: "no state", body: `{"iteration":3}`, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				paths <- r.Method + " " + r.URL.Path
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			o := fastOptions([]string{srv.URL})
			o.URLPrefix = "/fl" // the device routes' prefix, not /status's
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.Status(context.Background())
			if path := <-paths; path != "GET /status" {
				t.Errorf("asked %q", path)
			}
			switch {
			case tc.want != "" && (err != nil || st.Instance != tc.want):
				t.Fatalf("status %+v, %v; want instance %q", st, err, tc.want)
			case tc.want == "" && err == nil:
				t.Fatalf("status %+v, want an error", st)
			case tc.want == "" && errors.Is(err, ErrBadResponse) != tc.bad:
				t.Fatalf("error %v: bad response %v, want %v", err, errors.Is(err, ErrBadResponse), tc.bad)
			}
		})
	}
}

package device

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseServers checks that every list ParseServers accepts expands into
// distinct base URLs that parse back to the host and port they name, and
// that the expansion is a fixed point: parsing its own output gives it again.
func FuzzParseServers(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:6668", "127.0.0.1:6668-6671", "a:1, b:2,,a:1", ":7000",
		"https://h:443/", "http://h:1-2", "[::1]:80", "host", "h:9-8",
		"ftp://h:1", "h/x:80", "h?q:1", "u@h:1", "h#f:1", "h h:1", "[fe80::1%eth0]:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		out, err := ParseServers(spec)
		if err != nil {
			if out != nil {
				t.Fatalf("ParseServers(%q) returned %v with error %v", spec, out, err)
			}
			return
		}
		if len(out) == 0 {
			t.Fatalf("ParseServers(%q) accepted an empty list", spec)
		}
		seen := map[string]bool{}
		for _, s := range out {
			if seen[s] {
				t.Fatalf("ParseServers(%q) repeats %s", spec, s)
			}
			seen[s] = true
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("ParseServers(%q) gave %q, which is not a URL: %v", spec, s, err)
			}
			if u.Scheme != "http" && u.Scheme != "https" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Hostname() == "" {
				t.Fatalf("ParseServers(%q) gave %q, not a scheme, host and port", spec, s)
			}
			if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
				t.Fatalf("ParseServers(%q) gave %q, whose port is not in 1-65535", spec, s)
			}
			if strings.ContainsAny(u.Hostname(), "/?#@ %") {
				t.Fatalf("ParseServers(%q) gave %q, whose host is not a host", spec, s)
			}
		}
		again, err := ParseServers(strings.Join(out, ","))
		if err != nil || !slices.Equal(again, out) {
			t.Fatalf("ParseServers(%q) = %v, but parsing that gives %v, %v", spec, out, again, err)
		}
	})
}

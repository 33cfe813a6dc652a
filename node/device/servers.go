package device

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ParseServers expands a server list into base URLs ("http://host:port").
//
// spec is a comma-separated list of entries, each one of
//
//	host:port            one server
//	host:first-last      a port range, one server per port (127.0.0.1:6668-6671)
//	http://host:port     with an explicit scheme (http or https); ranges work too
//
// A missing host means 127.0.0.1. Duplicates are kept once, in first-seen
// order.
func ParseServers(spec string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, e := range strings.Split(spec, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		scheme := "http://"
		if i := strings.Index(e, "://"); i >= 0 {
			scheme = e[:i+3]
			if scheme != "http://" && scheme != "https://" {
				return nil, fmt.Errorf("cannot parse server %q: scheme must be http or https", e)
			}
			e = strings.TrimSuffix(e[i+3:], "/")
		}
		host, ports, err := net.SplitHostPort(e)
		if err != nil {
			return nil, fmt.Errorf("cannot parse server %q: %w", e, err)
		}
		if host == "" {
			host = "127.0.0.1"
		}
		if !validHost(host) {
			return nil, fmt.Errorf("cannot parse server %q: %q is not an IP address or host name", e, host)
		}
		lo, hi, err := parsePortRange(ports)
		if err != nil {
			return nil, fmt.Errorf("cannot parse server %q: %w", e, err)
		}
		for p := lo; p <= hi; p++ {
			u := scheme + net.JoinHostPort(host, strconv.Itoa(p))
			if !seen[u] {
				seen[u] = true
				out = append(out, u)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cannot parse servers %q: no server given", spec)
	}
	return out, nil
}

// validHost accepts an IP address (without an IPv6 zone, which a URL
// cannot carry unescaped) or a DNS name: letters, digits, '-', '_' and '.'.
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, r := range h {
		if !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// maxRangeServers bounds a port range so that a typo cannot make a million
// servers.
const maxRangeServers = 4096

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(a); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	if hi, err = parsePort(b); err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("port range %d-%d is reversed", lo, hi)
	}
	if hi-lo+1 > maxRangeServers {
		return 0, 0, fmt.Errorf("port range %d-%d has more than %d ports", lo, hi, maxRangeServers)
	}
	return lo, hi, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not in 1-65535", s)
	}
	return p, nil
}

package server

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// checkTimestamp verifies a request's timestamp (epoch milliseconds as text)
// against the server's clock, as the seed says servers do. It returns the
// reason for a refusal, or "" to accept. Non-numeric stamps (r1.5 sends
// dates such as 2020/11/16/19/18) would bypass the check, so they are
// refused unless legacy timestamps are accepted.
func checkTimestamp(ts []byte, now time.Time, maxDiff time.Duration, acceptLegacy bool) string {
	ms, err := strconv.ParseInt(string(ts), 10, 64)
	if err != nil {
		if acceptLegacy {
			return ""
		}
		if len(ts) == 0 {
			return "The request carries no timestamp; send epoch milliseconds (or set legacy_timestamps = \"accept\")."
		}
		return fmt.Sprintf("The request timestamp %q is not epoch milliseconds; send epoch milliseconds (or set legacy_timestamps = \"accept\").", truncate(ts, 32))
	}
	// In milliseconds: a time.Duration overflows for stamps centuries away.
	n, max := now.UnixMilli(), maxDiff.Milliseconds()
	if ms > n+max || ms < n-max {
		diff := n - ms
		if diff < 0 {
			diff = -diff
		}
		if diff < 0 { // -MinInt64
			diff = math.MaxInt64
		}
		return fmt.Sprintf("The request timestamp %d differs from the server's clock by %d ms, more than replay_attack_time_diff (%d ms).", ms, diff, max)
	}
	return ""
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

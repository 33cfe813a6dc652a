# Sourced by the scripts that time fedcluster beside its peers in the same
# run (fedavg-peers.sh, cycle-peers.sh).

# peer_python NAME MODULES PACKAGES prints a Python that imports MODULES
# (comma-separated): $PYTHON or python3, else Debian's /usr/bin/python3,
# whose packages PERF.md's peers ran on; it fails naming the packages.
peer_python() {
	local py
	for py in "${PYTHON:-python3}" /usr/bin/python3; do
		if "$py" -c "import $2" 2>/dev/null; then
			echo "$py"
			return
		fi
	done
	echo "$1: apt-get install $3 (or set PYTHON)" >&2
	return 1
}

# median_awk is an awk function median(k): the median of the values
# v[k, 1..n[k]].
median_awk='
	function median(k,   i, j, a, m, x) {
		m = n[k]
		for (i = 1; i <= m; i++) a[i] = v[k, i]
		for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}'

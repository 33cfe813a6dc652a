# Sourced (bash) by run_sched.sh, run_server.sh and finish.sh.
#
# fedcluster_bin: the binary, first found of $FEDCLUSTER_BIN, bin/fedcluster
# of the repository this script lives in, `fedcluster` on PATH.
#
# filter_seed_args ARG...: fills the array FC_ARGS with the arguments to pass
# on. The seed's scripts (run_mobile_sched.py, run_mobile_server.py) also take
# flags that select MindSpore's process body and mean nothing to fedcluster:
# --device_target (fedcluster's engine is --engine), --ms_role (the script is
# the role), --enable_fl, --worker_num=0, and the TLS switches when off. They
# are dropped with a note on stderr; a value that would change behaviour
# (workers, TLS on) is refused. Every other flag is passed through unchanged,
# so fedcluster rejects what it does not know instead of ignoring it.

fedcluster_bin() {
	if [[ -n "${FEDCLUSTER_BIN:-}" ]]; then
		if [[ ! -x "$FEDCLUSTER_BIN" || -d "$FEDCLUSTER_BIN" ]]; then
			echo "$(basename "$0"): FEDCLUSTER_BIN=$FEDCLUSTER_BIN is not an executable file" >&2
			return 1
		fi
		printf '%s\n' "$FEDCLUSTER_BIN"
		return 0
	fi
	local here
	here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
	if [[ -x "$here/../bin/fedcluster" ]]; then
		printf '%s\n' "$(cd -- "$here/.." && pwd)/bin/fedcluster"
		return 0
	fi
	if command -v fedcluster >/dev/null 2>&1; then
		command -v fedcluster
		return 0
	fi
	echo "$(basename "$0"): cannot find the fedcluster binary: set FEDCLUSTER_BIN, run 'make build' (bin/fedcluster) or put fedcluster on PATH" >&2
	return 1
}

filter_seed_args() {
	FC_ARGS=()
	local a me
	me=$(basename "$0")
	for a in "$@"; do
		case "$a" in
		--device_target=* | --ms_role=* | --enable_fl | --enable_fl=*)
			echo "$me: note: ignoring MindSpore-only flag $a" >&2
			continue ;;
		--worker_num=0)
			echo "$me: note: ignoring $a (fedcluster has no workers)" >&2
			continue ;;
		--worker_num=*)
			echo "$me: $a: fedcluster has no workers (HYBRID_TRAINING is not supported)" >&2
			return 2 ;;
		--enable_ssl=False | --enable_ssl=false | --enable_ssl=0 | --client_password= | --server_password=)
			echo "$me: note: ignoring $a" >&2
			continue ;;
		--enable_ssl | --enable_ssl=* | --client_password=* | --server_password=*)
			echo "$me: ${a%%=*}: TLS is not supported; put a TLS proxy in front of the servers" >&2
			return 2 ;;
		esac
		FC_ARGS+=("$a")
	done
}

#!/usr/bin/env bash
# test-compose.sh: the compose cluster for real. Builds fedcluster:cpu
# (skip with FC_SKIP_BUILD=1), brings deploy/compose.yaml up under a private
# project name with short heartbeats, waits for CLUSTER_READY through the
# scheduler's REST API (published on 127.0.0.1 only), `docker kill`s one
# server container, checks /nodes shows it "alive":"false" after the
# heartbeat timeout, starts the same container again, checks it is alive
# with the same rank (in /nodes and in its own GET /status), then
# `compose down`. Every wait is bounded; the cluster is torn down on any exit.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

if docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
	compose=(docker-compose)
else
	echo "test-compose.sh: neither 'docker compose' nor docker-compose is installed" >&2
	exit 1
fi
project=fctest$$
dc() { "${compose[@]}" -p "$project" -f deploy/compose.yaml "$@"; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
export FC_MANAGE_PORT=$(free_port) FC_DEVICE_PORT0=$(free_port) FC_DEVICE_PORT1=$(free_port) FC_DEVICE_PORT2=$(free_port)
export FC_HEARTBEAT_INTERVAL=200ms FC_HEARTBEAT_TIMEOUT=2s
api=http://127.0.0.1:$FC_MANAGE_PORT
victim=server1 victim_id=1 victim_port=$FC_DEVICE_PORT1

status=1
cleanup() {
	if [[ $status -ne 0 ]]; then
		log "FAILED; last logs:"
		dc logs --no-color --tail=15 2>&1 || true
	fi
	log "compose down"
	dc down --remove-orphans --timeout 10 2>&1 | sed 's/^/  /' || true
	exit $status
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [[ ${FC_SKIP_BUILD:-0} != 1 ]]; then
	log "building fedcluster:cpu"
	deploy/docker-build.sh >/dev/null
fi

# node_field NODE_ID FIELD: the field ("alive", "rankId") of a node in /nodes.
node_field() {
	curl -s --max-time 2 "$api/nodes" |
		grep -o "{[^{}]*\"nodeId\":\"$1\"[^{}]*}" | grep -o "\"$2\":\"[^\"]*\"" | cut -d'"' -f4
}
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
	local limit=$1 what=$2 start=$SECONDS
	shift 2
	until "$@"; do
		if ((SECONDS - start >= limit)); then
			log "timed out after ${limit}s waiting for $what"
			return 1
		fi
		sleep 0.2
	done
	log "ok: $what (after $((SECONDS - start))s)"
}
cluster_ready() {
	curl -s --max-time 2 "$api/state" | grep -q '"cluster_state":"CLUSTER_READY"' &&
		[[ $(curl -s --max-time 2 "$api/nodes" | grep -o '"alive":"true"[^{}]*"role":"SERVER"' | wc -l) -eq 3 ]]
}
victim_alive() { [[ $(node_field $victim_id alive) == "$1" ]]; }

log "compose up (project $project, manage API $api)"
dc up -d 2>&1 | sed 's/^/  /'
wait_for 60 "CLUSTER_READY with 3 alive servers" cluster_ready
curl -s "$api/nodes"; echo
rank=$(node_field $victim_id rankId)
log "$victim (node id $victim_id) has rank $rank; its /status: $(curl -s --max-time 2 http://127.0.0.1:$victim_port/status)"

cid=$(dc ps -q $victim)
log "docker kill $victim ($cid)"
docker kill "$cid" >/dev/null
killed_at=$SECONDS
wait_for 30 "$victim shown \"alive\":\"false\"" victim_alive false
log "dead after $((SECONDS - killed_at))s (heartbeat_timeout $FC_HEARTBEAT_TIMEOUT)"
curl -s "$api/nodes"; echo
curl -s "$api/state"; echo

log "docker start $victim"
docker start "$cid" >/dev/null
wait_for 30 "$victim alive again" victim_alive true
wait_for 30 "CLUSTER_READY again" cluster_ready
curl -s "$api/nodes"; echo
newrank=$(node_field $victim_id rankId)
st=$(curl -s --max-time 2 http://127.0.0.1:$victim_port/status)
log "$victim /status after restart: $st"
if [[ $newrank != "$rank" ]]; then
	log "rank changed: $rank -> $newrank"
	exit 1
fi
if ! grep -q "\"rank\":$rank[,}]" <<<"$st"; then
	log "its own /status does not report rank $rank"
	exit 1
fi
log "addresses the servers registered (container addresses, not 0.0.0.0):"
dc logs --no-color scheduler 2>&1 | grep -o 'server registered.*' | sed 's/^/  /' || true
log "PASS: $victim rejoined with rank $rank"
status=0

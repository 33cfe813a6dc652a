#!/usr/bin/env bash
# test-scripts.sh: starts a scheduler and 4 servers on free high ports with
# run_sched.sh / run_server.sh (3 servers, then one with the seed's
# --node_id=scale_node), checks /nodes lists 4 alive servers and /state says
# CLUSTER_READY, stops everything with finish.sh and checks nothing is left.
# Uses FEDCLUSTER_BIN, else bin/fedcluster (run make build first).
set -u
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
[ -n "${FEDCLUSTER_BIN:-}" ] || export FEDCLUSTER_BIN=$repo/bin/fedcluster
export FEDCLUSTER_RUN_DIR=$(mktemp -d)
work=$(mktemp -d); cd "$work"
cp $repo/deploy/config.json .
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SP=$(free_port); MP=$(free_port); FP=$((40000 + RANDOM % 20000))
echo "scheduler_port=$SP manage=$MP fl_server_port=$FP..$((FP+3)) cwd=$work"
$repo/deploy/run_sched.sh --scheduler_ip=127.0.0.1 --scheduler_port=$SP --fl_server_port=$FP --server_num=4 --scheduler_manage_port=$MP --config_file_path=$PWD/config.json --device_target=CPU --heartbeat_interval=200ms --heartbeat_timeout=2s
$repo/deploy/run_server.sh --scheduler_ip=127.0.0.1 --scheduler_port=$SP --fl_server_port=$FP --server_num=4 --start_fl_job_threshold=8 --local_server_num=3 --config_file_path=$PWD/config.json --heartbeat_interval=200ms --heartbeat_timeout=2s
$repo/deploy/run_server.sh --node_id=scale_node --scheduler_ip=127.0.0.1 --scheduler_port=$SP --fl_server_port=$((FP+3)) --server_num=4 --start_fl_job_threshold=8 --local_server_num=1 --config_file_path=$PWD/config.json --heartbeat_interval=200ms --heartbeat_timeout=2s
ok=0
for i in $(seq 1 100); do
  n=$(curl -s --max-time 2 http://127.0.0.1:$MP/nodes | grep -o '"alive":"true","nodeId":"[^"]*","rankId":"[^"]*","role":"SERVER"' | wc -l)
  st=$(curl -s --max-time 2 http://127.0.0.1:$MP/state)
  if [ "$n" = 4 ] && grep -q CLUSTER_READY <<<"$st"; then ok=1; break; fi
  sleep 0.1
done
curl -s http://127.0.0.1:$MP/nodes; echo
curl -s http://127.0.0.1:$MP/state | head -c 400; echo
grep -h "Server started successfully" server_*/server.log | head -4 | cut -c1-160
ls
echo "alive servers: $n ready=$ok"
$repo/deploy/finish.sh --scheduler_port=$SP
sleep 0.5
left=$(pgrep -f "scheduler_port=$SP" || true)
echo "left after finish: '${left}'"
ls "$FEDCLUSTER_RUN_DIR"/* 2>/dev/null
rc=0; [ $ok = 1 ] && [ -z "$left" ] || rc=1
rm -rf "$work" "$FEDCLUSTER_RUN_DIR"
echo "RESULT rc=$rc"; exit $rc

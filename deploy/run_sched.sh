#!/usr/bin/env bash
# run_sched.sh: the seed's run_mobile_sched.py for fedcluster. Starts the
# scheduler in the background (log in ./scheduler/) and returns once it
# listens. Takes the seed's flags unchanged, e.g.
#
#   deploy/run_sched.sh --scheduler_ip=192.168.216.124 --scheduler_port=6667 \
#     --fl_server_port=6668 --server_num=4 --scheduler_manage_port=11202 \
#     --config_file_path=$PWD/config.json
#
# The node id is --node_id, else MS_NODE_ID, else "20" as in the seed.
# Every fedcluster flag works too: `fedcluster launch scheduler --help`.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"
bin=$(fedcluster_bin)
filter_seed_args "$@"
exec "$bin" launch scheduler "${FC_ARGS[@]}"

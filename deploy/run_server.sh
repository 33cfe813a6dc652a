#!/usr/bin/env bash
# run_server.sh: the seed's run_mobile_server.py for fedcluster. Starts
# --local_server_num servers (default: --server_num) in the background on
# ports --fl_server_port, +1, ..., each logging into ./server_<node_id>/, and
# returns once they listen. Takes the seed's flags unchanged, e.g.
#
#   deploy/run_server.sh --scheduler_ip=192.168.216.124 --scheduler_port=6667 \
#     --fl_server_port=6668 --server_num=4 --start_fl_job_threshold=8 \
#     --local_server_num=3 --config_file_path=$PWD/config.json
#
# Node ids are 0..local_server_num-1, or with --node_id=scale_node (the
# seed's scale-out command) scale_node_0, scale_node_1, ... (just scale_node
# when one server is started). Every fedcluster flag works too:
# `fedcluster launch server --help`.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"
bin=$(fedcluster_bin)
filter_seed_args "$@"
exec "$bin" launch server "${FC_ARGS[@]}"

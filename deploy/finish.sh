#!/usr/bin/env bash
# finish.sh: the seed's finish_mobile.py for fedcluster. Stops every process
# of the cluster whose scheduler port is --scheduler_port on this host
# (SIGTERM, then SIGKILL after a grace period), printing "killed <pid>" per
# process and "The services are stopped successfully.":
#
#   deploy/finish.sh --scheduler_port=6667
#
# Processes are found in fedcluster's process registry (FEDCLUSTER_RUN_DIR,
# default $TMPDIR/fedcluster-<uid>), not by grepping command lines, so run it
# as the user, and with the FEDCLUSTER_RUN_DIR, that started the cluster.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"
bin=$(fedcluster_bin)
exec "$bin" stop "$@"

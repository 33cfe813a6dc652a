"""FedAvg of 100 updates of 1M float32 by the peers of PERF.md, timed here.

PERF.md states issue 4's FedAvg goal against Flower's aggregate and numpy's
best hand-written average "on the same machine"; this script measures both
on the machine at hand, so scripts/fedavg-peers.sh can put them beside
fedcluster's BenchmarkFedAvg100x1M in the same run. It needs Debian's
python3-numpy (1.24 on bookworm, PERF.md's version). Flower itself is not
packaged for Debian: flower_aggregate is the code path of Flower 1.6's
flwr.server.strategy.aggregate.aggregate, one layer per client.

Output: one line per variant, "peer <name> <best ms> <max relative error>".
"""

import sys
import time
from functools import reduce

import numpy as np

K, N = 100, 1 << 20
TILE = 1 << 16  # the fastest of 32Ki-256Ki elements on the development VMs

rng = np.random.default_rng(1)
xs = [rng.standard_normal(N, dtype=np.float32) for _ in range(K)]
ws = [float(v) for v in rng.integers(1, 1000, K)]
total = sum(ws)


def flower_aggregate():
    results = [([x], w) for x, w in zip(xs, ws)]
    num_examples_total = sum(n for _, n in results)
    weighted = [[layer * n for layer in weights] for weights, n in results]
    return [reduce(np.add, layers) / num_examples_total for layers in zip(*weighted)][0]


def numpy_loop():
    acc = np.zeros(N, np.float64)
    for x, w in zip(xs, ws):
        acc += x * w
    return acc / total


def numpy_inplace():
    acc, tmp = np.zeros(N, np.float32), np.empty(N, np.float32)
    for x, w in zip(xs, ws):
        np.multiply(x, w, out=tmp)
        acc += tmp
    acc /= total
    return acc


def numpy_tiled():
    # Every update's tile folded while the accumulator's tile is in cache.
    acc, tmp = np.zeros(N, np.float32), np.empty(TILE, np.float32)
    for lo in range(0, N, TILE):
        a = acc[lo:lo + TILE]
        for x, w in zip(xs, ws):
            np.multiply(x[lo:lo + TILE], w, out=tmp)
            a += tmp
    acc /= total
    return acc


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ref = numpy_loop()
    scale = float(np.max(np.abs(ref)))
    for f in (flower_aggregate, numpy_loop, numpy_inplace, numpy_tiled):
        err = float(np.max(np.abs(f() - ref))) / scale
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
        print(f"peer {f.__name__} {best * 1e3:.1f} {err:.1e}", flush=True)


if __name__ == "__main__":
    main()

"""evsim alone: samples/s of shipped models at 1 and 2 threads (no PyTorch, a few seconds).

    python bench/throughput.py [--model-dir models/fmnist-resnet8-ternary ...] [--batch 64] [--reps 9]

For quick comparisons the full benchmark (``bench/run.py``) is too slow for,
e.g. the same engine compiled for another CPU: Numba generates code for the
CPU named by ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` (give it its own
``NUMBA_CACHE_DIR``). Each model's eight shipped test images, repeated to one
batch; median over the repetitions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from evsim import compile_network, read_network, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", action="append", type=Path,
                    help="shipped model directory (repeatable; default: the two shipped ResNet-8 models)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    dirs = a.model_dir or [ROOT / "models/fmnist-resnet8-ternary", ROOT / "models/fmnist-resnet8-ternary-sparse"]
    if a.batch < 1 or a.reps < 1:
        ap.error("--batch and --reps must be at least 1")
    threads = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    from numba.core import config
    print(f"target CPU: {config.CPU_NAME or 'host'} {config.CPU_FEATURES or ''}".rstrip())
    for d in dirs:
        h5, xs = d / "folded.h5", d / "samples" / "batch8.npy"
        if not (h5.is_file() and xs.is_file()):
            print(f"throughput.py: error: {d}: needs folded.h5 and samples/batch8.npy", file=sys.stderr)
            return 1
        net = compile_network(read_network(h5), dtype="float32")
        x8 = np.load(xs)
        x = np.concatenate([x8] * -(-a.batch // len(x8)))[:a.batch]
        for th in threads:
            numba.set_num_threads(th)
            simulate(net, x)
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                simulate(net, x)
                ts.append(time.perf_counter() - t0)
            print(f"{d.name}: {th} thread(s), batch {a.batch}: {a.batch / np.median(ts):.0f} samples/s "
                  f"[{a.batch / max(ts):.0f}-{a.batch / min(ts):.0f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

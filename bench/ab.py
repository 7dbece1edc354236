"""Before/after in one run: evsim at two commits, each in processes of its own, interleaved.

    python bench/ab.py --base f981b1f [--head HEAD] [--rounds 3] [--out ab.json]

Checks out ``--base`` (and ``--head`` unless it is the working tree) into temporary git worktrees,
then, for each source tree in turn and ``--rounds`` times over, starts a fresh Python that imports
evsim from that tree only and runs the three shipped models on their samples and on the first 256
Fashion-MNIST test images (float32, batches of 64, threads as the process gets them):

* a digest (SHA-256) of every output, counter and recorded spike of each model's 8 shipped samples
  in float64 and float32: equal digests mean bit-for-bit the same behaviour;
* throughput: samples/s, median of 5 timed runs after a warm-up, per round; the report gives the
  median over rounds of each side and the ratio head/base.

Interleaving the rounds spreads slow phases of a shared machine over both sides. Numba compiles
each tree's kernels into a cache of its own (evsim.jitcache keys it on the sources), so the first
round is preceded by one warm-up process per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["fmnist-resnet8-ternary", "fmnist-resnet8-ternary-e4", "fmnist-resnet8-ternary-sparse"]

CHILD = r'''
import gzip, hashlib, json, sys, time
import numpy as np
tree, root, what = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, tree)
import evsim
from evsim import compile_network, run
from evsim.format import read_network
assert evsim.__file__.startswith(tree), evsim.__file__
models = json.loads(sys.argv[4])
out = {}
if what == "digest":
    for m in models:
        g = read_network(f"{root}/models/{m}/folded.h5")
        x = np.load(f"{root}/models/{m}/samples/batch8.npy")
        for dt in ("float64", "float32"):
            r = run(compile_network(g, dtype=dt), x, batch_size=8, record=True)
            h = hashlib.sha256(np.ascontiguousarray(r.outputs).tobytes())
            c = r.counters
            for d in (c.spikes_pos, c.spikes_neg, c.events_in, c.synaptic_ops, c.macs, c.macs_nonzero):
                for k in sorted(d):
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(d[k]).tobytes())
            for k in sorted(r.spikes):
                h.update(np.ascontiguousarray(r.spikes[k]).tobytes())
            out[f"{m}/{dt}"] = h.hexdigest()[:16]
else:
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
    x = (np.frombuffer(raw, np.uint8, offset=16)[:256 * 784].reshape(256, 1, 28, 28) / 255.0).astype(np.float32)
    for m in models:
        net = compile_network(read_network(f"{root}/models/{m}/folded.h5"), dtype="float32")
        run(net, x[:64], batch_size=64)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            run(net, x, batch_size=64)
            ts.append(time.perf_counter() - t0)
        out[m] = len(x) / float(np.median(ts))
print(json.dumps(out))
'''


def _child(tree: str, what: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVSIM_")}
    r = subprocess.run([sys.executable, "-c", CHILD, tree, str(ROOT), what, json.dumps(MODELS)],
                       capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _worktree(rev: str, tmp: Path) -> str:
    path = tmp / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="commit to compare against")
    ap.add_argument("--head", default=None, help="commit to test (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": _worktree(a.base, Path(tmp))}
        trees["head"] = _worktree(a.head, Path(tmp)) if a.head else str(ROOT)
        try:
            digests = {side: _child(t, "digest") for side, t in trees.items()}     # also compiles each tree
            speeds = {side: [] for side in trees}
            for i in range(a.rounds):
                for side, t in trees.items():
                    speeds[side].append(_child(t, "speed"))
        finally:
            for side, t in trees.items():
                if t != str(ROOT):
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", t], check=False)
    import numpy as np
    med = {side: {m: float(np.median([r[m] for r in rows])) for m in MODELS} for side, rows in speeds.items()}
    doc = {"base": a.base, "head": a.head or "working tree", "rounds": a.rounds,
           "bit_for_bit": {k: digests["base"][k] == digests["head"][k] for k in digests["base"]},
           "samples_per_s": med, "per_round": speeds,
           "ratio_head_over_base": {m: med["head"][m] / med["base"][m] for m in MODELS}}
    try:
        doc["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        doc["cpu"] = "-"
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return 0 if all(doc["bit_for_bit"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

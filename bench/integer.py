"""The integer engine against float32, side by side in one run: samples/s of the shipped models.

    python bench/integer.py [--rounds 3] [--reps 7] [--batch 64] [--threads 1 2] [--processes 1]
                            [--out bench/INTEGER.json]

For each shipped model (``models/*/folded.h5``) and thread count, in interleaved rounds:

* ``float32``: the folded network as shipped;
* ``int32``: ``evsim quantize --weight-bits 8`` (16-bit membranes) run in int32, as ``evsim run`` runs it:
  int32 membranes, and, where a step's synaptic input fits 16 bits (it does for all three models),
  int16 weights and synaptic sums (32 lanes per AVX-512 vector; docs/FIXED_POINT.md);
* ``int32-wide``: the same network all in int32 (``compile_network(..., narrow_synaptic=False)``);
* ``int16``: ``--weight-bits 8 --membrane-bits 12``, whose accumulators, membranes included, fit 16
  bits; where a model's do not, the row says so.

All are the same engine and driver (only the arithmetic differs), so they run in one process,
compiled before any timing; each measurement is the median of ``--reps`` runs of one batch of real
test images (the first ``--batch`` of Fashion-MNIST's test split). Within a round the arithmetics of
a model run call by call in turn (the order rotating), so a slow spell of a shared machine falls on
all of them alike; the report gives the median over rounds and the ratio to float32 of the same
round, and the JSON the machine's load average after each round. ``--processes K`` repeats all of it
in K fresh processes and takes the ratios over every round of every process, with each process's own
ratio beside them: how fast a compiled kernel runs has differed from one process to the next here
(bench/INTEGER.md). The quantised networks fire slightly differently from the float one (their rates
and synaptic operations are recorded beside the speed), so the ratio is of whole runs, not of kernels.
Writes a JSON file and prints a Markdown table (bench/INTEGER.md holds the last committed run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine_info  # noqa: E402

from evsim import compile_network, read_network, simulate  # noqa: E402
from evsim.datasets import load_fashion_mnist  # noqa: E402
from evsim.errors import EvsimError  # noqa: E402
from evsim.fixedpoint import quantize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["fmnist-resnet8-ternary", "fmnist-resnet8-ternary-e4", "fmnist-resnet8-ternary-sparse"]
# name: (quantiser settings or None for the float network, engine dtype, compile_network options)
CONFIGS = {"float32": (None, "float32", {}),
           "int32": (dict(weight_bits=8, membrane_bits=16), "int32", {}),
           "int32-wide": (dict(weight_bits=8, membrane_bits=16), "int32", {"narrow_synaptic": False}),
           "int16": (dict(weight_bits=8, membrane_bits=12), "int16", {})}


def build(model: str) -> dict:
    """The compiled networks of one model, or the reason one cannot be built."""
    net = read_network(ROOT / "models" / model / "folded.h5")
    out = {}
    for name, (q, dtype, opts) in CONFIGS.items():
        try:
            g = net if q is None else quantize(net, **q)
            out[name] = compile_network(g, dtype=dtype, **opts)
        except EvsimError as e:
            out[name] = str(e)
    return out


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--processes", type=int, default=1,
                    help="fresh Python processes, each running all rounds; the ratios are taken over every "
                         "round of every process (how fast compiled code runs can differ from one process to "
                         "the next)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if min(a.rounds, a.reps, a.batch, a.processes) < 1 or min(a.threads) < 1:
        ap.error("--rounds, --reps, --batch, --processes and --threads must be at least 1")
    return a


def measure(a) -> dict:
    """All rounds in this process: the document :func:`report` prints."""
    x = load_fashion_mnist("test")[0][:a.batch]
    nets = {m: build(m) for m in MODELS}
    activity = {}
    for m, cs in nets.items():          # compile and warm every configuration before any timing
        for name, c in cs.items():
            if isinstance(c, str):
                continue
            r = simulate(c, x)
            c_ = r.counters
            activity[f"{m}/{name}"] = {
                "synaptic_ops": int(sum(v.sum() for v in c_.synaptic_ops.values())) / len(x),
                "spikes": int(sum(v.sum() for v in c_.spikes_pos.values()) + sum(v.sum() for v in c_.spikes_neg.values()))
                / len(x)}
    rows: dict[str, list] = {}
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    for r in range(a.rounds):
        for th in a.threads:
            for m, cs in nets.items():
                runs = [(name, c) for name, c in cs.items() if not isinstance(c, str)]
                ts = {name: [] for name, _ in runs}
                # the arithmetics call by call, in turn (the order rotating): on a shared machine a slow
                # spell then falls on all of them alike instead of on whichever ran its repetitions then
                for k in range(a.reps):
                    shift = (k + r) % len(runs)
                    for name, c in runs[shift:] + runs[:shift]:
                        t0 = time.perf_counter()
                        simulate(c, x, threads=th)
                        ts[name].append(time.perf_counter() - t0)
                for name, t in ts.items():
                    rows.setdefault(f"{m}/{th}/{name}", []).append(len(x) / float(np.median(t)))
        if load:
            load.append(os.getloadavg()[0])
    results = []
    for m, cs in nets.items():
        for th in a.threads:
            for name, c in cs.items():
                if isinstance(c, str):
                    results.append({"model": m, "threads": th, "arithmetic": name, "refused": c})
                    continue
                results.append({"model": m, "threads": th, "arithmetic": name, "per_round": rows[f"{m}/{th}/{name}"],
                                "base_per_round": rows[f"{m}/{th}/float32"], **activity[f"{m}/{name}"]})
    # where the time goes (the first model, 1 thread): the driver's own profile, summed by kind of step
    parts = {}
    for name, c in nets[MODELS[0]].items():
        if isinstance(c, str):
            continue
        runs = []
        for _ in range(a.reps):
            tot: dict[str, float] = {}
            prof = simulate(c, x, profile=True, threads=1).profile
            for _, what, t in prof.parts:
                key = what.split(" (")[0] if what.startswith(("dense", "biases")) else what.split()[0]
                tot[key] = tot.get(key, 0.0) + t
            tot["total"] = prof.total_s
            runs.append(tot)
        parts[name] = {k: float(np.median([r[k] for r in runs])) * 1e3 / len(x) for k in runs[0]}
    return summarize({"machine": machine_info(), "batch": a.batch, "reps": a.reps, "rounds": a.rounds,
                      "processes": 1,
                      "load_average_1min": load,   # at the start and after each round: other work on the machine
                      "configs": {k: v for k, v in CONFIGS.items()}, "results": results,
                      "profile_ms_per_sample": parts})


def summarize(doc: dict, per_process: list[dict] | None = None) -> dict:
    """Fill each result's median samples/s and its ratio to float32: the median over rounds of the round's
    ratio (the two measured side by side in that round); with ``per_process``, each process's own ratio
    too (the spread that placement of compiled code and memory gives)."""
    for k, r in enumerate(doc["results"]):
        if "refused" in r:
            continue
        r["samples_per_s"] = float(np.median(r["per_round"]))
        r["ratio_to_float32"] = float(np.median([v / b for v, b in zip(r["per_round"], r["base_per_round"])]))
        if per_process is not None:
            r["ratio_per_process"] = [p["results"][k]["ratio_to_float32"] for p in per_process]
    return doc


def merge(docs: list[dict]) -> dict:
    """One document from the runs of several processes (each a :func:`measure` document of the same
    configuration): every round of every process, in order; the profile and machine of the first."""
    out = json.loads(json.dumps(docs[0]))
    for k, r in enumerate(out["results"]):
        if "refused" in r:
            continue
        for key in ("per_round", "base_per_round"):
            r[key] = [v for d in docs for v in d["results"][k][key]]
    out["processes"] = len(docs)
    out["load_average_1min"] = [v for d in docs for v in d["load_average_1min"]]
    return summarize(out, docs)


def report(doc: dict) -> None:
    load = doc["load_average_1min"]
    print(f"CPU: {doc['machine']['cpu_model']} ({doc['machine']['microarchitecture']}), {doc['machine']['simd']}")
    print(f"batch {doc['batch']} real test images, median of {doc['reps']} runs per round (the arithmetics call by "
          f"call in turn), {doc['rounds']} rounds in each of {doc['processes']} fresh process(es)"
          + (f"; 1-min load average {min(load):.1f}-{max(load):.1f}" if load else "") + "\n")
    print("| model | threads | arithmetic | samples/s | ratio to float32 (median of rounds) | per process | "
          "AC per sample |")
    print("|---|---|---|---|---|---|---|")
    for r in doc["results"]:
        if "refused" in r:
            print(f"| {r['model']} | {r['threads']} | {r['arithmetic']} | - | refused: {r['refused']} | - | - |")
            continue
        pp = r.get("ratio_per_process")
        spread = f"{min(pp):.2f}-{max(pp):.2f}x" if pp else "-"
        print(f"| {r['model']} | {r['threads']} | {r['arithmetic']} | {r['samples_per_s']:.0f} | "
              f"{r['ratio_to_float32']:.2f}x | {spread} | {r['synaptic_ops'] / 1e6:.2f} M |")
    parts = doc["profile_ms_per_sample"]
    kinds = list(next(iter(parts.values())))
    print(f"\nwhere the time goes, {MODELS[0]}, 1 thread (`simulate(..., profile=True)`, the first process), "
          f"ms per sample:\n")
    print("| arithmetic | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, p in parts.items():
        print(f"| {name} | " + " | ".join(f"{p.get(k, 0.0):.3f}" for k in kinds) + " |")


def main(argv=None) -> int:
    a = _parse(argv)
    if a.processes == 1:
        doc = measure(a)
    else:
        docs = []
        with tempfile.TemporaryDirectory() as tmp:
            for p in range(a.processes):
                out = Path(tmp) / f"process{p}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--rounds", str(a.rounds), "--reps", str(a.reps),
                       "--batch", str(a.batch), "--threads", *map(str, a.threads), "--out", str(out)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                docs.append(json.loads(out.read_text()))
        doc = merge(docs)
    if a.out:
        a.out.write_text(json.dumps(doc, indent=2) + "\n")
    report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

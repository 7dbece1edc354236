"""evsim eval on Dask: the full Fashion-MNIST test set on 1 and 2 worker processes (one engine thread each).

    python bench/distributed_eval.py [--model models/fmnist-resnet8-ternary/folded.h5] [--chunk-size 250]
                                [--rounds 3] [--limit N] [--out bench/DISTRIBUTED.md]

Measures, on this machine, each run's wall time (cluster start-up apart), and writes the figures to
OUT (Markdown) and OUT with a .json suffix:

* in-process, one engine thread (the baseline: the same chunks, no Dask);
* a LocalCluster of 1 worker process, then of 2, one engine thread each: the speed-up 1 -> 2;
* per-chunk overhead of Dask: (1 worker - in-process) / chunks, at the default chunk size and at a small one.

Every run is repeated ``--rounds`` times in rounds, the order of the runs rotating from round to round (a slow
spell of a shared machine falls on all of them alike); the report gives medians, and the speed-up is the median of
the rounds' own ratios. Every run's predictions and totals are checked to be identical (bit for bit) to the in-process run.
The machine's load (/proc/loadavg) is recorded before and after: on a shared machine the figures are
only indicative. This script is separate from bench/run.py and writes nothing else. (It is not named distributed.py:
tests put bench/ on the import path, where that name would shadow the `distributed` package.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parent.parent


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def timed_eval(label, network, data, *, workers=None, chunk_size, threads=1, limit=None):
    from evsim.distributed import evaluate, runner
    t0 = time.perf_counter()
    with runner(workers=workers, threads=threads) as run:
        t_start = time.perf_counter() - t0
        # warm the workers: each compiles the network once (and loads Numba's cache) before the clock starts
        evaluate(network, data, runner_=run, chunk_size=chunk_size, limit=min(chunk_size, 64), progress=False)
        if hasattr(run, "client"):        # every worker, not only those the warm-up chunk ran on
            from evsim.distributed import network_key, run_chunk
            run.client.run(run_chunk, network_key(network), (), "float32", "kernel", threads, 1, data.read(0, 1))
        t1 = time.perf_counter()
        r = evaluate(network, data, runner_=run, chunk_size=chunk_size, limit=limit, progress=False)
        wall = time.perf_counter() - t1
    row = {"run": label, "workers": workers or 0, "threads_per_worker": threads, "chunk_size": chunk_size,
           "chunks": r.chunks, "samples": r.samples, "startup_s": round(t_start, 3), "wall_s": round(wall, 3),
           "samples_per_s": round(r.samples / wall, 1), "accuracy": r.accuracy, "load_after": loadavg()}
    print(f"{label}: {wall:.2f} s, {r.samples / wall:.1f} samples/s (start-up {t_start:.1f} s), "
          f"accuracy {100 * r.accuracy:.2f} %; load {row['load_after']}", file=sys.stderr)
    return row, r


def resnet19_line() -> list[str]:
    """A pointer to the ResNet-19 scale estimate (bench/resnet19_scale.py), with its totals when it has been run."""
    try:
        doc = json.loads((ROOT / "bench/RESNET19_SCALE.json").read_text())
        est = ", ".join(f"{r['nodes']} node{'s' if r['nodes'] > 1 else ''}: {r['total_s'] / 60:.1f} min"
                        for r in doc["estimate"])
        per = f" ({1e3 * doc['measured']['per_sample_1thr_s']:.0f} ms per image at 1 thread, measured)"
    except (OSError, ValueError, KeyError, TypeError):
        est, per = "", ""
    return [f"ResNet-19 (Ternary Spike, imported) on 50 000 CIFAR-shaped images on 2-core nodes, estimated from measurements{per}"
            + (f": {est}" if est else "") + "; the model, what is measured and assumed, and what limits it: "
            "bench/RESULTS.md, \"ResNet-19 on 50 000 images\" (`python bench/resnet19_scale.py`).", ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models/fmnist-resnet8-ternary/folded.h5"))
    ap.add_argument("--chunk-size", type=int, default=250)
    ap.add_argument("--small-chunk", type=int, default=50, help="Chunk size of the overhead run (1 worker).")
    ap.add_argument("--rounds", type=int, default=3, help="Times every run is repeated (medians are reported).")
    ap.add_argument("--limit", type=int, help="First N test images only (default: all 10 000).")
    ap.add_argument("--out", default=str(ROOT / "bench/DISTRIBUTED.md"))
    a = ap.parse_args(argv)
    if not Path(a.out).resolve().parent.is_dir():         # refuse now, not after the runs
        ap.error(f"--out {a.out}: directory {Path(a.out).resolve().parent} does not exist")

    from evsim.data import open_data
    from evsim.format import read_network

    network = read_network(a.model)
    load_before = loadavg()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import busy_cpu_processes
    busy_before = busy_cpu_processes()
    configs = (("in-process", None, a.chunk_size), ("1 worker", 1, a.chunk_size), ("2 workers", 2, a.chunk_size),
               ("in-process, small chunks", None, a.small_chunk), ("1 worker, small chunks", 1, a.small_chunk))
    runs = {label: [] for label, _, _ in configs}
    base = None
    with open_data("fashion-mnist") as src:
        for rnd in range(a.rounds):
            # the configurations in turn, the order rotating round by round, so that a slow spell of the machine
            # falls on all of them alike; the ratios are taken within a round
            k = rnd % len(configs)
            for label, workers, chunk in configs[k:] + configs[:k]:
                row, r = timed_eval(label, network, src, workers=workers, chunk_size=chunk, limit=a.limit)
                row["round"] = rnd
                runs[label].append(row)
                if base is None:
                    base = r
                elif (r.report.to_dict() != base.report.to_dict()
                      or not (r.predictions == base.predictions).all()):
                    raise SystemExit(f"{label}, round {rnd}: results differ from the first run")

    def median(xs):
        return float(np.median(xs))

    rows = []
    for label, _, _ in configs:
        rs = runs[label]
        row = dict(rs[0])
        row.update(wall_s=round(median([x["wall_s"] for x in rs]), 3),
                   startup_s=round(median([x["startup_s"] for x in rs]), 3),
                   walls_s=[x["wall_s"] for x in rs], load_after=rs[-1]["load_after"])
        row["samples_per_s"] = round(row["samples"] / row["wall_s"], 1)
        row.pop("round", None)
        rows.append(row)
    inproc, one, two, inproc_small, small = rows
    ratios = [o["wall_s"] / t["wall_s"] for o, t in zip(runs["1 worker"], runs["2 workers"])]
    speedup = median(ratios)
    over_vs_inproc = median([(o["wall_s"] - i["wall_s"]) / o["chunks"]
                             for o, i in zip(runs["1 worker"], runs["in-process"])])
    over_small = median([(o["wall_s"] - i["wall_s"]) / o["chunks"]
                         for o, i in zip(runs["1 worker, small chunks"], runs["in-process, small chunks"])])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    doc = {"command": "python bench/distributed_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{cores} cores usable, Python {platform.python_version()}", "model": a.model, "rounds": a.rounds,
           "load_before": load_before, "load_after": loadavg(), "runs": rows,
           "speedup_1_to_2_workers": round(speedup, 3), "speedup_per_round": [round(x, 3) for x in ratios],
           "overhead_per_chunk_ms_vs_in_process": round(1e3 * over_vs_inproc, 2),
           "overhead_per_chunk_ms_small_chunks": round(1e3 * over_small, 2), "identical_results": True}
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = ["# evsim eval on Dask: Fashion-MNIST test set, 1 and 2 worker processes",
          "",
          f"`{doc['command']}` on {doc['date']}; {doc['machine']}; model `{os.path.relpath(a.model, ROOT)}`.",
          f"Load average (/proc/loadavg) before: `{load_before}`, after: `{doc['load_after']}`.",
          "",
          f"Every run {a.rounds} times, in rounds (the order rotating round by round); the table gives medians "
          "over the rounds, the speed-up is the median of the rounds' ratios.",
          "",
          "| run | workers | threads each | chunk | chunks | samples | cluster start-up (s) | wall (s), median | "
          "wall (s), each round | samples/s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['run']} | {r['workers']} | {r['threads_per_worker']} | {r['chunk_size']} | {r['chunks']} | "
                  f"{r['samples']} | {r['startup_s']} | {r['wall_s']} | {', '.join(f'{w:.2f}' for w in r['walls_s'])} | "
                  f"{r['samples_per_s']} |")
    md += ["",
           f"- speed-up from 1 to 2 worker processes (wall time, start-up excluded): **{speedup:.2f}x**, median of "
           f"{len(ratios)} rounds ({', '.join(f'{x:.2f}x' for x in ratios)}; goal 1.8x)",
           f"- Dask overhead per chunk (1 worker against the in-process run of the same chunks, divided by the "
           f"chunks): {1e3 * over_vs_inproc:.1f} ms with chunks of {a.chunk_size}, {1e3 * over_small:.1f} ms with "
           f"chunks of {a.small_chunk}",
           "- predictions and every total identical (bit for bit) in every run",
           "",
           "Start-up (a LocalCluster of worker processes, each importing evsim and Numba's cached kernels, and the "
           "network compiled once per worker in a warm-up run) is excluded from the wall times.",
           ("No other process was using the CPU when the runs started (the load average carries the jobs just "
            "before, if any)." if not busy_before else
            f"**Other processes were using the CPU when the runs started ({'; '.join(busy_before)}): these "
            f"figures are indicative only and must be retaken on a quiet machine.**"), ""] + resnet19_line()
    out.write_text("\n".join(md))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""ResNet-19 (Ternary Spike) on 50 000 CIFAR-shaped images on 1, 8 and 64 nodes: an estimate from measurements.

    python bench/resnet19_scale.py [--seed 0] [--samples 32] [--batch 4] [--cores-per-node 2]
                                   [--bandwidth-mb-s 117] [--out bench/RESNET19_SCALE.md]

The network is the Ternary Spike paper's ``resnet19`` (3x32x32, T=4, 10 classes) built by
``evsim.bridge.papers.build`` with random weights and random BatchNorm statistics calibrated on its own
activity (as tests/test_import_papers.py builds its checkpoints, so that layers fire at realistic rates),
saved as their training script saves it (a state dict in their key layout) and imported with
``evsim import --from ternary-spike --arch resnet19 -T 4``. The inputs are standard-normal images (CIFAR
normalised by its mean and std has about that distribution). Measured here:

* per-sample wall time of ``evsim.engine.run`` in this process, 1 and 2 engine threads, batches of ``--batch``
  (median over the batches, each batch timed on its own, after a warm-up batch);
* the compile time of the network and the first (JIT/cache-loading) batch;
* the bytes a worker receives once (the pickled network that the worker plugin ships) and the folded file's size;
* the firing rate of every spiking layer (the engine's report over the measured samples);
* Dask's per-chunk overhead for this network: (a) a LocalCluster of 1 worker against in-process on the same
  chunks, (b) the round trip of a task that carries a chunk of inputs and returns a chunk's results but
  computes nothing (the overhead without the noise of the simulation);
* the client-side cost of reading and checking a chunk (the single reader every chunk goes through).

From these it computes the wall time of a 50 000-image run on 1, 8 and 64 nodes (a node: ``--cores-per-node``
cores, one worker process using them all as engine threads) with the model written in the Markdown it emits.
Everything assumed (network bandwidth, scheduler overhead per task, the per-node efficiency beyond the cores
measured here) is listed as such. Writes OUT (Markdown) and OUT with a .json suffix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_TOTAL = 50_000
NODES = (1, 8, 64)
SCHEDULER_S_PER_TASK = 1e-3          # distributed.dask.org: "Each task suffers about 1ms of overhead" (assumed)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def build_network(seed: int, tmp: Path):
    """Their resnet19, random init + calibrated BN, saved in their layout, imported through the command line."""
    import torch
    from click.testing import CliRunner

    from evsim.bridge import papers
    from evsim.cli import main
    from evsim.format import read_network
    torch.manual_seed(seed)
    net = papers.build("ternary-spike", "resnet19", 4, 3, 10, (3, 32, 32))
    papers.calibrate_random(net, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1)), seed)
    ckpt, folded = tmp / "resnet19.pth", tmp / "resnet19.h5"
    torch.save(net.state_dict(), ckpt)
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["import", "--from", "ternary-spike", "--arch", "resnet19", "-T", "4", "-c",
                                    str(ckpt), "--out", str(folded), "--input-shape", "3,32,32"])
    if res.exit_code != 0:
        raise SystemExit(f"evsim import failed: {res.output.strip()}")
    return read_network(folded), folded, time.perf_counter() - t0, ckpt.stat().st_size


def time_batches(cn, x, batch, threads):
    from evsim.engine import run
    run(cn, x[:batch], batch_size=batch, threads=threads)                 # warm-up (not timed)
    per = []
    for s in range(0, len(x) - batch + 1, batch):
        t0 = time.perf_counter()
        run(cn, x[s:s + batch], batch_size=batch, threads=threads)
        per.append((time.perf_counter() - t0) / batch)
    return per


def _noop_chunk(x, template):
    """A task that carries a chunk of inputs in and a chunk's results out, and computes nothing."""
    return {k: v.copy() for k, v in template.items()}


def dask_overhead(network, x, chunk, threads=1):
    """(a) 1 worker vs in-process on the same chunks; (b) no-op round trips with real chunk sizes."""
    from evsim.distributed import evaluate, network_key, run_chunk, runner
    out = {}
    t0 = time.perf_counter()
    with runner(workers=1, threads=threads) as run:
        out["cluster_start_s"] = time.perf_counter() - t0
        c = run.client
        t0 = time.perf_counter()
        run.install(network_key(network), network)
        c.run(lambda: None)                                               # the plugin has reached the worker
        out["install_network_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = c.submit(run_chunk, network_key(network), (), "float32", "kernel", threads, chunk, x[:chunk],
                       pure=False).result()
        out["first_chunk_on_worker_s"] = time.perf_counter() - t0            # compile + JIT/cache + one chunk
        template = res
        out["result_bytes_per_sample"] = sum(v.nbytes for v in res.values()) / chunk
        rt = []
        for i in range(30):
            t0 = time.perf_counter()
            c.submit(_noop_chunk, x[:chunk], template, pure=False).result()
            rt.append(time.perf_counter() - t0)
        out["noop_round_trip_s"] = statistics.median(rt[5:])
        t0 = time.perf_counter()
        r_dask = evaluate(network, x, runner_=run, chunk_size=chunk, progress=False, threads=threads)
        out["dask_1_worker_s"] = time.perf_counter() - t0
    with runner(threads=threads) as run:
        evaluate(network, x[:chunk], runner_=run, chunk_size=chunk, progress=False)       # compile here first
        t0 = time.perf_counter()
        r_in = evaluate(network, x, runner_=run, chunk_size=chunk, progress=False)
        out["in_process_s"] = time.perf_counter() - t0
    out["chunks"] = r_in.chunks
    out["chunk_size"] = chunk
    out["identical"] = bool(r_in.report.to_dict() == r_dask.report.to_dict()
                            and (r_in.predictions == r_dask.predictions).all())
    out["overhead_per_chunk_s_difference"] = (out["dask_1_worker_s"] - out["in_process_s"]) / r_in.chunks
    return out


def reader_cost(network, x, chunk, tmp: Path):
    """Client side, per chunk: read it from a .npy file, check it, serialise it (what submitting a chunk costs)."""
    import numpy as np

    from evsim.data import check_chunk, open_data
    reps = max(1, 4096 // len(x))
    path = tmp / "x.npy"
    np.save(path, np.concatenate([x] * reps))
    times = []
    with open_data(str(path)) as src:
        for _ in range(3):
            t0 = time.perf_counter()
            for i, s in enumerate(range(0, len(src), chunk)):
                a = src.read(s, min(s + chunk, len(src)))
                check_chunk(network, a, i, s, src.name)
                pickle.dumps(a, protocol=5)
            times.append((time.perf_counter() - t0) / len(src))
    return min(times)


def _limit(limits: dict, total: float) -> str:
    """The largest term, and any other that takes over 10 % of the run."""
    first = max(limits, key=limits.get)
    rest = [f"{k} {100 * v / total:.0f} %" for k, v in limits.items() if k != first and v > 0.1 * total]
    return first + ("; " + ", ".join(rest) if rest else "")


def estimate(m: dict, cores: int, bandwidth: float, chunk: int, eff: float | None) -> list[dict]:
    """Wall time of SAMPLES_TOTAL samples on each node count (see the Markdown for the model). ``eff``: the
    efficiency of a node's cores (per-sample time there = 1-thread time / (cores x eff)); None: a node runs as
    the 2-thread measurement here (only for cores = 2)."""
    rows = []
    per_node = m["per_sample_2thr_s"] if eff is None else m["per_sample_1thr_s"] / (cores * eff)
    for nodes in NODES:
        chunks = math.ceil(SAMPLES_TOTAL / chunk)
        waves = math.ceil(chunks / nodes)
        chunk_s = chunk * per_node + m["overhead_per_chunk_s"]
        compute = waves * chunk_s                                        # the last wave sets the end
        ideal = SAMPLES_TOTAL * per_node / nodes
        ship = max(m["install_network_local_s"], m["network_bytes"] * nodes / bandwidth)
        startup = m["cluster_start_s"] + ship + m["compile_first_batch_s"]
        sched = chunks * SCHEDULER_S_PER_TASK
        data_in = SAMPLES_TOTAL * m["input_bytes_per_sample"] / bandwidth
        data_out = SAMPLES_TOTAL * m["result_bytes_per_sample"] / bandwidth
        reader = SAMPLES_TOTAL * m["reader_s_per_sample"]
        # the client's chunk stream (read, check, ship) and the scheduler run alongside the compute; the run is
        # limited by the slowest of them, not their sum
        stream = reader + data_in + sched
        total = startup + max(compute, stream) + data_out / max(1, waves)
        limits = {"compute (last wave included)": compute, "client reader + input transfer + scheduler": stream,
                  "network shipping at start-up": ship}
        rows.append({"nodes": nodes, "cores": nodes * cores, "chunk_size": chunk, "chunks": chunks, "waves": waves,
                     "ideal_compute_s": ideal, "compute_s": compute, "startup_s": startup,
                     "per_sample_node_s": per_node, "ship_network_s": ship, "scheduler_s": sched,
                     "input_transfer_s": data_in, "reader_s": reader, "results_transfer_s": data_out,
                     "total_s": total, "samples_per_s": SAMPLES_TOTAL / total,
                     "efficiency": ideal / total, "limit": _limit(limits, total)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=32, help="Samples timed per thread count and round (default 32).")
    ap.add_argument("--batch", type=int, default=4, help="Batch size of the timed runs (default 4).")
    ap.add_argument("--dask-chunks", type=int, default=4, help="Chunks of --batch samples in the Dask overhead run.")
    ap.add_argument("--cores-per-node", type=int, default=2, help="Cores of a node (default 2, as this machine).")
    ap.add_argument("--bandwidth-mb-s", type=float, default=117.0,
                    help="Assumed network bandwidth, MB/s (default 117: 1 Gbit/s Ethernet).")
    ap.add_argument("--chunk-size", type=int, default=64, help="Chunk size of the estimated run (default 64).")
    ap.add_argument("--efficiency", type=float, default=0.94,
                    help="Assumed efficiency of a node's cores: per-sample time = 1-thread time / (cores x this). "
                         "Default 0.94: the 1 -> 2 thread speed-up of ResNet-19 measured on a quiet machine "
                         "(bench/RESULTS.md: 1.88x, trained rates, batch 4).")
    ap.add_argument("--from-json", help="Recompute the estimate and the Markdown from this script's JSON (no runs).")
    ap.add_argument("--out", default=str(ROOT / "bench/RESNET19_SCALE.md"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    if not out.resolve().parent.is_dir():
        ap.error(f"--out {a.out}: directory {out.resolve().parent} does not exist")
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        finish(doc, a, out)
        return

    import numpy as np

    from evsim.compiler import compile_network
    from evsim.engine import run
    from evsim.reports import build_report
    t_all = time.perf_counter()
    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="evsim-r19-"))
    network, folded, import_s, ckpt_bytes = build_network(a.seed, tmp)
    log(f"imported ResNet-19: {len(network.populations)} populations, {len(network.projections)} projections, "
        f"{network.n_params} parameters ({import_s:.1f} s)")
    rng = np.random.default_rng(a.seed + 2)
    x = rng.standard_normal((a.samples + a.batch, 3, 32, 32)).astype(np.float32)
    if network.input_range is not None:
        x = np.clip(x, *network.input_range).astype(np.float32)
    t0 = time.perf_counter()
    cn = compile_network(network, dtype="float32")
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(cn, x[:a.batch], batch_size=a.batch, threads=1)         # the first batch: compiles and warms
    first_s = time.perf_counter() - t0
    per = {}
    for th in (1, 2, 1, 2):                    # interleaved: load from other jobs hits both thread counts alike
        per.setdefault(th, []).extend(time_batches(cn, x[a.batch:], a.batch, th))
        log(f"{th} thread(s): median {1e3 * statistics.median(per[th]):.1f} ms/sample over {len(per[th])} batches")
    ref = run(cn, x[a.batch:], batch_size=a.batch, threads=1)
    rep = build_report(cn, ref)
    rates = [{"layer": p.name, "neurons": int(np.prod(p.shape)) if hasattr(p, "shape") else None,
              "firing_rate": p.firing_rate} for p in rep.populations]
    net_bytes = len(pickle.dumps(network, protocol=5))
    d = dask_overhead(network, x[:a.batch * a.dask_chunks], a.batch)
    log(f"Dask: cluster {d['cluster_start_s']:.1f} s, network install {d['install_network_s']:.2f} s, no-op round "
        f"trip {1e3 * d['noop_round_trip_s']:.1f} ms, 1 worker {d['dask_1_worker_s']:.2f} s vs in-process "
        f"{d['in_process_s']:.2f} s")
    reader = reader_cost(network, x, a.chunk_size, tmp)
    m = {"per_sample_1thr_s": statistics.median(per[1]), "per_sample_2thr_s": statistics.median(per[2]),
         "per_sample_1thr_iqr_s": [float(np.percentile(per[1], 25)), float(np.percentile(per[1], 75))],
         "per_sample_2thr_iqr_s": [float(np.percentile(per[2], 25)), float(np.percentile(per[2], 75))],
         "batches_timed_per_thread_count": len(per[1]), "batch": a.batch,
         "compile_s": compile_s, "first_batch_s": first_s, "compile_first_batch_s": compile_s + first_s,
         "network_bytes": net_bytes, "folded_file_bytes": folded.stat().st_size, "checkpoint_bytes": ckpt_bytes,
         "parameters": int(network.n_params), "input_bytes_per_sample": 3 * 32 * 32 * 4,
         "result_bytes_per_sample": d["result_bytes_per_sample"], "reader_s_per_sample": reader,
         "cluster_start_s": d["cluster_start_s"], "install_network_local_s": d["install_network_s"],
         "first_chunk_on_worker_s": d["first_chunk_on_worker_s"],
         "overhead_per_chunk_s": d["noop_round_trip_s"],
         "overhead_per_chunk_s_difference": d["overhead_per_chunk_s_difference"], "dask_run": d,
         "firing_rate_overall": rep.totals["firing_rate"], "firing_rates": rates,
         "synaptic_ops_per_sample": rep.totals["synaptic_ops"], "macs_per_sample": rep.totals["macs"]}
    m["thread_efficiency_2"] = m["per_sample_1thr_s"] / (2 * m["per_sample_2thr_s"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    doc = {"command": "python bench/resnet19_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.processor() or platform.machine()}, {cores} cores usable, Python "
                      f"{platform.python_version()}", "load_before": load_before, "load_after": loadavg(),
           "measured": m, "bench_seconds": time.perf_counter() - t_all}
    finish(doc, a, out)


def finish(doc, a, out: Path):
    """The estimate from the measurements in ``doc`` and the assumptions in ``a``; writes OUT and OUT.json."""
    m = doc["measured"]
    bw = a.bandwidth_mb_s * 1e6
    doc["assumed"] = {"cores_per_node": a.cores_per_node, "core_efficiency": a.efficiency, "bandwidth_bytes_s": bw,
                      "scheduler_s_per_task": SCHEDULER_S_PER_TASK, "samples": SAMPLES_TOTAL,
                      "chunk_size": a.chunk_size, "node_scaling": "samples independent: no communication between "
                      "nodes, each node as fast as this machine's cores"}
    doc["estimate"] = estimate(m, a.cores_per_node, bw, a.chunk_size, a.efficiency)
    doc["estimate_chunk_256"] = estimate(m, a.cores_per_node, bw, 256, a.efficiency)
    doc["estimate_as_measured_2_threads"] = estimate(m, 2, bw, a.chunk_size, None) if a.cores_per_node == 2 else None
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.write_text(markdown(doc, m["firing_rates"]))
    log(f"wrote {out} and {out.with_suffix('.json')}")


def markdown(doc, rates) -> str:
    m, A = doc["measured"], doc["assumed"]
    ms = lambda s: f"{1e3 * s:.1f} ms"                                   # noqa: E731
    mb = lambda b: f"{b / 1e6:.1f} MB"                                   # noqa: E731
    hms = lambda s: f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"  # noqa
    c = A["cores_per_node"]
    L = ["## ResNet-19 on 50 000 images: 1, 8, 64 nodes (estimate)", "",
         f"`{doc['command']}` on {doc['date']}; {doc['machine']}. Load average before `{doc['load_before']}`, after "
         f"`{doc['load_after']}` (on a shared machine the per-sample times carry the other jobs' load).", "",
         "The network: the Ternary Spike paper's `resnet19` (3x32x32, T=4, 10 classes; "
         f"{m['parameters'] / 1e6:.2f} M parameters) built by `evsim.bridge.papers.build` with random weights and "
         "random BatchNorm statistics calibrated on its own activity (`evsim.bridge.papers.calibrate_random`, as tests/test_import_papers.py), saved as a "
         "state dict in their key layout and imported with `evsim import --from ternary-spike --arch resnet19 -T 4`. "
         "Inputs: standard-normal images (CIFAR after its mean/std normalisation is about that). Random weights: "
         "firing rates, and so the cost per sample, are this calibration's, not a trained model's.", "",
         "**Measured here**", "",
         "| quantity | value |", "|---|---|",
         f"| per-sample wall time, in-process, 1 engine thread (median of {m['batches_timed_per_thread_count']} "
         f"batches of {m['batch']} after a warm-up; IQR) | "
         f"**{ms(m['per_sample_1thr_s'])}** ({ms(m['per_sample_1thr_iqr_s'][0])}-{ms(m['per_sample_1thr_iqr_s'][1])}) |",
         f"| per-sample wall time, 2 engine threads | **{ms(m['per_sample_2thr_s'])}** "
         f"({ms(m['per_sample_2thr_iqr_s'][0])}-{ms(m['per_sample_2thr_iqr_s'][1])}); 1 -> 2 threads "
         f"{m['per_sample_1thr_s'] / m['per_sample_2thr_s']:.2f}x |",
         f"| additions (AC) per sample / MACs (first layer, real-valued input) | "
         f"{m['synaptic_ops_per_sample'] / 1e6:.0f} M / {m['macs_per_sample'] / 1e6:.1f} M |",
         f"| firing rate, whole network | {100 * m['firing_rate_overall']:.1f} % |",
         f"| network shipped once per worker (pickled evsim Network, float64 weights) | {mb(m['network_bytes'])} "
         f"(folded .h5 {mb(m['folded_file_bytes'])}; their float32 checkpoint {mb(m['checkpoint_bytes'])}) |",
         f"| compile + first batch (JIT cache load), per process | {m['compile_s']:.2f} s + "
         f"{m['first_batch_s']:.2f} s |",
         f"| LocalCluster start (1 worker) / network install on it | {m['cluster_start_s']:.2f} s / "
         f"{m['install_network_local_s']:.2f} s |",
         f"| first chunk on a fresh worker (compile there + {m['batch']} samples) | "
         f"{m['first_chunk_on_worker_s']:.2f} s |",
         f"| Dask overhead per chunk: no-op task carrying a chunk of {m['batch']} inputs and its results "
         f"(median round trip) | **{ms(m['overhead_per_chunk_s'])}** |",
         f"| Dask overhead per chunk: 1 worker minus in-process, same {m['dask_run']['chunks']} chunks of "
         f"{m['batch']} | {ms(m['overhead_per_chunk_s_difference'])} (noisy: the difference of two "
         f"{m['dask_run']['in_process_s']:.1f} s runs; results identical: {m['dask_run']['identical']}) |",
         f"| input per sample / results per sample (outputs + every counter) | {m['input_bytes_per_sample']} B / "
         f"{m['result_bytes_per_sample']:.0f} B |",
         f"| client: read + check + serialise a chunk, per sample (.npy) | {1e6 * m['reader_s_per_sample']:.1f} us |",
         "", "Firing rate per spiking layer:", "",
         "| layer | firing rate |", "|---|---|"]
    L += [f"| {r['layer']} | {100 * r['firing_rate']:.1f} % |" for r in rates]
    L += ["", "**Assumed**", "",
          f"- a node = {c} cores like this machine's, one Dask worker process per node running the engine on all "
          f"{c} threads at an efficiency of {A['core_efficiency']:.2f}: per-sample time on a node = 1-thread time / "
          f"({c} x {A['core_efficiency']:.2f}) = **{ms(doc['estimate'][0]['per_sample_node_s'])}** "
          "(0.94 is the 1 -> 2 thread speed-up of the benchmark's ResNet-19 at a large batch, 1.88x, measured on a "
          "quiet machine: bench/RESULTS.md; the 2-thread time measured here, at batches of "
          f"{m['batch']}, gives {m['per_sample_1thr_s'] / m['per_sample_2thr_s']:.2f}x and is used for the pessimistic "
          "line below the table); nodes share nothing but the scheduler and the client, "
          "samples are independent (no communication between nodes);",
          f"- network bandwidth {A['bandwidth_bytes_s'] / 1e6:.0f} MB/s (1 Gbit/s Ethernet) into and out of the "
          "client/scheduler host, which reads every chunk (one reader) and from which the network reaches every "
          "worker;",
          "- Dask's scheduler: about 1 ms of overhead per task, as Dask's documentation states it "
          "(distributed.dask.org, Motivation: *\"Low latency: Each task suffers about 1ms of overhead. A small "
          "computation and network roundtrip can complete in less than 10ms.\"*); the round trip measured here "
          "(below) includes it;",
          f"- {SAMPLES_TOTAL} samples in chunks of {A['chunk_size']} (evsim's default is 256; see below), the chunks "
          "spread evenly over the workers; the run ends with its last wave of chunks.", "",
          "**Model** (seconds): start-up = cluster start + network shipping (max(measured local install, network "
          "bytes x nodes / bandwidth): the plugin ships the network from the scheduler to every worker) + compile "
          "and first batch per worker (in parallel); "
          "compute = ceil(chunks / nodes) x (chunk x per-sample time + per-chunk Dask overhead); stream = "
          "samples x (reader cost) + input bytes / bandwidth + chunks x 1 ms (client and scheduler, concurrent "
          "with the compute); total = start-up + max(compute, stream) + the last wave's results transfer.", "",
          "| nodes | cores | chunks (waves) | ideal compute | compute incl. last wave | start-up (network shipping) "
          "| scheduler | input 614 MB | total | images/s | efficiency | what limits it |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["estimate"]:
        L.append(f"| {r['nodes']} | {r['cores']} | {r['chunks']} ({r['waves']}) | {hms(r['ideal_compute_s'])} | "
                 f"{hms(r['compute_s'])} | {r['startup_s']:.1f} s ({r['ship_network_s']:.1f} s) | "
                 f"{r['scheduler_s']:.2f} s | {r['input_transfer_s']:.1f} s | **{hms(r['total_s'])}** | "
                 f"{r['samples_per_s']:.0f} | {100 * r['efficiency']:.0f} % | {r['limit']} |")
    r64, r64b = doc["estimate"][-1], doc["estimate_chunk_256"][-1]
    pess = doc.get("estimate_as_measured_2_threads")
    if pess:
        L += ["", "Pessimistic: nodes as slow as this machine was at 2 threads and small batches (" +
              ms(m["per_sample_2thr_s"]) + " per image): " +
              ", ".join(f"{r['nodes']} node{'s' if r['nodes'] > 1 else ''} {hms(r['total_s'])}" for r in pess) + "."]
    L += ["",
          f"- **1 and 8 nodes: compute-bound.** The simulation is {ms(r64['per_sample_node_s'])} per image per "
          "node; "
          f"Dask's per-chunk overhead ({ms(m['overhead_per_chunk_s'])} per chunk of {m['batch']}, less than "
          f"{100 * m['overhead_per_chunk_s'] / (m['batch'] * r64['per_sample_node_s']):.1f} % of that chunk's "
          "compute; "
          f"smaller still per sample at chunks of {A['chunk_size']}), the scheduler ({r64['chunks']} tasks, "
          f"{r64['scheduler_s']:.1f} s in all) and the input ({mb(SAMPLES_TOTAL * m['input_bytes_per_sample'])}, "
          f"{r64['input_transfer_s']:.1f} s at {A['bandwidth_bytes_s'] / 1e6:.0f} MB/s, streamed while the "
          "workers compute) are all far below it.",
          f"- **64 nodes:** still compute-bound, but three things start to show. (1) The last wave: "
          f"{r64['chunks']} chunks over 64 workers is {r64['chunks'] / 64:.1f} chunks each, so the run lasts "
          f"{r64['waves']} waves; with evsim's default chunk of 256 it would be {r64b['chunks']} chunks in "
          f"{r64b['waves']} waves: {hms(r64b['total_s'])} instead of {hms(r64['total_s'])} "
          "(pass `--chunk-size 64` or smaller on a large cluster). (2) Start-up: the network "
          f"({mb(m['network_bytes'])}) goes from the scheduler to each of 64 workers, "
          f"{r64['ship_network_s']:.0f} s at 1 Gbit/s, a fixed cost of {100 * r64['ship_network_s'] / r64['total_s']:.0f} % "
          "of the run (pre-installing the .h5 on the nodes, or shipping float32 weights, would cut it). (3) The "
          "single reader: every input "
          f"goes through the client, {r64['input_transfer_s']:.1f} s of transfer + {r64['reader_s']:.1f} s of "
          "reading and checking; it would become the limit only at about "
          f"{int(64 * r64['compute_s'] / max(1e-9, r64['input_transfer_s'] + r64['reader_s'] + r64['scheduler_s']))} "
          "nodes (where the stream's time equals the compute's).",
          "- Not modelled: stragglers and heterogeneous nodes (a slower node stretches the last wave), workers lost "
          "and rerun (each lost chunk costs one chunk's time), memory (a worker holds the compiled network and two "
          "chunks in flight per thread), and the per-sample time itself, which scales with the firing rate "
          "(bench/RESULTS.md, \"time per sample vs events\"): a trained ResNet-19 at other rates costs "
          "proportionally more or less.", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()

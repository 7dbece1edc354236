"""evsim benchmark suite: the event-driven engine against PyTorch on the same CPU.

    python bench/run.py [--quick] [--out bench/RESULTS.md] [--model-dir DIR]

One run measures every case and writes RESULTS.md (tables, targets met / not
met, explanations) and results.json (every repetition) next to it:

1. the shipped trained model on Fashion-MNIST test images: evsim float32 vs
   PyTorch at its best (the trained unfolded model and the folded network run
   densely; contiguous and channels-last; eager and torch.compile; every batch
   size), each side in processes of its own, interleaved rounds
   (bench/compare.py, bench/worker.py), at 1 and 2 threads;
2. ResNet-19 at full width, random inputs, BatchNorm set so that each layer
   fires as the shipped model's layer at its place (68-87 %), and at a sparse
   12 % in every layer; same comparison;
3. synaptic additions per second of the conv scatter kernel alone;
4. time per sample against the number of events, rates ~2-40 %;
5. peak memory of a run and the compiled size, kernel vs explicit CSR;
6. start-up of the ``evsim run`` command, cold and warm JIT cache;
7. 1 -> 2 thread scaling at a large batch.

``--quick`` uses fewer rounds, repetitions and batch sizes; ``--cases`` runs a subset.
The first run on a machine also fills the TorchInductor cache (compilations; later runs reuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# The environment the benchmark was started with: what the PyTorch processes get, untouched (the
# evsim processes get it plus evsim's own settings, bench/compare.py: EVSIM_ENV).
BASE_ENV = dict(os.environ)

# The benchmark's own NumPy bookkeeping (fits, statistics) must not leave OpenBLAS worker threads
# spinning on the cores the timed code runs on (measured: such spinning halved evsim's two-thread
# speed). Only this process: the timed sides run in processes of their own (BASE_ENV).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

TORCH_SEARCH = dict(torch_formats=["contiguous", "channels_last"], torch_modes=["eager", "compile"])
QUICK = dict(
    quick=True, seed=0, threads=[1, 2], rounds=2, **TORCH_SEARCH,
    shipped_batches=[1, 16, 64], compile_batches=[64], reps=3, min_samples=32, max_rep_s=3.0,
    shipped_eval_samples=256,
    r19_batches=[1, 4], r19_compile_batches=[4], r19_reps=2, r19_min_samples=2, r19_max_rep_s=4.0,
    r19_calib_samples=2,
    r19_target_rate=0.12, r19_bn_std=0.12,
    kern_cout=[16, 32, 64, 128], kern_reps=5, kern_samples=1, kern_densities=[0.01, 0.03, 0.3],
    kern_shapes=[[256, 256, 16], [512, 512, 8]], kern_positions=[[16, 28], [32, 14], [64, 7]],
    lin_targets=[0.03, 0.06, 0.12, 0.20, 0.30], lin_samples=4, lin_batch=4, lin_reps=5,
    mem_batches=[1, 64],
    start_cold=1, start_warm=3,
)
FULL = dict(
    quick=False, seed=0, threads=[1, 2], rounds=3, **TORCH_SEARCH,
    shipped_batches=[1, 16, 64, 256], compile_batches=[1, 64], reps=3, min_samples=64, max_rep_s=5.0,
    shipped_eval_samples=1024,
    r19_batches=[1, 4], r19_compile_batches=[4], r19_reps=3, r19_min_samples=2, r19_max_rep_s=6.0,
    r19_calib_samples=4,
    r19_target_rate=0.12, r19_bn_std=0.12,
    kern_cout=[16, 32, 64, 128], kern_reps=9, kern_samples=1, kern_densities=[0.01, 0.03, 0.3],
    kern_shapes=[[256, 256, 16], [512, 512, 8]], kern_positions=[[16, 28], [32, 14], [64, 7]],
    lin_targets=[0.02, 0.04, 0.08, 0.12, 0.16, 0.20, 0.25, 0.30], lin_samples=4, lin_batch=4, lin_reps=5,
    mem_batches=[1, 256],
    start_cold=2, start_warm=5,
)
CASES = ("shipped", "resnet19", "kernels", "linearity", "memory", "startup", "scaling")


def resolve_model(model_dir: Path, tmp: Path) -> dict:
    """model.pt, folded.h5 and samples/sample0.npy of the shipped model; fills in what is missing."""
    from cases import log
    paths = {"dir": str(model_dir), "checkpoint": model_dir / "model.pt", "weights": model_dir / "folded.h5",
             "sample": model_dir / "samples" / "sample0.npy", "notes": []}
    if not paths["checkpoint"].exists():
        raise SystemExit(f"error: {paths['checkpoint']} not found (use --model-dir)")
    tmp.mkdir(parents=True, exist_ok=True)
    if not paths["weights"].exists():
        from evsim.bridge.fold import fold_model
        from evsim.bridge.train import load_checkpoint
        from evsim.datasets import DATASET_INFO
        from evsim.format import write_network
        model, _ = load_checkpoint(paths["checkpoint"])
        meta = DATASET_INFO["fashion-mnist"]
        out = tmp / "folded.h5"
        write_network(fold_model(model, class_names=meta["class_names"], input_range=meta["input_range"]), out)
        paths["notes"].append(f"{paths['weights']} missing: folded {paths['checkpoint']} with fold_model into {out}.")
        paths["weights"] = out
        log(paths["notes"][-1])
    if not paths["sample"].exists():
        import numpy as np
        from evsim.datasets import load_fashion_mnist
        x, _ = load_fashion_mnist("test")
        out = tmp / "sample0.npy"
        np.save(out, x[0])
        paths["notes"].append(f"{paths['sample']} missing: used test image 0 saved as {out}.")
        paths["sample"] = out
        log(paths["notes"][-1])
    return paths


def jsonable(o):
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 1) == 0:
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return o


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, repetitions and batch sizes (about 10 minutes on a quiet 2-core "
                                                        "machine once TorchInductor's cache is warm)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="Markdown report (results.json goes beside it)")
    ap.add_argument("--json", dest="json_out", help="JSON results (default: results.json beside --out)")
    ap.add_argument("--model-dir", action="append",
                    help="shipped model: model.pt, folded.h5, samples/sample0.npy; repeat to benchmark several "
                         "(the first also serves the memory and start-up cases; default "
                         "models/fmnist-resnet8-ternary)")
    ap.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--rounds", type=int, help="interleaved evsim / PyTorch rounds (default 2 quick, 3 full)")
    ap.add_argument("--torch-modes", help="PyTorch modes searched (default eager,compile; also e.g. "
                                          "max-autotune-no-cudagraphs)")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="measure nothing: rewrite the report (--out) from a results.json of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        from report import evaluate_targets, write_markdown
        R = json.loads(Path(args.render).read_text())
        R["targets"] = evaluate_targets(R)
        write_markdown(R, args.out)
        print(f"rewrote {args.out} from {args.render} (measurements of {R['meta']['date']})", file=sys.stderr)
        return 0

    import numba

    from cases import (build_resnet19, case_kernels, case_linearity, case_memory, case_resnet19, case_scaling,
                       case_shipped, case_startup, log)
    from report import evaluate_targets, write_markdown
    from timing import busy_cpu_processes, machine_info

    cfg = dict(QUICK if args.quick else FULL)
    cfg["threads"] = sorted({int(t) for t in args.threads.split(",")})
    if args.rounds:
        cfg["rounds"] = max(1, args.rounds)
    if args.torch_modes:
        cfg["torch_modes"] = [m.strip() for m in args.torch_modes.split(",") if m.strip()]
    if max(cfg["threads"]) > numba.config.NUMBA_NUM_THREADS:
        log(f"only {numba.config.NUMBA_NUM_THREADS} threads available; dropping larger thread counts")
        cfg["threads"] = [t for t in cfg["threads"] if t <= numba.config.NUMBA_NUM_THREADS] or [1]
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in wanted if c not in CASES]
    if bad:
        raise SystemExit(f"error: unknown case(s) {', '.join(bad)} (known: {', '.join(CASES)})")
    out = Path(args.out)
    json_out = Path(args.json_out) if args.json_out else out.with_name("results.json")

    t_start = time.perf_counter()
    meta = machine_info()
    meta["busy_processes"] = busy_cpu_processes()
    if meta["busy_processes"]:
        log("warning: other processes are using the CPU: " + ", ".join(meta["busy_processes"]))
    cmd = "python bench/run.py" + ("".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])))
    R = {"command": cmd, "meta": meta, "config": cfg, "cases": {}, "errors": {}}

    tmp = Path(tempfile.mkdtemp(prefix="evsim-bench-"))
    cfg["tmp"] = str(tmp)
    cfg["base_env"] = BASE_ENV
    from compare import EVSIM_ENV
    meta["env_torch_side"] = {k: BASE_ENV.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT",
                                                           "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    meta["env_evsim_side"] = {k: BASE_ENV.get(k, v) for k, v in EVSIM_ENV.items()}
    meta["env_evsim_side"].update({k: BASE_ENV.get(k) for k in ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS",
                                                                "NUMBA_CPU_NAME")})
    r19 = None
    try:
        dirs = args.model_dir or [str(HERE.parent / "models" / "fmnist-resnet8-ternary")]
        all_paths = [resolve_model(Path(d), tmp / f"m{i}") for i, d in enumerate(dirs)] \
            if {"shipped", "memory", "startup"} & set(wanted) else []
        paths = all_paths[0] if all_paths else None
        if paths:
            meta["model_dir"] = ", ".join(str(p["dir"]) for p in all_paths)
            meta["model_notes"] = [n for p in all_paths for n in p["notes"]]

        def attempt_as(key, name, fn):
            if name not in wanted:
                return
            t0 = time.perf_counter()
            try:
                R["cases"][key] = fn()
                R["cases"][key]["case_seconds"] = time.perf_counter() - t0
            except Exception as e:  # keep going: one broken case must not lose the others
                traceback.print_exc()
                R["errors"][key] = f"{type(e).__name__}: {e}"
            log(f"{key} done in {time.perf_counter() - t0:.1f} s")

        def attempt(name, fn):
            attempt_as(name, name, fn)

        for i, pth in enumerate(all_paths):
            # the first model is "shipped"; others "shipped:<directory name>"
            key = "shipped" if i == 0 else f"shipped:{Path(pth['dir']).name}"
            attempt_as(key, "shipped", lambda pth=pth: case_shipped(cfg, pth))
        if {"resnet19", "linearity"} & set(wanted):
            t0 = time.perf_counter()
            try:
                r19 = build_resnet19(cfg, paths)
                log(f"ResNet-19 built, calibrated and folded in {time.perf_counter() - t0:.1f} s")
            except Exception as e:
                traceback.print_exc()
                R["errors"]["resnet19 build"] = f"{type(e).__name__}: {e}"
        if r19 is not None:
            attempt("resnet19", lambda: case_resnet19(cfg, r19))
        attempt("kernels", lambda: case_kernels(cfg))
        if r19 is not None:
            attempt("linearity", lambda: case_linearity(cfg, r19))
        attempt("memory", lambda: case_memory(cfg, paths, r19["network"] if r19 else None))
        attempt("startup", lambda: case_startup(cfg, paths))
        attempt("scaling", lambda: case_scaling(cfg, R["cases"]))
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        cfg.pop("base_env", None)
        cfg.pop("tmp", None)

    try:
        meta["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        pass
    meta["load_average_end"] = list(os.getloadavg())
    meta["suite_s"] = time.perf_counter() - t_start
    R = jsonable(R)
    R["targets"] = evaluate_targets(R)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    with open(json_out, "w") as f:
        json.dump(R, f, indent=1)
    text = write_markdown(R, out)
    print(text)
    log(f"wrote {out} and {json_out} in {meta['suite_s']:.0f} s")
    return 0 if not R["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

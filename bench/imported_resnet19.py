"""Their ResNet-19 (Ternary Spike), imported with ``evsim import``, against PyTorch on the same CPU.

    python bench/imported_resnet19.py [--seed 0] [--threads 1,2] [--rounds 3] [--batches 1,4]
                                      [--compile-batches 4] [--torch-modes eager,compile] [--reps 3]
                                      [--out bench/IMPORTED_RESNET19.md]

The network is the Ternary Spike paper's ``resnet19`` (3x32x32, T=4, 10 classes) re-expressed by
``evsim.bridge.papers`` with **random weights** and random BatchNorm statistics calibrated on its own
activity (``evsim.bridge.papers.calibrate_random``, as tests/test_import_papers.py builds its
checkpoints): no trained CIFAR checkpoint of their code can be had offline, so the firing rates, and with
them evsim's cost per sample, are this calibration's, not a trained model's. It is saved as their training
script saves it (a state dict in their key layout) and imported through the real command line, ``evsim
import --from ternary-spike --arch resnet19 -T 4``; the folded file is checked spike for spike against the
PyTorch re-expression in float64 (``evsim.bridge.verify``, what ``evsim verify --from`` runs) before anything
is timed.

Timed, each side in processes of its own (``bench/compare.py``, ``bench/worker.py``: one process per side and
thread count, the PyTorch processes in the environment this script was started with, untouched), in
interleaved rounds, medians of per-round medians:

* evsim: the folded file, float32, ``evsim.engine.run`` (what ``evsim run`` runs), at each batch size;
* PyTorch: their re-expression (the "trained model" column: it is the model the checkpoint loads into) and
  evsim's dense runner of the folded file, contiguous and channels-last, eager and ``torch.compile``.

The engine's firing rates and operation counts on the timed inputs are reported beside the speeds.
Standard-normal images stand in for CIFAR (its mean/std normalisation gives about that distribution).
Writes OUT (Markdown) and OUT with a .json suffix. A smoke run: ``--threads 1 --rounds 1 --batches 1
--torch-modes eager --reps 1 --out /tmp/imported_resnet19.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# what the PyTorch processes get, untouched (the evsim processes: this plus evsim's own settings, compare.EVSIM_ENV)
BASE_ENV = dict(os.environ)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")       # this process's own NumPy bookkeeping only


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--compile-batches", default="4")
    ap.add_argument("--torch-modes", default="eager,compile")
    ap.add_argument("--torch-formats", default="contiguous,channels_last")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--min-samples", type=int, default=2)
    ap.add_argument("--max-rep-s", type=float, default=6.0)
    ap.add_argument("--inputs", type=int, default=8, help="distinct input images (cycled through by the timing)")
    ap.add_argument("--verify-samples", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "IMPORTED_RESNET19.md"))
    args = ap.parse_args(argv)

    import numba
    import numpy as np

    from cases import activity, separate_processes
    from report import _comparison_lines
    from resnet19_scale import build_network
    from timing import busy_cpu_processes, machine_info

    threads = [t for t in _ints(args.threads) if t <= numba.config.NUMBA_NUM_THREADS] or [1]
    batches = _ints(args.batches)
    compile_batches = [b for b in _ints(args.compile_batches) if b in batches]
    modes = [m.strip() for m in args.torch_modes.split(",") if m.strip()]
    formats = [f.strip() for f in args.torch_formats.split(",") if f.strip()]
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "machine": machine_info(), "platform": platform.platform(), "busy_processes": busy_cpu_processes()}
    if meta["busy_processes"]:
        log("warning: other processes are using the CPU: " + ", ".join(meta["busy_processes"]))
    tmp = Path(tempfile.mkdtemp(prefix="evsim-imported-r19-"))

    # their resnet19, random init + calibrated BN, saved in their layout, imported through the command line
    import torch

    from evsim import compile_network
    from evsim.bridge import papers
    from evsim.bridge.verify import verify
    from evsim.engine import run
    network, folded, import_s, ckpt_bytes = build_network(args.seed, tmp)
    ckpt = tmp / "resnet19.pth"
    model = papers.load_paper_checkpoint(ckpt, "ternary-spike", "resnet19", 4, 10, (3, 32, 32))
    module = tmp / "resnet19_module.pt"
    torch.save(model, module)            # the PyTorch side loads their re-expression with these weights
    x = papers.sample_inputs((3, 32, 32), max(args.inputs, max(batches)), seed=args.seed + 7).astype(np.float32)
    log(f"imported in {import_s:.1f} s; verifying {args.verify_samples} samples spike for spike (float64)")
    t0 = time.perf_counter()
    ver = verify(model, network, x[:args.verify_samples].astype(np.float64))
    verify_s = time.perf_counter() - t0
    if not ver["passed"]:
        raise SystemExit("the imported network does not reproduce the PyTorch re-expression: not timed")
    cn = compile_network(network, "float32")
    act = activity(cn, run(cn, x, batch_size=max(batches)))
    log(f"firing rate {act['firing_rate'] * 100:.1f} %, {act['synaptic_ops_per_sample'] / 1e6:.0f} M additions per "
        f"sample; timing")

    cfg = {"base_env": BASE_ENV, "threads": threads, "rounds": args.rounds, "torch_formats": formats,
           "torch_modes": modes}
    cmp = separate_processes(cfg, "imported resnet19", tmp / "cmp", x, {"imported": folded}, str(folded),
                             {"module": str(module)}, batches, compile_batches, args.reps, args.min_samples,
                             args.max_rep_s)
    meta["load_average_end"] = list(os.getloadavg())

    m = meta["machine"]
    L = ["## Their ResNet-19, imported from a checkpoint in their layout, against PyTorch", "",
         f"`python bench/{meta['command']}` on {m['date']}; CPU **{m['cpu_model']}** ({m['cores_usable']} cores "
         f"usable, {m.get('microarchitecture') or '-'}; {m['caches']}), Python {m['python']}, Numba {m['numba']}, "
         f"PyTorch {torch.__version__}. Load average at the start "
         f"`{' '.join(f'{v:.2f}' for v in m['load_average_start'])}`, at the end "
         f"`{' '.join(f'{v:.2f}' for v in meta['load_average_end'])}`"
         + (f"; other busy processes at the start: {', '.join(meta['busy_processes'])}"
            if meta["busy_processes"] else "")
         + ".", "",
         f"The network: the Ternary Spike paper's `resnet19` (3x32x32, T=4, 10 classes; {network.n_params / 1e6:.2f} M "
         "parameters) with **random weights** (seed "
         f"{args.seed}) and random BatchNorm statistics calibrated on its own activity (`evsim.bridge.papers."
         "calibrate_random`): no trained CIFAR checkpoint of their code can be had offline, so the firing rates below, "
         "and evsim's cost per sample with them, are this calibration's, not a trained model's (evsim's time grows "
         "with the events; PyTorch's does not). Saved as a state dict in their key layout "
         f"({ckpt_bytes / 2**20:.1f} MiB) and imported through the command line (`evsim import --from ternary-spike "
         f"--arch resnet19 -T 4`, {import_s:.1f} s); the folded file reproduces their re-expression spike for spike "
         f"in float64 on {ver['samples']} samples (`evsim.bridge.verify`, {verify_s:.1f} s: every layer "
         f"{'identical' if all(l['identical_float64'] == 1.0 for l in ver['layers']) else 'NOT identical'}). "
         "Inputs: standard-normal images. \"trained model\" below is their re-expression "
         "(`evsim.bridge.papers.nets`, the module the checkpoint loads into); \"folded runner\" is evsim's dense "
         "PyTorch runner of the folded file.", "",
         f"Work per sample (measured by the engine, float32, {len(x)} images): firing rate "
         f"{act['firing_rate'] * 100:.1f} %, {act['spikes_per_sample'] / 1e6:.3f} M spikes, "
         f"{act['synaptic_ops_per_sample'] / 1e6:.1f} M synaptic additions + {act['macs_per_sample'] / 1e6:.2f} M MACs "
         f"(direct input); a dense run of the same folded network: {act['dense_work_per_sample'] / 1e6:.1f} M MACs.", "",
         "| layer | firing rate |", "|---|---|"]
    L += [f"| {l['name']} | {l['rate'] * 100:.1f} % |" for l in act["layers"]]
    L += [""] + _comparison_lines(cmp, threads, {"imported": "their resnet19 (random init)"})
    text = "\n".join(L) + "\n"
    out = Path(args.out)
    out.write_text(text)
    doc = {"meta": meta, "activity": act, "verify": {k: ver[k] for k in ("passed", "samples")},
           "import_s": import_s, "comparison": {k: v for k, v in cmp.items() if k != "setup"}}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                                   else str(o)))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

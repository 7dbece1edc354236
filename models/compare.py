"""Neuron comparison on Fashion-MNIST: binary LIF, ternary (fixed / learnable amplitude), CTSN, CTSN + TMPR.

    python models/compare.py [--arch convnet] [--width 16] [--epochs 2] [--seeds 0 1] [--out models/comparison]
    python models/compare.py --dataset nfashion-mnist [...] --out models/comparison-events
    python models/compare.py [the same settings] --report-only     # RESULTS.md again from results.json

On the event data (the synthetic N-Fashion-MNIST of evsim.datasets, binned into T frames of OFF and
ON spikes) the variants are binary LIF, ternary with learnable amplitude, the CTSN event form, and
the CTSN event form + TMPR (lambda 0.01, the CTSN paper's setting for event data).

Same architecture, T, epochs, data and seeds for every variant. Each model
is trained (evsim.bridge.train), folded and exported to HDF5, and then
measured by the evsim engine itself on all 10 000 test images (float64, the
verified path): accuracy, firing rate, synaptic operations (AC), MACs,
neuron-update multiplications and energy. Also verified spike-exact against
PyTorch on 16 test images. Writes ``<out>/results.json`` and
``<out>/RESULTS.md``; checkpoints and .h5 files go to ``<out>/runs/``
(not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path


VARIANTS = {
    # name: (neuron, tmpr lambda)
    "binary LIF": ("binary", 0.0),
    "ternary, a = 1 fixed": ("ternary-fixed", 0.0),
    "ternary, learnable a": ("ternary", 0.0),
    "CTSN": ("ctsn", 0.0),
    "CTSN + TMPR": ("ctsn", 0.05),
}
EVENT_VARIANTS = {
    "binary LIF": ("binary", 0.0),
    "ternary, learnable a": ("ternary", 0.0),
    "CTSN event": ("ctsn-event", 0.0),
    "CTSN event + TMPR": ("ctsn-event", 0.01),
}


def measure(model, record, out_h5: Path, x_test, y_test, dataset="fashion-mnist") -> dict:
    from evsim.bridge.fold import fold_model
    from evsim.bridge.verify import verify
    from evsim.compiler import compile_network
    from evsim.datasets import DATASET_INFO
    from evsim.engine import run
    from evsim.format import write_network
    from evsim.reports import build_report

    meta = DATASET_INFO[dataset]
    network = fold_model(model, class_names=meta["class_names"], input_range=meta.get("input_range"),
                         provenance={"training": record, "made_by": "models/compare.py"})
    write_network(network, out_h5, overwrite=True)
    net = compile_network(network, "float64")
    t0 = time.perf_counter()
    result = run(net, x_test, batch_size=500)
    sim_s = time.perf_counter() - t0
    rep = build_report(net, result)
    ver = verify(model, network, x_test[:16])
    return {
        "accuracy_evsim": float((result.predictions == y_test).mean()),
        "accuracy_torch": record["history"][-1]["test_acc_torch"],
        "firing_rate": rep.totals["firing_rate"],
        "neg_spike_share": rep.totals["spikes_neg"] / max(rep.totals["spikes"], 1),
        "synaptic_ops": rep.totals["synaptic_ops"],
        "macs": rep.totals["macs"],
        "update_mults": rep.totals["update_mults"],
        "energy_uj": rep.energy["snn_uj"],
        "ann_energy_uj": rep.energy["ann_uj"],
        "verify_passed": ver["passed"],
        "simulate_s": sim_s,
        "per_population_rate": {p.name: p.firing_rate for p in rep.populations},
    }

# The papers' claims this comparison can speak to: (variant, the variant it is claimed to beat, the claim).
CLAIMS = [
    ("ternary, learnable a", "ternary, a = 1 fixed", "a learnable amplitude beats a = 1 (Ternary Spike)"),
    ("ternary, learnable a", "binary LIF", "ternary spikes beat binary ones (Ternary Spike)"),
    ("CTSN", "ternary, learnable a", "CTSN beats Ternary Spike (CTSN)"),
    ("CTSN + TMPR", "CTSN", "TMPR improves CTSN (CTSN)"),
    ("CTSN event", "ternary, learnable a", "CTSN beats Ternary Spike on event data (CTSN)"),
    ("CTSN event + TMPR", "CTSN event", "TMPR improves CTSN on event data (CTSN)"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "nfashion-mnist"],
                    help="nfashion-mnist: the synthetic event data (2-channel frames, T windows)")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(dict.fromkeys([*VARIANTS, *EVENT_VARIANTS])),
                    help="default: every variant of the dataset's list")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip, same for every variant")
    ap.add_argument("--train-limit", type=int, default=None, help="first N training images only (smoke runs)")
    ap.add_argument("--out", default="models/comparison")
    ap.add_argument("--retrain", action="store_true", help="train again even where a checkpoint exists")
    ap.add_argument("--report-only", action="store_true",
                    help="write OUT/RESULTS.md again from OUT/results.json (the same settings), training nothing")
    args = ap.parse_args()
    if args.report_only:
        out = Path(args.out)
        try:
            doc = json.loads((out / "results.json").read_text())
            text = render(doc, args)
        except (OSError, ValueError) as e:
            sys.exit(f"--report-only: cannot read {out / 'results.json'}: {e}")
        except (KeyError, TypeError, AttributeError, statistics.StatisticsError) as e:
            sys.exit(f"--report-only: {out / 'results.json'} is not a results file of this script ({e!r})")
        (out / "RESULTS.md").write_text(text)
        print(f"wrote {out / 'RESULTS.md'}")
        return

    from evsim.bridge.train import TrainConfig, load_checkpoint, load_training_data, save_checkpoint, train

    table = EVENT_VARIANTS if args.dataset == "nfashion-mnist" else VARIANTS
    args.variants = args.variants or list(table)
    unknown = [v for v in args.variants if v not in table]
    if unknown:
        sys.exit(f"variant {unknown[0]!r} is not one of {args.dataset}'s: {', '.join(table)}")
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data = None
    rows = []
    for variant in args.variants:
        neuron, tmpr = table[variant]
        for seed in args.seeds:
            cfg = TrainConfig(arch=args.arch, neuron=neuron, width=args.width, timesteps=args.timesteps,
                              epochs=args.epochs, batch_size=args.batch_size, tmpr=tmpr, seed=seed,
                              threads=args.threads, train_limit=args.train_limit, grad_clip=args.grad_clip,
                              dataset=args.dataset)
            if data is None:       # the same arrays for every run (the event frames are made once)
                data = load_training_data(cfg)
                x_test, y_test = data[2], data[3]
            tag = f"{neuron}{'-tmpr' if tmpr else ''}-s{seed}"
            ckpt = out / "runs" / f"{tag}.pt"
            if ckpt.exists() and not args.retrain:
                # resume an interrupted comparison: reuse a checkpoint trained with this very config
                model, saved = load_checkpoint(ckpt)
                record = saved["record"]
                if record["train_config"] != asdict(cfg):
                    sys.exit(f"{ckpt} was trained with another config; pass --retrain")
            else:
                # the full training state after every epoch: an interrupted comparison goes on from there
                resume = out / "runs" / f"{tag}.resume"
                if args.retrain and resume.exists():
                    resume.unlink()
                model, record = train(cfg, progress=False, data=data, resume=resume)
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(ckpt, model, record, force=args.retrain)
                resume.unlink()
            train_s = record["history"][-1]["elapsed_s"]        # over every session of a resumed run
            m = measure(model, record, out / "runs" / f"{tag}.h5", x_test, y_test, args.dataset)
            m.update(variant=variant, neuron=neuron, tmpr=tmpr, seed=seed, train_s=train_s)
            rows.append(m)
            print(json.dumps({k: v for k, v in m.items() if k != "per_population_rate"}), flush=True)
    cmd = ("python models/compare.py --dataset {a.dataset} --arch {a.arch} --width {a.width} --timesteps {a.timesteps} --epochs {a.epochs} "
           "--batch-size {a.batch_size} --grad-clip {a.grad_clip} --seeds {s}").format(a=args, s=" ".join(map(str, args.seeds)))
    if args.train_limit:
        cmd += f" --train-limit {args.train_limit}"
    doc = {"command": cmd, "date": date.today().isoformat(), "machine": platform.machine(), "rows": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "RESULTS.md").write_text(render(doc, args))
    print(f"wrote {out / 'RESULTS.md'}")


def _ms(values, scale=1.0, fmt="{:.2f}"):
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return fmt.format(vals[0])
    return (fmt + " ± " + fmt).format(statistics.mean(vals), statistics.stdev(vals))


def render(doc, args) -> str:
    rows = doc["rows"]
    events = getattr(args, "dataset", "fashion-mnist") == "nfashion-mnist"
    data = ("the synthetic N-Fashion-MNIST (SYNTHETIC event data: real Fashion-MNIST images moved along three "
            "saccades in front of the simulated camera of evsim/eventcam.py, seed 0; `evsim datasets "
            f"nfashion-mnist`), binned into T = {args.timesteps} equal windows per sample, OFF and ON events as +1 "
            "spikes in 2 channels of 34x34 (what `evsim run --events` feeds the network)") if events else \
        "Fashion-MNIST images, direct encoding"
    n_train = f"first {args.train_limit} training samples" if args.train_limit else "all 60 000 training samples"
    lines = [
        f"# Neuron comparison on {'event data (synthetic N-Fashion-MNIST)' if events else 'Fashion-MNIST'}",
        "",
        f"Command: `{doc['command']}` (run on {doc['date']}, {doc['machine']}).",
        "",
        f"Data: {data}. Architecture `{args.arch}` width {args.width}, T = {args.timesteps}, {args.epochs} epochs, "
        f"batch {args.batch_size}, SGD lr 0.1 momentum 0.9 wd 1e-4 cosine, gradient norm clipped at "
        f"{args.grad_clip}; seeds {', '.join(map(str, args.seeds))}; {n_train}."
        " Accuracy on all 10 000 test samples, measured by the evsim engine (float64) on the exported file;"
        " operation counts and energy (45nm-fp32: 0.9 pJ/AC, 4.6 pJ/MAC) per test sample. Mean ± sample standard"
        " deviation over seeds where there are several; verify = every spike identical to PyTorch on 16 test"
        " samples.",
        "",
        "| variant | accuracy (evsim) | accuracy (PyTorch) | firing rate | -1 share | AC | MAC | neuron-update mults"
        " | energy SNN (uJ) | energy ANN (uJ) | verify |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for variant in variants:
        rs = [r for r in rows if r["variant"] == variant]
        g = lambda k: [r[k] for r in rs]  # noqa: E731
        lines.append(" | ".join([
            f"| {variant}", _ms(g("accuracy_evsim"), 100) + " %", _ms(g("accuracy_torch"), 100) + " %",
            _ms(g("firing_rate"), 100) + " %", _ms(g("neg_spike_share"), 100, "{:.0f}") + " %",
            _ms(g("synaptic_ops"), 1e-6, "{:.2f}") + " M", _ms(g("macs"), 1e-3, "{:.1f}") + " k",
            _ms(g("update_mults"), 1e-3, "{:.1f}") + " k", _ms(g("energy_uj"), 1, "{:.3f}"),
            _ms(g("ann_energy_uj"), 1, "{:.3f}"), "all passed" if all(g("verify_passed")) else "FAILED"]) + " |")
    acc = {v: [r["accuracy_evsim"] * 100 for r in rows if r["variant"] == v] for v in variants}
    best = max(variants, key=lambda v: statistics.mean(acc[v]))
    lines += ["", f"Highest mean accuracy: **{best}**."]
    if all(len(a) >= 2 for a in acc.values()) and len(variants) > 1:
        lines += ["", "Differences against the most accurate variant, and against the seed-to-seed spread: a "
                  "difference *exceeds the spread* when it is larger than the sum of the two standard deviations "
                  "(the mean ± std intervals do not overlap); Welch's t-test p-value beside it (few seeds: a "
                  "guide, not a proof).", "",
                  "| variant | accuracy difference to " + best + " (points) | std (this / best) | exceeds the spread? "
                  "| Welch p |", "|---|---|---|---|---|"]
        from scipy.stats import ttest_ind
        for v in variants:
            if v == best:
                continue
            d = statistics.mean(acc[v]) - statistics.mean(acc[best])
            sv, sb = statistics.stdev(acc[v]), statistics.stdev(acc[best])
            p = float(ttest_ind(acc[v], acc[best], equal_var=False).pvalue)
            lines.append(f"| {v} | {d:+.2f} | {sv:.2f} / {sb:.2f} | {'yes' if abs(d) > sv + sb else 'no'} | "
                         f"{p:.3f} |")
        claims = [c for c in CLAIMS if c[0] in acc and c[1] in acc]
        if claims:
            lines += ["", "The papers' claims, each as the difference between the variant and the one it is claimed to "
                      "beat (same test of the spread, Welch's p):", "",
                      "| claim | variant - the other (points) | std (variant / other) | exceeds the spread? | Welch p "
                      "| reproduced here? |", "|---|---|---|---|---|---|"]
            for v, other, claim in claims:
                d = statistics.mean(acc[v]) - statistics.mean(acc[other])
                sv, so = statistics.stdev(acc[v]), statistics.stdev(acc[other])
                p = float(ttest_ind(acc[v], acc[other], equal_var=False).pvalue)
                beyond = abs(d) > sv + so
                verdict = "yes" if beyond and d > 0 else ("no: the other way" if beyond else "no: level")
                lines.append(f"| {claim} | {v} - {other}: {d:+.2f} | {sv:.2f} / {so:.2f} | "
                             f"{'yes' if beyond else 'no'} | {p:.3f} | {verdict} |")
    else:
        lines += ["With one seed, differences of a few tenths of a percent are not evidence either way."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

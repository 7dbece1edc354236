"""Rebuild a shipped model's artifacts and its model card from its checkpoint.

    python models/card.py models/fmnist-resnet8-ternary

Runs the same commands a user would (through the ``evsim`` CLI, ``--json``):
``evsim export`` -> ``folded.h5``; the first test images -> ``samples/``;
``evsim run --dataset fashion-mnist`` for the test accuracy on all 10 000
test images, measured by the engine in float64 and float32;
``evsim verify`` on the samples; then writes ``CARD.md`` and ``card.json``.
Needs the torch extra and the Fashion-MNIST Debian package.

A model trained on the synthetic event data (``--dataset nfashion-mnist``) is measured on the event
streams themselves: ``evsim datasets nfashion-mnist`` writes the 10 000 test streams to a temporary
directory, ``evsim run --events`` bins and runs them; its samples are the binned frames of the first
test streams (``batch8.npy``, what ``--input`` takes) and the streams (``events8.npy``, what
``--events`` takes).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

N_SAMPLES = 8


def evsim(*args) -> dict | None:
    cmd = [sys.executable, "-m", "evsim.cli", *map(str, args)]
    print("$ evsim " + " ".join(map(str, args)), file=sys.stderr)
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode not in (0, 1) or (out.returncode == 1 and "verify" not in args):
        sys.exit(f"command failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout) if "--json" in args else None


def main(model_dir: str):
    import tempfile

    from evsim.bridge.checkpoint import load_checkpoint
    from evsim.datasets import load_fashion_mnist, nfashion_frames

    d = Path(model_dir)
    ckpt, h5 = d / "model.pt", d / "folded.h5"
    record = load_checkpoint(ckpt)[1]["record"]
    events = record["train_config"].get("dataset") == "nfashion-mnist"
    evsim("export", "-c", ckpt, "-o", h5, "--force")
    samples = d / "samples"
    samples.mkdir(exist_ok=True)
    if events:
        cfg = record["train_config"]
        x, y = nfashion_frames("test", cfg["timesteps"], cfg["event_channels"], limit=N_SAMPLES)
    else:
        x, y = load_fashion_mnist("test")
    for i in range(N_SAMPLES):
        np.save(samples / f"sample{i}.npy", x[i])
    np.save(samples / f"batch{N_SAMPLES}.npy", x[:N_SAMPLES])
    np.save(samples / f"labels{N_SAMPLES}.npy", y[:N_SAMPLES])

    info = evsim("info", h5, "--json")
    with tempfile.TemporaryDirectory() as tmp:
        if events:
            evsim("datasets", "nfashion-mnist", "--out", tmp, "--split", "test")
            ev = np.load(Path(tmp) / "test_events.npy")
            np.save(samples / f"events{N_SAMPLES}.npy", ev[ev["sample"] < N_SAMPLES])
            data = ["--events", Path(tmp) / "test_events.npy", "--labels", Path(tmp) / "test_labels.npy"]
        else:
            data = ["--dataset", "fashion-mnist"]
        full64 = evsim("run", "-w", h5, *data, "--dtype", "float64", "--json")
        full32 = evsim("run", "-w", h5, *data, "--dtype", "float32", "--json")
    ver = evsim("verify", "-w", h5, "-c", ckpt, "-i", samples / f"batch{N_SAMPLES}.npy", "--json")

    if record["train_config"].get("init") and (d / "init.pt").exists():
        record = dict(record, init_record=load_checkpoint(d / "init.pt")[1]["record"])
    card = {"name": d.name, "events": events, "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "info": {k: info[k] for k in ("timesteps", "input_shape", "encoding", "neurons", "parameters", "outputs")},
            "training": record, "accuracy_float64": full64["accuracy"], "accuracy_float32": full32["accuracy"],
            "accuracy_torch": record["history"][-1]["test_acc_torch"],
            "populations": full64["populations"], "projections": full64["projections"],
            "totals": full64["totals"], "energy": full64["energy"], "verify": ver,
            "timing_float32": full32["timing"]}
    (d / "card.json").write_text(json.dumps(card, indent=2))
    (d / "CARD.md").write_text(render(card, d))
    print(f"wrote {d / 'CARD.md'}", file=sys.stderr)


def equivalent_command(cfg: dict) -> str:
    extra = ""
    if cfg.get("dataset", "fashion-mnist") != "fashion-mnist":
        extra = f" --dataset {cfg['dataset']} --event-channels {cfg['event_channels']}"
    for key, flag in (("tmpr", "--tmpr"), ("rate_reg", "--rate-reg"), ("grad_clip", "--grad-clip"),
                      ("train_limit", "--train-limit")):
        if cfg.get(key):
            extra += f" {flag} {cfg[key]}"
    return (f"evsim train --arch {cfg['arch']} --width {cfg['width']} --neuron {cfg['neuron']} -T {cfg['timesteps']} "
            f"--epochs {cfg['epochs']} --batch-size {cfg['batch_size']} --lr {cfg['lr']} --seed {cfg['seed']}"
            f"{extra} --out model.pt")


def _init_lines(c: dict, d: Path) -> list[str]:
    """Fine-tuned models ship the checkpoint they started from as ``init.pt``; say how it was trained."""
    init = c["training"].get("init_record")
    if not init:
        return []
    h = init["history"][-1]
    return [f"- Fine-tuned: training started from the checkpoint given to `--init`, shipped here as `{d}/init.pt` "
            f"(it was `{c['training']['train_config']['init']}` when this run started). That checkpoint was trained "
            f"with `{init.get('command', equivalent_command(init['train_config']))}` and ended at "
            f"{100 * h['test_acc_torch']:.2f} % (PyTorch)"
            + (f", {100 * h['test_firing_rate']:.1f} % firing." if "test_firing_rate" in h else ".")]


def render(c: dict, d: Path) -> str:
    cfg = c["training"]["train_config"]
    t, e = c["totals"], c["energy"]
    lines = [
        f"# Model card: {c['name']}",
        "",
        f"Generated by `python models/card.py {d}` on {c['date']}; every number below comes from that run.",
        "",
        "## What it is",
        f"- Architecture: `{cfg['arch']}` (width {cfg['width']}), neuron `{cfg['neuron']}`, T = {cfg['timesteps']}, "
        + (f"spike-encoded input {tuple(c['info']['input_shape'])}: event frames." if c.get("events") else
           f"direct encoding of {tuple(c['info']['input_shape'])} images scaled to [0, 1]."),
        f"- {c['info']['neurons']} neurons, {c['info']['parameters']} parameters after folding.",
        ("- Data: the synthetic N-Fashion-MNIST (SYNTHETIC event data: the real Fashion-MNIST images moved along "
         "three saccades in front of the simulated event camera of `evsim/eventcam.py`, seed 0, made by `evsim "
         "datasets nfashion-mnist`; no sensor recorded it), each stream binned into T equal windows "
         f"({cfg['event_channels']} channel(s)); "
         f"{cfg.get('train_limit') or 60000} training streams, horizontal flips; tested on all 10 000 test streams."
         if c.get("events") else
         "- Data: Fashion-MNIST (Debian package `dataset-fashion-mnist`), 60 000 training images, "
         "horizontal flips; tested on all 10 000 test images."),
        (f"- Training command: `{c['training']['command']}`" if "command" in c["training"] else
         f"- Trained with the config below; the same run from the command line: `{equivalent_command(cfg)}`"),
        f"- Training config: `{json.dumps(cfg, sort_keys=True)}`",
        *_init_lines(c, d),
        "",
        "## Accuracy on the 10 000 test " + ("streams" if c.get("events") else "images"),
        "| measured by | accuracy |",
        "|---|---|",
        (f"| evsim engine, float64 (`evsim datasets nfashion-mnist --out DIR`, then `evsim run -w {d}/folded.h5 "
         f"--events DIR/test_events.npy --labels DIR/test_labels.npy --dtype float64`) "
         if c.get("events") else
         f"| evsim engine, float64 (`evsim run -w {d}/folded.h5 --dataset fashion-mnist --dtype float64`) ")
        + f"| {100 * c['accuracy_float64']:.2f} % |",
        f"| evsim engine, float32 (default dtype) | {100 * c['accuracy_float32']:.2f} % |",
        f"| PyTorch, at the end of training | {100 * c['accuracy_torch']:.2f} % |",
        *(["", f"Trained quantisation-aware for {cfg['qat_bits']}-bit weights (`--qat-bits`): the PyTorch figure "
           f"is the fake-quantised network's, i.e. what `evsim quantize --weight-bits {cfg['qat_bits']}` of "
           f"`folded.h5` gives; the float rows run the unquantised fold of weights tuned for their quantised form."]
          if cfg.get("qat_bits") else []),
        "",
        "## Verification",
        f"`evsim verify -w {d}/folded.h5 -c {d}/model.pt -i {d}/samples/batch{N_SAMPLES}.npy`: "
        f"{'PASSED' if c['verify']['passed'] else 'FAILED'}; identical spikes (float64) in every population: "
        f"{all(lay['identical_float64'] == 1.0 for lay in c['verify']['layers'])}; largest output difference "
        f"{c['verify']['max_output_diff_float64']:.2e}; float32 engine: "
        f"{100 * c['verify']['spikes_identical_float32']:.4f} % identical spikes, predictions agree "
        f"{100 * c['verify']['predictions_agree_float32']:.1f} %.",
        "",
        "## Activity per population (mean per test image)",
        "| population | neurons | +1 spikes | -1 spikes | firing rate |",
        "|---|---|---|---|---|",
    ]
    for p in c["populations"]:
        lines.append(f"| {p['name']} | {p['neurons']} | {p['spikes_pos']:.0f} | {p['spikes_neg']:.0f} | "
                     f"{100 * p['firing_rate']:.2f} % |")
    lines += ["", "## Operations per test image",
              "Counted as [docs/COUNTING.md](../../docs/COUNTING.md) says. "
              + ("The input is spikes: its events are synaptic additions like every other spike's, and no "
                 "layer multiplies." if c.get("events") else
                 "MAC: the direct-encoded first layer, once per image, on its non-zero pixels (the default) "
                 "and on all positions."), "",
              "| projection | kind | events | AC | MAC (non-zero pixels) | MAC (all positions) | ANN MAC |",
              "|---|---|---|---|---|---|---|"]
    for p in c["projections"]:
        lines.append(f"| {p['name']} | {p['kind']} | {p['events_in']:.0f} | {p['synaptic_ops']:.0f} | "
                     f"{p['macs_nonzero_input']:.0f} | {p['macs_all_positions']:.0f} | {p['dense_macs']} |")
    lines += [
        "",
        f"Totals: {t['synaptic_ops']:.0f} AC + {t['macs_nonzero_input']:.0f} MAC per image "
        f"({t['macs_all_positions']:.0f} MAC counting every pixel; ANN of the same network: "
        f"{t['ann_macs']} MAC); overall firing rate {100 * t['firing_rate']:.2f} %; "
        f"{t['neuron_updates']:.0f} neuron updates.",
        "",
        f"Energy ({e['model']}: {e['source']}): SNN {e['snn_uj']:.3f} uJ vs ANN {e['ann_uj']:.3f} uJ per image "
        f"({e['ratio_ann_over_snn']:.2f}x); synaptic path only.",
        "",
        f"Engine speed during the float32 test-set run: {c['timing_float32']['samples_per_s']:.0f} samples/s "
        f"on {c['machine']} (see bench/ for the measured comparison with PyTorch).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild a shipped model's folded.h5, samples and model card "
                                             "from its model.pt (needs the torch extra and Fashion-MNIST).")
    ap.add_argument("model_dir", nargs="?", default="models/fmnist-resnet8-ternary",
                    help="directory holding model.pt (default: %(default)s)")
    a = ap.parse_args()
    if not (Path(a.model_dir) / "model.pt").is_file():
        ap.exit(1, f"card.py: error: {a.model_dir}/model.pt: no such checkpoint\n")
    main(a.model_dir)

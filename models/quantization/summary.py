"""The README's table of what post-training quantisation costs, from the files run.sh wrote.

    python models/quantization/summary.py

Reads models/quantization/<model>-float.json (evsim eval, float32) and <model>-bits.csv (evsim sweep
over weight bits, 16-bit membranes) for each shipped model and prints one Markdown table: accuracy,
firing rate, synaptic operations (AC) and synaptic energy per test image. Energy: 45 nm adds
(Horowitz, ISSCC 2014) of the arithmetic that runs, fp32 for the float network and int32 for the
fixed-point ones (the first layer's MACs at fp32 / int32 multiply-add); evsim's energy model, per image.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["fmnist-resnet8-ternary", "fmnist-resnet8-ternary-e4", "fmnist-resnet8-ternary-sparse"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=HERE)
    a = ap.parse_args()
    print("| model | arithmetic | accuracy | firing rate | AC per image | synaptic energy per image |")
    print("|---|---|---|---|---|---|")
    for m in MODELS:
        f = json.loads((a.dir / f"{m}-float.json").read_text())
        print(f"| {m} | float32 | {100 * f['accuracy']:.2f} % | {100 * f['totals']['firing_rate']:.2f} % | "
              f"{f['totals']['synaptic_ops'] / 1e6:.2f} M | {f['energy']['snn_uj']:.2f} uJ (fp32) |")
        with open(a.dir / f"{m}-bits.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                acc = float(r["accuracy"])
                drop = 100 * (acc - f["accuracy"])
                print(f"| | {r['weight_bits']}-bit weights, {r['membrane_bits']}-bit membranes | {100 * acc:.2f} % "
                      f"({drop:+.2f}) | {100 * float(r['firing_rate']):.2f} % | "
                      f"{float(r['synaptic_ops']) / 1e6:.2f} M | {float(r['energy_uj']):.2f} uJ (int32) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

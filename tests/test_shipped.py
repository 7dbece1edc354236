"""The shipped trained model: it verifies spike-exactly, runs from the README command, and its
model card's accuracy is what the engine measures on the full Fashion-MNIST test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evsim.cli import main

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist-resnet8-ternary"   # the README's model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_shipped_files_exist():
    for f in ("model.pt", "folded.h5", "CARD.md", "card.json", "samples/sample0.npy", "samples/batch8.npy",
              "samples/labels8.npy"):
        assert (MODEL / f).is_file(), f


def test_shipped_model_verifies_on_its_samples():
    r = invoke("verify", "-w", MODEL / "folded.h5", "-c", MODEL / "model.pt", "-i", MODEL / "samples/batch8.npy",
               "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["passed"]
    assert all(layer["identical_float64"] == 1.0 for layer in res["layers"])
    assert res["max_output_diff_float64"] <= 1e-9
    assert res["predictions_agree_float64"] == 1.0


def test_readme_main_command():
    r = invoke("run", "--weights", MODEL / "folded.h5", "--input", MODEL / "samples/sample0.npy")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("prediction: ")
    assert "energy [45nm-fp32]" in r.output
    assert "layers.3.shortcut" in r.output   # the residual block's identity shortcut is reported


def test_per_layer_counts_are_consistent():
    r = invoke("run", "-w", MODEL / "folded.h5", "-i", MODEL / "samples/batch8.npy", "--labels",
               MODEL / "samples/labels8.npy", "--json", "--dtype", "float64")
    doc = json.loads(r.output)
    pops = {p["name"]: p for p in doc["populations"]}
    for pr in doc["projections"]:
        if pr["source"] != "input":
            src = pops[pr["source"]]
            assert pr["events_in"] == pytest.approx(src["spikes_pos"] + src["spikes_neg"])
    assert doc["totals"]["spikes_neg"] > 0


@pytest.mark.slow
def test_card_accuracy_is_what_the_engine_measures():
    """Re-measures the test accuracy on all 10 000 images (float32, ~a minute) and compares with the card."""
    card = json.loads((MODEL / "card.json").read_text())
    from evsim import compile_network, read_network, run
    from evsim.datasets import load_fashion_mnist
    x, y = load_fashion_mnist("test")
    net = compile_network(read_network(MODEL / "folded.h5"), "float32")
    acc = float((run(net, x, batch_size=500).predictions == y).mean())
    assert acc == card["accuracy_float32"]
    assert acc >= 0.85   # a trained model, far above chance (10 %); the card states the exact figure
    assert np.isclose(card["accuracy_float64"], acc, atol=0.002)

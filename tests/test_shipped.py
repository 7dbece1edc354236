"""The shipped trained models: each verifies spike-exactly; the README's model runs from the README
command, and its model card's accuracy is what the engine measures on the full Fashion-MNIST test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evsim.cli import main

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL = MODELS_DIR / "fmnist-resnet8-ternary"   # the README's model
SHIPPED = sorted(d.name for d in MODELS_DIR.iterdir() if (d / "model.pt").exists())


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_shipped_model_is_listed():
    assert {"fmnist-resnet8-ternary", "fmnist-resnet8-ternary-e4", "fmnist-resnet8-ternary-sparse"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_exist(name):
    for f in ("model.pt", "folded.h5", "CARD.md", "card.json", "samples/sample0.npy", "samples/batch8.npy",
              "samples/labels8.npy"):
        assert (MODELS_DIR / name / f).is_file(), f


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_verifies_on_its_samples(name):
    d = MODELS_DIR / name
    r = invoke("verify", "-w", d / "folded.h5", "-c", d / "model.pt", "-i", d / "samples/batch8.npy", "--json")
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


def test_sparse_model_fires_as_its_card_says():
    """The sparse model, measured by the engine on the 8 sample images, fires far less than the main
    model, and its card records a test-set firing rate in the sparse range."""
    card = json.loads((MODELS_DIR / "fmnist-resnet8-ternary-sparse" / "card.json").read_text())
    rates = {}
    for name in ("fmnist-resnet8-ternary", "fmnist-resnet8-ternary-sparse"):
        d = MODELS_DIR / name
        r = invoke("run", "-w", d / "folded.h5", "-i", d / "samples/batch8.npy", "--json")
        rates[name] = json.loads(r.output)["totals"]["firing_rate"]
    assert rates["fmnist-resnet8-ternary-sparse"] < 0.25 < 0.6 < rates["fmnist-resnet8-ternary"]
    assert 0.05 < card["totals"]["firing_rate"] < 0.2


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


def test_event_model_runs_its_streams_as_its_frames():
    """The shipped event-data model: its sample streams (`--events`) give exactly what their binned frames
    (`--input`) give, spike counts included, and it verifies spike-exact from the streams."""
    d = MODELS_DIR / "nfmnist-convnet-binary"
    ev = json.loads(invoke("run", "-w", d / "folded.h5", "--events", d / "samples/events8.npy", "--labels",
                           d / "samples/labels8.npy", "--json", "--dtype", "float64").output)
    fr = json.loads(invoke("run", "-w", d / "folded.h5", "-i", d / "samples/batch8.npy", "--labels",
                           d / "samples/labels8.npy", "--json", "--dtype", "float64").output)
    assert ev["outputs"] == fr["outputs"] and ev["totals"] == fr["totals"]
    assert ev["accuracy"] >= 0.5          # 8 images of a model the card measures at 85.69 % on 10 000
    r = invoke("verify", "-w", d / "folded.h5", "-c", d / "model.pt", "--events", d / "samples/events8.npy",
               "--json")
    assert r.exit_code == 0 and json.loads(r.output)["passed"]
    card = json.loads((d / "card.json").read_text())
    assert card["events"] is True and card["accuracy_float64"] > 0.8

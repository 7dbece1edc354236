"""The command line, through click's CliRunner: reports, JSON, and one-line errors without tracebacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import networks
import reference
from evsim import write_network
from evsim.cli import main

N = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory, residual_file):
    """The residual_net file, 3 valid samples, and the dense reference's answer on them."""
    d = tmp_path_factory.mktemp("cli")
    net = networks.residual_net()
    x = networks.random_input(net, N, seed=5)
    np.save(d / "x.npy", x)
    out, spikes, ops = reference.simulate(net, x)
    return dict(dir=d, weights=str(residual_file), x=str(d / "x.npy"), net=net, xs=x,
                ref_out=out, ref_spikes=spikes, ref_ops=ops)


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)      # click < 8.2: keep stderr apart
    except TypeError:
        return CliRunner()                      # click >= 8.2: always apart


def invoke(*args):
    return _runner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result


def run_json(data, *extra):
    result = ok(invoke("run", "--weights", data["weights"], "--input", data["x"], "--json", *extra))
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------- run
def test_run_prints_predictions_table_and_energy(data):
    before = hashlib.sha256(Path(data["x"]).read_bytes()).hexdigest()
    result = ok(invoke("run", "--weights", data["weights"], "--input", data["x"]))
    out = result.stdout
    names = [f"class{c}" for c in data["ref_out"].argmax(1)]
    assert f"predictions ({N} samples): " + ", ".join(names) in out
    for header in ("population", "+1 spikes", "-1 spikes", "sparsity", "projection", "AC", "MAC", "ANN MAC"):
        assert header in out
    for p in data["net"].populations:
        assert f"\n{p.name} " in out
    for pr in data["net"].projections:
        assert f"\n{pr.name} " in out
    assert "stem -> b1.out" in out and "b2.out -> readout" in out
    assert "energy [45nm-fp32]: SNN " in out and " uJ vs ANN " in out
    assert f"per sample (mean of {N}, T=4, float32)" in out
    # the input is only read
    assert hashlib.sha256(Path(data["x"]).read_bytes()).hexdigest() == before


def test_run_one_sample(data, tmp_path):
    np.save(tmp_path / "one.npy", data["xs"][1])            # no batch axis
    out = ok(invoke("run", "-w", data["weights"], "-i", tmp_path / "one.npy", "--dtype", "float64")).stdout
    best = int(data["ref_out"][1].argmax())
    assert out.startswith(f"prediction: class{best} ({data['ref_out'][1, best]:.3f})")


def test_run_profile_says_where_the_time_went(data):
    """--profile: the same answer, plus every driver step by name in --json and the kernels in the text."""
    plain = run_json(data, "--dtype", "float64")
    doc = run_json(data, "--dtype", "float64", "--profile")
    assert doc["outputs"] == plain["outputs"] and doc["projections"] == plain["projections"]
    names = [p["name"] for p in doc["profile"]["parts"]]
    for n in [p.name for p in data["net"].populations] + [p.name for p in data["net"].projections
                                                          if p.source != "input"]:
        assert n in names
    assert doc["profile"]["samples"] == N and doc["profile"]["driver_s"] > 0
    out = ok(invoke("run", "--weights", data["weights"], "--input", data["x"], "--profile")).stdout
    assert "profile (3 samples" in out or "no clock" in out
    assert "profile" not in plain


@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
def test_run_json_counts_equal_reference(data, conv_mode):
    doc = run_json(data, "--dtype", "float64", "--conv-mode", conv_mode, "--energy-model", "45nm-int8")
    ref_out, ref_spikes, ref_ops = data["ref_out"], data["ref_spikes"], data["ref_ops"]
    assert doc["samples"] == N and doc["timesteps"] == 4 and doc["dtype"] == "float64"
    assert doc["predictions"] == ref_out.argmax(1).tolist()
    for i, top in enumerate(doc["top_k"]):
        assert len(top) == 3 and top[0]["name"] == f"class{top[0]['class']}"
        assert top[0]["score"] == pytest.approx(ref_out[i].max(), abs=1e-12)
    pops = {p["name"]: p for p in doc["populations"]}
    assert list(pops) == [p.name for p in data["net"].populations]
    for name, s in ref_spikes.items():
        assert pops[name]["spikes_pos"] == pytest.approx(float((s == 1).sum()) / N, abs=1e-12)
        assert pops[name]["spikes_neg"] == pytest.approx(float((s == -1).sum()) / N, abs=1e-12)
    projs = {p["name"]: p for p in doc["projections"]}
    assert list(projs) == [p.name for p in data["net"].projections]
    for name, ops in ref_ops.items():
        assert projs[name]["synaptic_ops"] == pytest.approx(float(ops.sum()) / N, abs=1e-12)
    stem = data["net"].projections[0]
    reach = reference.reach(stem, (2, 8, 8))
    assert projs["stem.conv"]["macs_all_positions"] == reach.sum()     # direct input: MAC once
    nonzero = ((data["xs"] != 0) * reach).reshape(N, -1).sum(1)         # the default: non-zero inputs only
    assert projs["stem.conv"]["macs_nonzero_input"] == pytest.approx(nonzero.mean(), abs=1e-9)
    assert doc["mac_basis"] == "nonzero" and projs["stem.conv"]["macs"] == projs["stem.conv"]["macs_nonzero_input"]
    np.testing.assert_allclose(doc["outputs"], ref_out, rtol=0, atol=1e-12)    # raw outputs, every sample
    assert doc["totals"]["synaptic_ops"] == pytest.approx(sum(float(o.sum()) for o in ref_ops.values()) / N)
    assert doc["totals"]["synaptic_ops"] > 0 and doc["totals"]["spikes_neg"] > 0
    assert doc["energy"]["model"] == "45nm-int8"
    assert doc["timing"]["compiled_bytes"] > 0
    assert "accuracy" not in doc


def test_run_labels_report_accuracy(data, tmp_path):
    y = data["ref_out"].argmax(1)
    y[2] = (y[2] + 1) % 5                                    # one wrong label
    np.save(tmp_path / "y.npy", y)
    out = ok(invoke("run", "-w", data["weights"], "-i", data["x"], "--labels", tmp_path / "y.npy",
                    "--dtype", "float64")).stdout
    assert "accuracy: 66.67% (2/3)" in out
    doc = run_json(data, "--labels", tmp_path / "y.npy", "--dtype", "float64")
    assert doc["accuracy"] == pytest.approx(2 / 3) and doc["correct"] == 2


def test_run_limit(data):
    doc = run_json(data, "--limit", 2, "--batch-size", 1)
    assert doc["samples"] == 2 and len(doc["predictions"]) == 2


# --------------------------------------------------------------------------- info
def test_info(data):
    out = ok(invoke("info", data["weights"])).stdout
    assert "evsim network, format v1" in out
    assert "T=4, input (2, 8, 8) (direct encoding, values in [-3, 3])" in out
    assert "classes: class0, class1, class2, class3, class4" in out
    for p in data["net"].populations:
        assert p.name in out
    assert "b1.shortcut" in out and "scale=0.8" in out and "k=3x3 s=2 p=1" in out
    assert "  ternary_lif: ternary LIF, hard reset on either sign" in out      # each model used, described once
    assert "provenance:" in out and "made_by: tests/networks.py residual_net" in out


def test_info_json(data):
    doc = json.loads(ok(invoke("info", data["weights"], "--json")).stdout)
    net = data["net"]
    assert doc["format_version"] == 1 and doc["timesteps"] == 4 and doc["encoding"] == "direct"
    assert doc["input_shape"] == [2, 8, 8] and doc["input_range"] == [-3.0, 3.0]
    assert doc["outputs"] == 5 and doc["class_names"] == net.class_names
    assert [p["name"] for p in doc["populations"]] == [p.name for p in net.populations]
    assert [p["name"] for p in doc["projections"]] == [p.name for p in net.projections]
    assert doc["neurons"] == sum(p.size for p in net.populations)
    assert doc["parameters"] == net.n_params
    b1 = {p["name"]: p for p in doc["projections"]}["b1.conv1"]
    assert b1["nonzero"] == np.count_nonzero(net.projections[1].weight) < b1["params"]
    assert doc["provenance"] == net.provenance
    assert doc["order"] == net.topological_order()


# ------------------------------------------------------------------------- errors
def assert_user_error(result, *fragments):
    """Exit code != 0, one line 'Error: ...' on stderr naming the problem, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


def _make_input(d, kind, x):
    path = d / f"{kind}.npy"
    if kind == "text":
        path.write_text("0.1 0.2 0.3\n")
    elif kind == "npz":
        path = d / "x.npz"
        np.savez(path, x=x)
    elif kind == "wrong_shape":
        np.save(path, x[:, :, :, :7])
    elif kind == "nan":
        x = x.copy()
        x[1, 0, 3, 3] = np.nan
        np.save(path, x)
    elif kind == "out_of_range":
        np.save(path, x * 10)
    elif kind == "object":
        np.save(path, np.array([x[0], "not a number"], dtype=object), allow_pickle=True)
    elif kind == "scalar":
        np.save(path, np.float64(0.5))
    elif kind == "strings":
        np.save(path, np.array(["a", "b"]))
    elif kind == "empty":
        np.save(path, np.zeros((0, 2, 8, 8)))
    elif kind == "truncated":
        buf = (d / "full.npy")
        np.save(buf, x)
        path.write_bytes(buf.read_bytes()[:200])
    return path


@pytest.mark.parametrize("kind, fragments", [
    ("missing", ["input file", "missing.npy: no such file"]),
    ("text", ["text.npy: not a .npy file"]),
    ("npz", ["x.npz: not a .npy file (a .npz archive"]),
    ("wrong_shape", ["input shape (3, 2, 8, 7) does not fit the network: expected (N, 2, 8, 8)"]),
    ("nan", ["input contains NaN"]),
    ("out_of_range", ["but the network expects [-3, 3]"]),
    ("object", ["object.npy: cannot read as a .npy array (Object arrays cannot be loaded"]),
    ("scalar", ["scalar.npy: holds a single value"]),
    ("strings", ["input dtype <U1 is not numeric"]),
    ("empty", ["input holds no samples"]),
    ("truncated", ["truncated.npy: cannot read as a .npy array"]),
])
def test_run_bad_input(data, tmp_path, kind, fragments):
    path = tmp_path / "missing.npy" if kind == "missing" else _make_input(tmp_path, kind, data["xs"])
    before = path.read_bytes() if path.exists() else None
    assert_user_error(invoke("run", "-w", data["weights"], "-i", path), *fragments)
    if before is not None:
        assert path.read_bytes() == before


def test_run_bad_weights(data, tmp_path):
    assert_user_error(invoke("run", "-w", tmp_path / "nothere.h5", "-i", data["x"]), "nothere.h5: no such file")
    (tmp_path / "text.h5").write_text("not hdf5")
    assert_user_error(invoke("run", "-w", tmp_path / "text.h5", "-i", data["x"]), "text.h5: not an HDF5 file")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    assert_user_error(invoke("run", "-w", tmp_path / "other.h5", "-i", data["x"]), "not an evsim network file")
    bad = tmp_path / "nan.h5"
    bad.write_bytes(Path(data["weights"]).read_bytes())
    with h5py.File(bad, "r+") as f:
        f["projections/fc/weight"][0, 0] = np.nan
    assert_user_error(invoke("run", "-w", bad, "-i", data["x"]), "projection 'fc': weight contains NaN")
    assert_user_error(invoke("info", tmp_path / "text.h5"), "not an HDF5 file")
    assert_user_error(invoke("info", tmp_path / "nothere.h5", "--json"), "no such file")


@pytest.mark.parametrize("labels, fragments", [
    (np.array([0, 1]), ["labels must be 3 integers, one per sample; got shape (2,)"]),
    (np.array([0.0, 1.0, 2.0]), ["labels must be 3 integers", "dtype float64"]),
    (None, ["labels file", "no such file"]),
])
def test_run_bad_labels(data, tmp_path, labels, fragments):
    path = tmp_path / "y.npy"
    if labels is not None:
        np.save(path, labels)
    assert_user_error(invoke("run", "-w", data["weights"], "-i", data["x"], "--labels", path), *fragments)


def test_run_bad_options(data):
    assert_user_error(invoke("run", "-w", data["weights"], "-i", data["x"], "--energy-model", "7nm-magic"),
                      "unknown energy model '7nm-magic' (known: 45nm-fp32")
    assert_user_error(invoke("run", "-w", data["weights"], "-i", data["x"], "--dataset", "fashion-mnist"),
                      "give exactly one of --input, --dataset or --events")
    assert_user_error(invoke("run", "-w", data["weights"]), "give exactly one of --input, --dataset or --events")


def test_run_spike_input_must_be_ternary(tmp_path):
    net = networks.mlp_net(encoding="spikes")
    write_network(net, tmp_path / "spk.h5")
    x = networks.random_input(net, 2).astype(np.float32)
    np.save(tmp_path / "ok.npy", x)
    doc = json.loads(ok(invoke("run", "-w", tmp_path / "spk.h5", "-i", tmp_path / "ok.npy", "--json",
                               "--dtype", "float64")).stdout)
    ref_out, _, _ = reference.simulate(net, x)
    assert doc["predictions"] == ref_out.argmax(1).tolist()
    assert doc["totals"]["input_events"] == np.count_nonzero(x) / 2
    x[0, 1, 3] = 0.5
    np.save(tmp_path / "bad.npy", x)
    assert_user_error(invoke("run", "-w", tmp_path / "spk.h5", "-i", tmp_path / "bad.npy"),
                      "spike-encoded input must hold only -1, 0 and 1")

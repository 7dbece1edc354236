"""Fixed-point networks (evsim/fixedpoint.py, docs/FIXED_POINT.md): the quantiser's rules, saturation,
the integer engine against the integer PyTorch reference bit for bit, the file form (format v2) and the
command line (quantize, run, verify, info)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

import networks
from evsim import read_network, write_network
from evsim.bridge.dense import DenseRunner
from evsim.cli import main
from evsim.compiler import compile_network
from evsim.engine import simulate
from evsim.errors import FormatError, NetworkError
from evsim.fixedpoint import (FixedPoint, accumulator_bits, check, quantize, real_outputs, round_half_even,
                              synaptic_input_bits, weight_scale)
from evsim.graph import Network, Population, Projection
from evsim.neurons import NEURON_MODELS
from test_format import assert_same_network

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fmnist-resnet8-ternary"
ALL_MODELS = tuple(NEURON_MODELS)


def same_as_reference(q: Network, x: np.ndarray, dtype: str = "int32", **compile_options):
    """Run the engine and the integer reference; assert every spike and integer output identical."""
    r = simulate(compile_network(q, dtype, **compile_options), x, record=True)
    out, spikes = DenseRunner(q)(torch.from_numpy(np.ascontiguousarray(x)), return_spikes=True)
    assert r.outputs.dtype == np.int64
    np.testing.assert_array_equal(r.outputs, out.numpy())
    assert set(r.spikes) == set(spikes)
    for name, s in spikes.items():
        np.testing.assert_array_equal(r.spikes[name], s.numpy(), err_msg=name)
    return r


# ------------------------------------------------------------------ rounding and scales
def test_round_half_to_even():
    assert round_half_even([0.5, 1.5, -2.5, 2.5, -0.5, 0.49]).tolist() == [0, 2, -2, 2, 0, 0]


def test_quantiser_rounds_weights_half_to_even():
    """max rule, 3 bits (levels +-3): scale = 3 / 3 = 1, so the weights' levels are the weights rounded."""
    pops = [Population("p", (5,), "ternary_lif", {"tau": 0.25, "v_threshold": 0.5})]
    projs = [Projection("in", "input", "p", "identity", scale=1.0),
             Projection("out", "p", "readout", "linear", np.array([[3.0, 1.5, 0.5, -2.5, -0.5]]))]
    net = Network(pops, projs, 2, (5,), encoding="spikes")
    q = quantize(net, 3, scale_rule="max")
    assert q.fixed_point.membrane_unit["readout"] == 1.0
    assert q.projections[1].weight.tolist() == [[3, 2, 0, -2, 0]]


def test_direct_input_rounds_half_to_even_and_clamps():
    fx = FixedPoint(8, 16, 12, {}, input_unit=1.0, input_levels=(-3, 3))
    assert fx.quantise_input(np.array([0.5, 1.5, -2.5, 9.0, -9.0])).tolist() == [0, 2, -2, 3, -3]


def test_scale_rules():
    w = np.array([1.0, -0.2, 0.1, 0.05])
    assert weight_scale(w, 8, "max") == 1.0 / 127
    assert weight_scale(np.zeros((3, 3)), 4) == 0.0
    assert weight_scale(w, 2, "max") == 1.0
    mse = weight_scale(np.array([1.0, 0.6, 0.6, -0.6, 0.6]), 2, "mse")   # one level: the best fit, not the max
    assert 0.6 <= mse <= 0.8
    with pytest.raises(NetworkError, match="unknown scale rule"):
        weight_scale(w, 4, "median")


def test_16_bit_levels_are_within_half_a_level():
    """max rule: no weight clips, so each is within half its level's real value of its quantised value."""
    net = networks.residual_net()
    q = quantize(net, 16, scale_rule="max")
    fx = q.fixed_point
    for pr, qr in zip(net.projections, q.projections):
        if pr.kind == "identity" or qr.name in fx.rescale:
            continue
        unit = fx.membrane_unit[qr.target]
        err = np.abs(qr.weight * unit - pr.weight).max()
        assert err <= fx.weight_scale[qr.name] / 2 * (1 + 1e-9), qr.name


def test_two_bits_is_one_step_per_projection():
    q = quantize(networks.residual_net(), 2)
    for pr in q.projections:
        if pr.kind == "identity" or pr.name in q.fixed_point.rescale:
            continue
        levels = np.unique(pr.weight / q.fixed_point.steps[pr.name])
        assert set(levels.tolist()) <= {-1.0, 0.0, 1.0}
        assert len(levels) > 1, pr.name
    x = networks.random_input(q, 3, seed=2)
    same_as_reference(q, x)


def test_zero_weight_projection_and_pruned_shortcut():
    net = networks.residual_net(shortcut_scale=0.0)
    next(pr for pr in net.projections if pr.name == "b2.conv2").weight[:] = 0.0
    q = quantize(net, 4)
    pr = {p.name: p for p in q.projections}
    assert q.fixed_point.steps["b2.conv2"] == 1 and not pr["b2.conv2"].weight.any()
    assert pr["b1.shortcut"].scale == 0.0
    same_as_reference(q, networks.random_input(q, 2, seed=3))


def test_real_outputs_are_readout_units_over_T():
    q = quantize(networks.residual_net(), 8)
    out = np.array([[8, -4]])
    np.testing.assert_allclose(real_outputs(q, out), out * q.fixed_point.membrane_unit["readout"] / q.timesteps)


def test_quantize_refuses_bad_settings():
    net = networks.residual_net()
    with pytest.raises(NetworkError, match="weight bits"):
        quantize(net, 1)
    with pytest.raises(NetworkError, match="already fixed point"):
        quantize(quantize(net, 4), 4)
    with pytest.raises(NetworkError, match="more than 32"):
        quantize(net, 16, membrane_bits=32)


# ------------------------------------------------------------------ saturation
def _saturating_net(th: int) -> Network:
    """input (3 spike channels, 100 units each) -> one binary_lif_sub neuron with 8-bit membrane, no
    leak (tau = 1), threshold ``th`` -> readout counting its spikes. Reset by subtraction keeps what
    saturation left, so the next step shows it."""
    pops = [Population("p", (1,), "binary_lif_sub", {"tau": 4096.0, "v_threshold": float(th)})]
    projs = [Projection("w", "input", "p", "linear", np.array([[100.0, 100.0, 100.0]])),
             Projection("out", "p", "readout", "linear", np.array([[1.0]]))]
    fx = FixedPoint(2, 8, 12, {"p": 1.0, "readout": 1.0}, steps={"w": 100, "out": 1},
                    weight_scale={"w": 100.0, "out": 1.0})
    net = Network(pops, projs, 2, (3,), encoding="spikes", fixed_point=fx)
    fx.accumulator_bits = accumulator_bits(net)
    return net.validate()


def test_membrane_saturates_at_the_top():
    """Step 0: +200 saturates to 127 and fires (th 100), leaving 27; unsaturated it would leave 100 and
    fire again at step 1."""
    net = _saturating_net(100)
    x = np.zeros((1, 2, 3), dtype=np.int8)
    x[0, 0, :2] = 1
    r = same_as_reference(net, x)
    assert r.spikes["p"][:, 0, 0].tolist() == [1, 0]
    assert r.outputs.tolist() == [[1]]


def test_membrane_saturates_at_the_bottom():
    """Step 0: -300 saturates to -128; step 1: +200 brings it to 72 >= 50 and fires (unsaturated: -100)."""
    net = _saturating_net(50)
    x = np.zeros((1, 2, 3), dtype=np.int8)
    x[0, 0, :] = -1
    x[0, 1, :2] = 1
    r = same_as_reference(net, x)
    assert r.spikes["p"][:, 0, 0].tolist() == [0, 1]


# ------------------------------------------------------------------ engine == integer reference
@pytest.mark.parametrize("encoding", ["direct", "spikes"])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_engine_matches_integer_reference(model, encoding):
    net = networks.residual_net(model=model, encoding=encoding)
    x = networks.random_input(net, 3, seed=4)
    q = quantize(net, 4)
    assert q.fixed_point.accumulator_bits > 16
    r = same_as_reference(q, x, "int32")
    assert sum(int(np.count_nonzero(s)) for s in r.spikes.values()) > 0
    q16 = quantize(net, 4, membrane_bits=10)          # small membranes: the accumulators fit int16
    assert q16.fixed_point.accumulator_bits <= 16
    r32 = same_as_reference(q16, x, "int32")
    r16 = same_as_reference(q16, x, "int16")
    np.testing.assert_array_equal(r16.outputs, r32.outputs)


def _same_runs(a, b):
    """Two runs with the same outputs, spikes and counters."""
    np.testing.assert_array_equal(a.outputs, b.outputs)
    for k, v in b.spikes.items():
        np.testing.assert_array_equal(a.spikes[k], v, err_msg=k)
    for attr in ("spikes_pos", "spikes_neg", "events_in", "synaptic_ops"):
        for k, v in getattr(b.counters, attr).items():
            np.testing.assert_array_equal(getattr(a.counters, attr)[k], v, err_msg=f"{attr} {k}")


@pytest.mark.parametrize("encoding", ["direct", "spikes"])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_narrow_synaptic_input_is_the_int32_run(model, encoding):
    """An int32 run whose synaptic input of a step fits 16 bits sums it apart, in int16 (weights in int16,
    32 lanes a vector), and adds it to the int32 membranes when the population fires: every spike, output
    and counter as the all-int32 run and the integer reference, for every neuron model, and again when
    the batch's workspace (its int16 sums, left zero by the previous run) is reused."""
    net = networks.residual_net(model=model, encoding=encoding)
    x = networks.random_input(net, 3, seed=5)
    q = quantize(net, 4)
    assert q.fixed_point.accumulator_bits > 16 and synaptic_input_bits(q) <= 16
    narrow = compile_network(q, "int32")
    wide = compile_network(q, "int32", narrow_synaptic=False)
    assert narrow.synaptic_dtype == np.int16 and narrow.program.fbuf.dtype == np.int16
    assert wide.synaptic_dtype == np.int32 and wide.program.fbuf.dtype == np.int32
    r = same_as_reference(q, x, "int32")
    _same_runs(r, same_as_reference(q, x, "int32", narrow_synaptic=False))
    other = networks.random_input(net, 3, seed=6)
    _same_runs(simulate(narrow, other, record=True), simulate(wide, other, record=True))
    _same_runs(simulate(narrow, x, record=True), r)            # the reused workspace starts clean


@pytest.mark.parametrize("extra", [0, 1])
def test_synaptic_input_at_the_int16_bound(extra):
    """A neuron whose synaptic input reaches 32767 + ``extra`` in a step: every source neuron fires +1 at
    every step (its bias is the threshold) through weights 127 and 90 + ``extra`` levels of a step 151. At
    32767 the sum fits int16 and the run keeps it there, exactly; one level more and it stays in int32."""
    q = quantize(networks.mlp_net(encoding="direct", hidden=16), 8, membrane_bits=16)
    fx = q.fixed_point
    pr = {p.name: p for p in q.projections}
    th = next(p for p in q.populations if p.name == "h1").params["v_threshold"]
    pr["fc1"].bias = np.full(pr["fc1"].weight.shape[0], float(th))
    step = 151
    w = np.zeros_like(pr["fc2"].weight)
    w[0, 0], w[0, 1] = 127 * step, (90 + extra) * step
    w[1:, 2:5] = -3 * step
    pr["fc2"].weight, fx.steps["fc2"] = w, step
    fx.accumulator_bits = accumulator_bits(q)
    check(q)
    assert synaptic_input_bits(q) == 16 + extra
    assert compile_network(q, "int32").synaptic_dtype == (np.int16 if extra == 0 else np.int32)
    x = np.zeros((2,) + tuple(q.input_shape))
    x[1] = networks.random_input(q, 1, seed=2)[0]
    r = same_as_reference(q, x, "int32")
    assert np.all(r.spikes["h1"][:, 0] == 1)                   # the bound is reached at every step
    _same_runs(r, same_as_reference(q, x, "int32", narrow_synaptic=False))


def test_int16_refused_when_accumulators_need_more():
    q = quantize(networks.residual_net(), 8)
    assert q.fixed_point.accumulator_bits > 16
    with pytest.raises(NetworkError, match="int16 cannot hold them"):
        compile_network(q, "int16")


def test_dtypes_refused_across_kinds():
    net = networks.residual_net()
    with pytest.raises(NetworkError, match="fixed-point networks only"):
        compile_network(net, "int32")
    with pytest.raises(NetworkError, match="integer arithmetic"):
        compile_network(quantize(net, 8), "float64")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), model=st.sampled_from(ALL_MODELS), encoding=st.sampled_from(["direct", "spikes"]),
       weight_bits=st.integers(2, 12), membrane_bits=st.integers(8, 20), rule=st.sampled_from(["mse", "max"]))
def test_quantize_always_gives_a_checked_network_the_engine_runs_exactly(seed, model, encoding, weight_bits,
                                                                        membrane_bits, rule):
    net = networks.mlp_net(seed=seed, model=model, encoding=encoding)
    if model.startswith("cuba"):
        for p in net.populations:
            p.params = dict(networks.CUBA)
    q = quantize(net, weight_bits, membrane_bits=membrane_bits, scale_rule=rule)
    check(q)
    same_as_reference(q, networks.random_input(q, 2, seed=seed))


# ------------------------------------------------------------------ the file
def test_round_trip_and_versions(tmp_path):
    net = networks.residual_net(model="ctsn_static")
    q = quantize(net, 4)
    back = read_network(write_network(q, tmp_path / "q.h5"))
    assert_same_network(q, back)
    assert back.fixed_point == q.fixed_point
    write_network(net, tmp_path / "real.h5")
    with h5py.File(tmp_path / "q.h5") as f, h5py.File(tmp_path / "real.h5") as g:
        assert f.attrs["format_version"] == 2 and "fixed_point" in f.attrs
        assert g.attrs["format_version"] == 1 and "fixed_point" not in g.attrs     # old readers still read it
    x = networks.random_input(q, 2)
    np.testing.assert_array_equal(simulate(compile_network(back, "int32"), x).outputs,
                                  simulate(compile_network(q, "int32"), x).outputs)


@pytest.fixture(scope="module")
def fixed_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fx") / "q.h5"
    write_network(quantize(networks.residual_net(), 4), path)
    return path


def _edit_json(**changes):
    def edit(f):
        d = json.loads(f.attrs["fixed_point"])
        d.update(changes)
        f.attrs["fixed_point"] = json.dumps(d)
    return edit


def _set(key, value):
    def edit(f):
        f.attrs[key] = value
    return edit


def _weight(name, fn):
    def edit(f):
        ds = f[f"projections/{name}/weight"]
        ds[...] = fn(ds[...])
    return edit


def _param(pop, key, value):
    def edit(f):
        f[f"populations/{pop}"].attrs[key] = value
    return edit


def _drop_key(f):
    d = json.loads(f.attrs["fixed_point"])
    del d["steps"]
    f.attrs["fixed_point"] = json.dumps(d)


def _rename_step(f):
    d = json.loads(f.attrs["fixed_point"])
    d["steps"]["nowhere"] = d["steps"].pop("b1.conv1")
    f.attrs["fixed_point"] = json.dumps(d)


HOSTILE = {
    "not JSON": (_set("fixed_point", "{weight_bits: 4"), FormatError, "not valid JSON"),
    "a JSON list": (_set("fixed_point", "[1, 2]"), FormatError, "exactly the keys"),
    "not text": (_set("fixed_point", np.int64(4)), FormatError, "must be UTF-8 text"),
    "missing key": (_drop_key, FormatError, "exactly the keys"),
    "extra key": (_edit_json(zero_point=0), FormatError, "exactly the keys"),
    "bits as text": (_edit_json(weight_bits="4"), FormatError, "weight_bits must be an integer"),
    "bits as bool": (_edit_json(weight_bits=True), FormatError, "weight_bits must be an integer"),
    "bits out of range": (_edit_json(weight_bits=40), FormatError, "weight_bits must be an integer in [2, 16]"),
    "NaN unit": (_edit_json(input_unit=float("nan")), FormatError, "input_unit must be a positive finite"),
    "huge integer": (_set("fixed_point", '{"weight_bits": 1' + "0" * 5000 + "}"), FormatError, "not valid JSON"),
    "unknown projection": (_rename_step, NetworkError, "not a projection"),
    "non-integer weight": (_weight("b1.conv1", lambda w: w + 0.5), NetworkError, "must be integers"),
    "levels beyond the bits": (_weight("b1.conv1", lambda w: w * 100), NetworkError, "levels within +-7"),
    "non-integer threshold": (_param("b1.mid", "v_threshold", 10.5), NetworkError, "must be an integer"),
    "multiplier over 1": (_param("b1.mid", "tau", 2.0 ** 20), NetworkError, "more than 1"),
    "accumulator lie": (_edit_json(accumulator_bits=16), NetworkError, "accumulator_bits is 16"),
    "rescale overflow": (_edit_json(rescale={"stem.conv": [2 ** 61, 0]}), NetworkError, "overflow 64 bits"),
    "v1 with fixed_point": (_set("format_version", np.int64(1)), FormatError, "needs version 2"),
    "v3 with fixed_point": (_set("format_version", np.int64(3)), FormatError, "needs version 2"),
    "v4": (_set("format_version", np.int64(4)), FormatError, "format version 4 is not supported"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_fixed_point_is_one_line(tmp_path, fixed_file, case):
    edit, error, message = HOSTILE[case]
    path = tmp_path / "bad.h5"
    path.write_bytes(fixed_file.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(error) as e:
        read_network(path)
    text = str(e.value)
    assert "\n" not in text and message in text and len(text) < 400, text


def test_version_2_without_fixed_point_is_refused(tmp_path, residual_file):
    path = tmp_path / "v2.h5"
    path.write_bytes(Path(residual_file).read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(2)
    with pytest.raises(FormatError, match="has no attribute 'fixed_point'"):
        read_network(path)


# ------------------------------------------------------------------ command line
def invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def one_line_error(r, code=1):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    if code == 2:          # click's usage errors: "Usage: ...", "Try ...", then the one line
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def shipped_q8(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "q8.h5"
    r = invoke("quantize", "--weights", SHIPPED / "folded.h5", "--weight-bits", 8, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r.stdout


def test_cli_quantize_summary_and_overwrite(shipped_q8):
    out, text = shipped_q8
    assert "8-bit weights, 16-bit membranes" in text and "accumulators need 20 bits" in text
    assert "int16 needs at most 16" in text and "layers.3.shortcut" in text and "step / rescale" in text
    assert "a step's synaptic input needs 16 bits (an int32 run sums it in int16)" in text
    before = out.read_bytes()
    err = one_line_error(invoke("quantize", "-w", SHIPPED / "folded.h5", "--weight-bits", 4, "-o", out))
    assert "--force" in err and out.read_bytes() == before
    r = invoke("quantize", "-w", SHIPPED / "folded.h5", "--weight-bits", 8, "-o", out, "--force", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["accumulator_bits"] == 20 and out.read_bytes() == before     # deterministic


def test_cli_run_and_verify_a_quantised_shipped_model(shipped_q8):
    out, _ = shipped_q8
    x, y = SHIPPED / "samples" / "batch8.npy", SHIPPED / "samples" / "labels8.npy"
    r = invoke("run", "-w", out, "-i", x, "--labels", y, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dtype"] == "int32" and doc["accuracy"] >= 0.75
    q = read_network(out)
    raw = np.array(doc["outputs_int"])
    np.testing.assert_allclose(doc["outputs"], real_outputs(q, raw))
    assert doc["predictions"] == raw.argmax(1).tolist()
    text = invoke("run", "-w", out, "-i", SHIPPED / "samples" / "sample0.npy").stdout
    best = doc["top_k"][0][0]
    assert text.startswith(f"prediction: {best['name']} ({best['score']:.3f})")
    # integer adds are what runs: the energy model follows unless one is asked for
    assert doc["energy"]["model"] == "45nm-int32" and "energy [45nm-int32]" in text
    r = invoke("run", "-w", out, "-i", x, "--json", "--energy-model", "45nm-fp32")
    assert json.loads(r.stdout)["energy"]["model"] == "45nm-fp32"

    r = invoke("verify", "-w", out, "-i", x)
    assert r.exit_code == 0, r.output
    assert "PASSED: every spike and every integer output identical" in r.stdout and "int32 identical" in r.stdout


def test_cli_verify_fails_on_a_differing_reference(shipped_q8, monkeypatch):
    """The verdict depends on the comparison: one flipped reference spike fails it, exit 1."""
    import evsim.bridge.verify as verify_mod
    real = verify_mod.integer_reference

    def flipped(*a, **kw):
        out, spikes = real(*a, **kw)
        s = spikes["layers.3.sn1"]
        s.reshape(-1)[0] = 1 - s.reshape(-1)[0]
        return out, spikes

    monkeypatch.setattr(verify_mod, "integer_reference", flipped)
    r = invoke("verify", "-w", shipped_q8[0], "-i", SHIPPED / "samples" / "sample0.npy", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert not doc["passed"] and doc["first_divergence"]["population"] == "layers.3.sn1"


def test_cli_dtype_refusals(shipped_q8):
    x = SHIPPED / "samples" / "sample0.npy"
    err = one_line_error(invoke("run", "-w", shipped_q8[0], "-i", x, "--dtype", "float64"))
    assert "fixed-point network" in err and "int32" in err
    err = one_line_error(invoke("run", "-w", SHIPPED / "folded.h5", "-i", x, "--dtype", "int16"))
    assert "fixed-point networks only" in err
    err = one_line_error(invoke("run", "-w", shipped_q8[0], "-i", x, "--dtype", "int16"))
    assert "20 bits" in err


def test_cli_verify_and_info_modes(shipped_q8, tmp_path):
    x = SHIPPED / "samples" / "sample0.npy"
    err = one_line_error(invoke("verify", "-w", SHIPPED / "folded.h5", "-i", x), code=2)
    assert "--checkpoint" in err
    err = one_line_error(invoke("verify", "-w", shipped_q8[0], "-c", SHIPPED / "model.pt", "-i", x), code=2)
    assert "leave out" in err
    r = invoke("info", shipped_q8[0])
    assert r.exit_code == 0 and "format v2, fixed point" in r.stdout and "accumulators need 20 bits" in r.stdout
    doc = json.loads(invoke("info", "--json", shipped_q8[0]).stdout)
    assert doc["format_version"] == 2 and doc["fixed_point"]["weight_bits"] == 8
    assert doc["fixed_point"]["synaptic_input_bits"] == 16
    assert json.loads(invoke("info", "--json", SHIPPED / "folded.h5").stdout)["format_version"] == 1


def test_cli_quantize_refuses_bad_input_in_one_line(tmp_path, shipped_q8):
    err = one_line_error(invoke("quantize", "-w", shipped_q8[0], "--weight-bits", 4, "-o", tmp_path / "qq.h5"))
    assert "already fixed point" in err and not (tmp_path / "qq.h5").exists()
    err = one_line_error(invoke("quantize", "-w", SHIPPED / "folded.h5", "--weight-bits", 16, "--membrane-bits", 32,
                                "-o", tmp_path / "qq.h5"))
    assert "more than 32" in err and not (tmp_path / "qq.h5").exists()


# ------------------------------------------------------------------ the fast paths give the same numbers
def _nonzero_ops(q: Network, x: np.ndarray, r) -> dict:
    """Each projection's synaptic operations per sample, from the recorded spikes: every event costs its
    neuron's non-zero synapses (tests/reference.py's count)."""
    import reference
    from evsim.graph import INPUT
    out = {}
    for pr in q.projections:
        if pr.source == INPUT:
            if q.encoding == "direct":
                continue
            nz = np.moveaxis(x != 0, 1, 0)                       # (T, N, *shape)
        else:
            nz = r.spikes[pr.source] != 0
        reach = reference.reach(pr, q.shape_of(pr.source))
        out[pr.name] = (nz * reach[None, None]).reshape(nz.shape[0], nz.shape[1], -1).sum(axis=(0, 2))
    return out


@pytest.mark.parametrize("dtype", ["int32", "int16"])
@pytest.mark.parametrize("make", ["residual", "mlp"])
@pytest.mark.parametrize("encoding", ["direct", "spikes"])
def test_counters_are_the_nonzero_synapses_of_the_spikes(make, encoding, dtype):
    """Quantisation rounds weights to zero; zero weights are added (the runs stay whole: conv rows, dense
    CSR rows) but count no operation. The driver counts them from per-neuron spike tallies, the kernels
    per event where the source is the input: both equal the reference's count."""
    net = (networks.residual_net(encoding=encoding, prune=0.3) if make == "residual"
           else networks.mlp_net(encoding=encoding, hidden=24, prune=0.3))
    x = networks.random_input(net, 3, seed=7)
    q = quantize(net, 3, membrane_bits=10)
    assert any(np.count_nonzero(pr.weight == 0) for pr in q.projections if pr.weight is not None)
    r = same_as_reference(q, x, dtype)
    want = _nonzero_ops(q, x, r)
    for name, ops in want.items():
        np.testing.assert_array_equal(r.counters.synaptic_ops[name], ops, err_msg=name)
    assert sum(int(v.sum()) for v in want.values()) > 0


def test_spike_tallies_flush_before_they_overflow():
    """A neuron's spikes are tallied in a byte between flushes: over 255 steps, with neurons firing at every
    step, the count is still exact (and the profiled run counts the same)."""
    net = networks.mlp_net(encoding="spikes", timesteps=300, hidden=24, prune=0.3)
    for p in net.projections:
        if p.target == "h1":
            p.bias = np.full(p.weight.shape[0], 4.0)          # h1 fires at every step
    x = networks.random_input(net, 2, seed=3)
    q = quantize(net, 4, membrane_bits=12)
    cn = compile_network(q, "int32")
    assert cn.program.pop_tally.any()
    r = simulate(cn, x, record=True)
    assert int(np.count_nonzero(r.spikes["h1"], axis=0).max()) > 255
    want = _nonzero_ops(q, x, r)
    rp = simulate(cn, x, profile=True)
    for name, ops in want.items():
        np.testing.assert_array_equal(r.counters.synaptic_ops[name], ops, err_msg=name)
        np.testing.assert_array_equal(rp.counters.synaptic_ops[name], ops, err_msg=name)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("model", ["ternary_lif", "binary_lif", "binary_lif_sub"])
def test_narrow_neuron_update_is_the_int64_update(model, dtype):
    """Ternary and binary LIF with a leak 2**-n update in the state's own type: every membrane and spike
    as the int64 update gives them, at saturation, for shifts up to past the type's width, and (through the
    int64 loop) for thresholds the type cannot hold."""
    from evsim import kernels as K
    from evsim.neurons import neuron_model
    code = neuron_model(model).code
    info = np.iinfo(dtype)
    bits = info.bits
    rng = np.random.default_rng(bits)
    n = 1000 + 37
    for m_bits, th, shift in [(bits, 100, 2), (bits - 4, 300, 0), (bits, info.max, 3), (bits, 1, bits - 1),
                              (bits, 50, bits + 5), (bits - 2, info.max + 10, 2), (8, 0, 1), (bits, -5, 2)]:
        lo, hi = -(1 << (m_bits - 1)), (1 << (m_bits - 1)) - 1
        v0 = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
        v0[:8] = [info.min, info.max, lo, hi, th % (info.max + 1), 0, -1, 1]
        drive = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
        u = np.clip(v0.astype(np.int64), lo, hi)
        p = u >= th
        q = (u <= -th) if model == "ternary_lif" else np.zeros(n, bool)
        if model == "binary_lif_sub":
            want = (u >> shift) - np.where(p, th, 0) + drive
        else:
            want = (np.where(p | q, 0, u) >> min(shift, 63)) + drive
        v, frame = v0.copy(), np.zeros(n, np.int8)
        idx, sign = np.zeros(n, np.int32), np.zeros(n, np.int8)
        prm = np.array([1, th, 0, 0, 0], np.int64)
        fxp = np.array([12, lo, hi, 1, shift], np.int64)
        cnt, pos, neg = K.fire_fixed(code, prm, fxp, v, v[:0], drive, v[:0], frame, 1, False, idx, sign)
        np.testing.assert_array_equal(v, want.astype(dtype), err_msg=f"{m_bits} {th} {shift}")
        spikes = p.astype(np.int8) - q.astype(np.int8)
        np.testing.assert_array_equal(frame, spikes)
        assert (cnt, pos, neg) == (int(np.count_nonzero(spikes)), int((spikes > 0).sum()), int((spikes < 0).sum()))


def test_int16_readout_sums_in_int32():
    """The shipped model at 12-bit membranes runs in int16; its readout's T-step sum needs more than 16 bits,
    so the readout accumulates in int32, its weights held as int32 (the vector runs take one type): the
    same spikes, outputs and counters as the int32 run, both as the integer reference."""
    from evsim.engine import readout_dtype
    q = quantize(read_network(SHIPPED / "folded.h5"), 8, membrane_bits=12)
    x = np.load(SHIPPED / "samples" / "batch8.npy")[:3]
    c16 = compile_network(q, "int16")
    assert readout_dtype(c16) == np.int32
    fc = next(cp for cp in c16.projections if cp.target < 0)
    assert fc.arrays["data"].dtype == np.int32 and "row_ops" in fc.arrays     # zeros stored, counted by tallies
    r16 = same_as_reference(q, x, "int16")
    r32 = same_as_reference(q, x, "int32")
    for attr in ("spikes_pos", "spikes_neg", "events_in", "synaptic_ops"):
        for k, v in getattr(r32.counters, attr).items():
            np.testing.assert_array_equal(getattr(r16.counters, attr)[k], v, err_msg=f"{attr} {k}")
    np.testing.assert_array_equal(r16.counters.synaptic_ops["layers.6"], _nonzero_ops(q, x, r16)["layers.6"])

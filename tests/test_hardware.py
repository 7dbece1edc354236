"""Hardware profiles, the mapping onto cores and the traffic on the mapped chip (docs/HARDWARE.md)."""

from __future__ import annotations

import json
import re
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from evsim.cli import main
from evsim.compiler import compile_network
from evsim.engine import simulate
from evsim.graph import Network, Population, Projection
from evsim.hardware import BUILTIN_PROFILES, load_profile
from evsim.hardware.mapping import map_network, synapse_matrix
from evsim.hardware.profile import MAX_PROFILE_BYTES, ProfileError, parse_profile
from evsim.hardware.traffic import traffic_of
from evsim.limits import Limits
from networks import LIF, random_input, residual_net

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fmnist-resnet8-ternary"
SAMPLE = MODEL / "samples" / "sample0.npy"

GOOD = """
name = "tiny"
chip = "a test chip"
sources = ["made up for the tests"]
cores = 8
neurons_per_core = 5
weight_storage = "per_synapse"
signed_spikes = true
"""


def profile(extra: str = "", base: str = GOOD):
    return parse_profile(base + extra, "test profile")


def chain(dense: bool = True, n: int = 16, n_out: int = 4, seed: int = 0) -> Network:
    """input -> (host) -> h1 -> fc2 -> h2 -> fc3 -> readout; fc2 dense (16 synapses per h2 neuron) if asked."""
    rng = np.random.default_rng(seed)
    w2 = rng.choice([-1.0, 1.0], size=(n, n)) * rng.uniform(0.5, 1.0, size=(n, n))
    if not dense:
        w2[:, n // 2:] = 0.0
    pops = [Population("h1", (n,), "ternary_lif", LIF), Population("h2", (n,), "ternary_lif", LIF)]
    projs = [Projection("fc1", "input", "h1", "linear", rng.normal(0, 1.0, (n, 6)), None),
             Projection("fc2", "h1", "h2", "linear", w2, None),
             Projection("fc3", "h2", "readout", "linear", rng.normal(0, 0.5, (n_out, n)), None)]
    return Network(pops, projs, 3, (6,), encoding="direct")


# ------------------------------------------------------------------ profiles
@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_builtin_profiles_load_with_sources(name):
    p = load_profile(name)
    assert p.name == name and p.sources and p.cores >= 1
    assert p.signed_spikes or p.negative_spikes in ("graded", "mirror")
    # every field is given or listed as unknown: nothing is silently missing
    d = p.to_dict()
    optional = [k for k in ("neurons_per_core", "fan_in_per_core", "weight_bits", "energy_synaptic_op_pj",
                            "energy_neuron_update_pj", "energy_packet_pj", "synaptic_op_ns", "neuron_update_ns")]
    for k in optional:
        assert d[k] is not None or k in p.unknown, (name, k)


@pytest.mark.parametrize("extra, message", [
    ("fan_in_per_core = \"lots\"\n", "fan_in_per_core must be an integer"),
    ("fan_in_per_core = -3\n", "fan_in_per_core must be between 1"),
    ("energy_packet_pj = -1.0\n", "energy_packet_pj must be a finite number"),
    ("synaptic_op_ns = 0\n", "synaptic_op_ns must be a finite number in (0"),
    ("colour = \"blue\"\n", "unknown key 'colour'"),
    ("weight_bits = true\n", "weight_bits must be an integer, got bool"),
    ("weight_bits = 65\n", "weight_bits must be between 1 and 64"),
    ("negative_spikes = \"mirror\"\n", "negative_spikes only applies"),
    ("unknown = [\"weight_bits\", \"nonsense\"]\n", "not a profile key"),
    ("synaptic_memory_bits_per_core = [1, 2, 3]\n", "one value per core (8), got 3"),
])
def test_bad_profile_fields(extra, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        profile(extra)


def test_unsigned_chip_must_say_how_negative_spikes_travel():
    with pytest.raises(ProfileError, match="needs negative_spikes"):
        profile(base=GOOD.replace("signed_spikes = true", "signed_spikes = false"))
    assert profile(base=GOOD.replace("signed_spikes = true", "signed_spikes = false\nnegative_spikes = \"mirror\"")).mirror


def test_missing_and_malformed():
    with pytest.raises(ProfileError, match="missing required key sources"):
        profile(base=GOOD.replace('sources = ["made up for the tests"]', ""))
    with pytest.raises(ProfileError, match="not valid TOML"):
        profile("cores = = 3\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.integers(-10**13, 10**13), st.floats(allow_nan=True), st.text(max_size=5),
                       st.booleans()))
def test_fan_in_accepts_exactly_positive_bounded_integers(value):
    if isinstance(value, str):      # a TOML basic string of \U escapes holds any text (control characters too)
        toml = '"' + "".join(f"\\U{ord(c):08X}" for c in value) + '"'
    else:
        toml = json.dumps(value) if not isinstance(value, float) else repr(value)
    if isinstance(value, float) and math.isnan(value):
        toml = "nan"
    elif isinstance(value, float) and math.isinf(value):
        toml = "inf" if value > 0 else "-inf"
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10**12
    if ok:
        assert profile(f"fan_in_per_core = {toml}\n").fan_in_per_core == value
    else:
        with pytest.raises(ProfileError, match="fan_in_per_core"):
            profile(f"fan_in_per_core = {toml}\n")


def test_profile_files_are_hostile_input(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text(GOOD + "notes = \"" + "x" * MAX_PROFILE_BYTES + "\"\n")
    with pytest.raises(ProfileError, match="byte limit"):
        load_profile(str(big))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe" + b"\x00" * 10)
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(str(binary))
    with pytest.raises(ProfileError, match="unknown hardware profile 'loihi3'"):
        load_profile("loihi3")
    good = tmp_path / "mine.toml"
    good.write_text(GOOD)
    assert load_profile(str(good)).neurons_per_core == (5,)


# ------------------------------------------------------------------ mapping by hand
def test_neuron_limit_and_core_count():
    m = map_network(chain(), profile())
    # h1: 16 neurons in blocks of 5 -> 4 cores; h2: 4 cores; readout: 4 neurons -> 1 core
    assert m.cores_used == 9
    assert [len(m.nodes[n].cores) for n in ("h1", "h2", "readout")] == [4, 4, 1]
    assert m.core_neurons.tolist() == [5, 5, 5, 1] * 2 + [4]
    assert not m.fits
    first = m.violations[0]
    assert (first.resource, first.needed, first.limit, first.over) == ("cores", 9, 8, 1)
    assert m.host_projections == ["fc1"]
    assert map_network(chain(), profile().__class__(**{**profile().__dict__, "cores": 9})).fits


def test_mirrored_populations_double_neurons_and_synapses():
    net = chain(dense=False)
    signed = map_network(net, profile())
    mirror = map_network(net, profile(base=GOOD.replace("signed_spikes = true",
                                                        "signed_spikes = false\nnegative_spikes = \"mirror\"")))
    nnz2 = int((net.projections[1].weight != 0).sum())
    nnz3 = int((net.projections[2].weight != 0).sum())
    assert signed.core_synapses.sum() == nnz2 + nnz3
    # h2 is held twice and each copy receives from both copies of h1; the readout once, from both copies of h2
    assert mirror.core_synapses.sum() == 4 * nnz2 + 2 * nnz3
    assert mirror.cores_used == 4 * 2 + 4 * 2 + 1
    assert mirror.factor == {"fc2": 2, "fc3": 1}
    # a neuron of h1 reaches both copies of h2: twice the destination cores
    assert mirror.target_cores["h1"].max() == 2 * signed.target_cores["h1"].max()


def test_fan_in_that_breaks_even_for_one_neuron():
    m = map_network(chain(), profile("fan_in_per_core = 10\n"))
    v = m.violations[0]
    assert v.resource == "fan-in per core" and v.needed == 16 and v.limit == 10 and v.over == 6
    assert "h2" in v.where
    assert len(m.nodes["h2"].cores) == 16                    # placed one per core anyway


def test_memory_limit_sets_block_size():
    # 16 dense synapses per h2 neuron x 8 bits: 384 bits hold 3 neurons
    m = map_network(chain(), profile("weight_bits = 8\nsynaptic_memory_bits_per_core = 384\n"))
    assert len(m.nodes["h2"].cores) == math.ceil(16 / 3)
    assert m.core_memory_bits[m.nodes["h2"].cores].max() == 384
    assert all(v.resource == "cores" for v in m.violations)


def test_fan_in_limit_sets_block_size_for_a_conv():
    # 3x3 conv, 1 -> 1 channel on an 8x8 map: a row of 8 outputs reads 3 rows (24 axons), 2 rows read 32
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1, (1, 1, 3, 3))
    pops = [Population("a", (1, 8, 8), "ternary_lif", LIF), Population("b", (1, 8, 8), "ternary_lif", LIF)]
    projs = [Projection("in", "input", "a", "conv2d", w, None, (1, 1), (1, 1)),
             Projection("ab", "a", "b", "conv2d", w.copy(), None, (1, 1), (1, 1)),
             Projection("out", "b", "readout", "linear", rng.normal(0, 1, (2, 64)), None)]
    net = Network(pops, projs, 2, (1, 8, 8), encoding="direct")
    m = map_network(net, profile("fan_in_per_core = 24\n", base=GOOD.replace("neurons_per_core = 5",
                                                                            "neurons_per_core = 64")))
    b = m.nodes["b"]
    # greedy, 24 axons = 3 input rows: output rows 0-1 read rows 0-2 (16 neurons); rows 2..5 one per core
    # (each reads 3 rows, two would read 4); rows 6-7 read rows 5-7 (16 neurons)
    assert [int(m.core_neurons[k]) for k in b.cores] == [16, 8, 8, 8, 8, 16]
    assert int(m.core_fan_in[b.cores].max()) == 24


def test_synapse_matrix_matches_the_engines_counting():
    net = residual_net(seed=3)
    lim = Limits.from_env()
    for pr in net.projections:
        if pr.source == "input":
            continue
        s = synapse_matrix(net, pr, lim)
        if pr.kind == "linear":
            assert s.nnz == int((pr.weight != 0).sum())
        elif pr.kind == "identity":
            assert s.nnz == (0 if pr.scale == 0 else s.shape[0])


# ------------------------------------------------------------------ traffic against a plain reference
def _reference(m, net, spikes, x_spikes):
    """Per timestep: core-to-core packets, host packets and synaptic ops per core, neuron by neuron."""
    lim = Limits.from_env()
    T = net.timesteps
    cores = len(m.core_node)
    packets, host, ops = np.zeros(T), np.zeros(T), np.zeros((T, cores))
    sources = dict(spikes)
    if x_spikes is not None:
        sources["input"] = np.swapaxes(x_spikes, 0, 1)
    mats = {pr.name: synapse_matrix(net, pr, lim).tocsr() for pr in net.projections if pr.name in m.factor}
    for name, s in sources.items():
        s = s.reshape(T, s.shape[1], -1)
        for t in range(T):
            for n in range(s.shape[1]):
                for j in np.flatnonzero(s[t, n]):
                    dest = set()
                    for pr in net.projections:
                        if pr.source != name or pr.name not in mats:
                            continue
                        tgt = m.nodes[pr.target]
                        row = mats[pr.name]
                        for i in row.indices[row.indptr[j]:row.indptr[j + 1]]:
                            for c in range(tgt.copies):
                                k = tgt.core_of[c * tgt.size + i]
                                dest.add(k)
                                ops[t, k] += 1
                    if name == "input":
                        host[t] += len(dest)
                    else:
                        packets[t] += len(dest)
    return packets, host, ops


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("encoding", ["direct", "spikes"])
def test_traffic_equals_a_plain_reference(mirror, encoding):
    net = residual_net(seed=1, encoding=encoding, c=3, hw=8)
    text = GOOD.replace("cores = 8", "cores = 64").replace("neurons_per_core = 5", "neurons_per_core = 7")
    if mirror:
        text = text.replace("signed_spikes = true", "signed_spikes = false\nnegative_spikes = \"mirror\"")
    m = map_network(net, profile(base=text))
    cn = compile_network(net, dtype="float64")
    x = random_input(net, 2, seed=4)
    r = simulate(cn, x, record=True)
    tr = traffic_of(m, cn, r, input_spikes=x if encoding == "spikes" else None)
    packets, host, ops = _reference(m, net, r.spikes, x if encoding == "spikes" else None)
    assert packets.sum() > 0
    np.testing.assert_array_equal(tr.counts.packets, packets)
    np.testing.assert_array_equal(tr.counts.host_packets, host)
    np.testing.assert_array_equal(tr.counts.core_ops, ops)
    assert (host.sum() > 0) == (encoding == "spikes")
    # the chip's synaptic ops are the engine's counters, times the target's copies
    engine = sum(int(r.counters.synaptic_ops[p].sum()) * f for p, f in m.factor.items())
    assert tr.counts.core_ops.sum() == engine and tr.matches_engine
    if not mirror:
        assert tr.counts.core_ops.sum() == sum(int(r.counters.synaptic_ops[p].sum()) for p in m.factor)
    d = tr.to_dict()
    assert d["energy_pj"]["total_pj"] is None and set(d["energy_pj"]["unknown"]) == {
        "synaptic_ops", "neuron_updates", "packets"}
    assert sum(d["per_core"]["packets_out"]) * 2 == pytest.approx(packets.sum())   # 2 samples, means per sample


def test_latency_and_energy_from_the_profile():
    net = chain()
    text = GOOD + "synaptic_op_ns = 2.0\nneuron_update_ns = 1.0\nenergy_synaptic_op_pj = 3.0\n" \
                  "energy_neuron_update_pj = 0.5\nenergy_packet_pj = 10.0\n"
    m = map_network(net, profile(base=text.replace("cores = 8", "cores = 16")))
    cn = compile_network(net, dtype="float64")
    x = random_input(net, 3, seed=2)
    r = simulate(cn, x, record=True)
    tr = traffic_of(m, cn, r)
    c = tr.counts
    ops = np.zeros((net.timesteps, 3, len(m.core_node)))
    # per (t, sample) busiest core time, recomputed from per-sample ops
    for n in range(3):
        one = simulate(cn, x[n:n + 1], record=True)
        ops[:, n] = traffic_of(m, cn, one).counts.core_ops
    load = ops * 2.0 + m.core_neurons[None, None, :] * 1.0
    np.testing.assert_allclose(c.latency_ns_sum, load.max(axis=2).sum(axis=1))
    e = tr.energy()
    assert e["synaptic_ops"] == pytest.approx(c.core_ops.sum() / 3 * 3.0)
    assert e["neuron_updates"] == pytest.approx(m.core_neurons.sum() * net.timesteps * 0.5)
    assert e["packets"] == pytest.approx(c.packets.sum() / 3 * 10.0)
    assert e["total_pj"] == pytest.approx(e["synaptic_ops"] + e["neuron_updates"] + e["packets"])


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_cli_map_and_run_on_the_shipped_model(runner, name):
    w = str(MODEL / "folded.h5")
    res = runner.invoke(main, ["map", "--weights", w, "--hardware", name])
    assert res.exit_code == 0, res.output
    assert "fits:" in res.output and "population" in res.output
    res = runner.invoke(main, ["map", "--weights", w, "--hardware", name, "--json"])
    d = json.loads(res.output)
    assert d["profile"] == name and d["cores_used"] >= 8
    assert d["fits"] == (d["runs_out_first"] is None)
    res = runner.invoke(main, ["run", "--weights", w, "--input", str(SAMPLE), "--hardware", name, "--json"])
    assert res.exit_code == 0, res.output
    h = json.loads(res.output)["hardware"]
    assert h["matches_engine"] and h["samples"] == 1
    assert len(h["per_timestep"]) == 4 and h["per_sample"]["synaptic_ops"] > 0
    assert h["per_sample"]["packets"] > 0
    res = runner.invoke(main, ["run", "--weights", w, "--input", str(SAMPLE), "--hardware", name])
    assert res.exit_code == 0 and "busiest core" in res.output and "energy per sample" in res.output


def test_cli_user_profile_and_bad_profiles(runner, tmp_path):
    w = str(MODEL / "folded.h5")
    mine = tmp_path / "mine.toml"
    mine.write_text(GOOD.replace("cores = 8", "cores = 4096").replace("neurons_per_core = 5", "neurons_per_core = 4096"))
    res = runner.invoke(main, ["map", "--weights", w, "--hardware", str(mine), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fits"] is True
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + "cores = 3\n")
    for spec, message in ((str(bad), "not valid TOML"), ("loihi3", "unknown hardware profile"),
                          (str(tmp_path / "none.toml"), "hardware profile")):
        for args in (["map", "--weights", w, "--hardware", spec],
                     ["run", "--weights", w, "--input", str(SAMPLE), "--hardware", spec]):
            res = runner.invoke(main, args)
            assert res.exit_code == 1, res.output
            assert message in res.output and "Traceback" not in res.output
            assert len(res.output.strip().splitlines()) == 1


def test_quantised_file_wider_than_the_chip():
    from evsim.fixedpoint import quantize
    wide = map_network(quantize(residual_net(), 12, membrane_bits=16), load_profile("loihi"))
    assert wide.violations[0].text().startswith("weight bits: needs 12, the limit is 9 (3 over")
    narrow = map_network(quantize(residual_net(), 4, membrane_bits=16), load_profile("loihi"))
    assert narrow.weight_bits == 4 and not any(v.resource.endswith("bits") for v in narrow.violations)

"""The plain-Numba fallback (evsim.simd_plain) against the LLVM-IR intrinsics (evsim.simd), bit for bit,
and the selection between them (evsim.intrinsics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from evsim import intrinsics, simd, simd_plain

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fmnist-resnet8-ternary"


def _pair(name):
    ops = (getattr(simd, name), getattr(simd_plain, name))
    if name == "queue16":
        return tuple(njit(cache=False)(lambda f, s, d, i, g, c, op=op: op(f, s, d, i, g, c)) for op in ops)
    if name == "add_run":
        return tuple(njit(cache=False)(lambda a, a0, w, b0, n, sg, op=op: op(a, a0, w, b0, n, sg)) for op in ops)
    if name == "add_runs":
        return tuple(njit(cache=False)(lambda a, ar, w, br, nr, o, sg, c, n, op=op: op(a, ar, w, br, nr, o, sg, c, n))
                     for op in ops)
    return tuple(njit(cache=False)(lambda a, ar, w, br, nr, i, sg, e0, c, f, s, n, op=op:
                                   op(a, ar, w, br, nr, i, sg, e0, c, f, s, n)) for op in ops)


QUEUE = _pair("queue16")
RUN = _pair("add_run")
RUNS = _pair("add_runs")
EVENT_RUNS = _pair("add_event_runs")


def bits(a):
    return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0, 1), stride=st.sampled_from([1, 2, 3, 17]))
def test_queue16_plain_equals_ir(seed, density, stride):
    rng = np.random.default_rng(seed)
    frame = np.where(rng.random(16 * stride + 5) < density, rng.choice(np.array([-1, 1], np.int8), 16 * stride + 5),
                     0).astype(np.int8)
    results = []
    for q in QUEUE:
        idx, sgn = np.zeros(40, np.int32), np.zeros(40, np.int8)
        r = q(frame, 2, stride, idx, sgn, 3)
        n = (r & 0xFFFFFFFF) - 3
        results.append((r, idx[3:3 + n].copy(), sgn[3:3 + n].copy()))
    (r1, i1, s1), (r2, i2, s2) = results
    assert r1 == r2
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), count=st.integers(1, 6),
       n_rows=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]))
def test_synaptic_runs_plain_equal_ir_bit_for_bit(seed, n, count, n_rows, dtype):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(4 * n + 400).astype(dtype)
    acc0 = rng.standard_normal(3 * n + 16).astype(dtype)
    a_rows = np.array([0, n + 3, 2 * n + 9][:n_rows], np.uint64)
    b_rows = np.array([0, 11, 2 * n + 5][:n_rows], np.uint64)
    offsets = rng.integers(0, n + 50, size=count).astype(np.uint64)
    signs = rng.choice(np.array([-1, 1], np.int8), size=count)
    out = []
    for op in RUN:
        acc = acc0.copy()
        op(acc, np.uint64(5), w, np.uint64(7), np.uint64(n), signs[0])
        out.append(acc)
    np.testing.assert_array_equal(bits(out[0]), bits(out[1]))
    out = []
    for op in RUNS:
        acc = acc0.copy()
        op(acc, a_rows, w, b_rows, np.uint64(n_rows), offsets, signs, np.uint64(count), np.uint64(n))
        out.append(acc)
    np.testing.assert_array_equal(bits(out[0]), bits(out[1]))
    ev_idx = (10 + rng.integers(0, 4, size=count + 2)).astype(np.int32)
    ev_sign = rng.choice(np.array([-1, 1], np.int8), size=count + 2)
    out = []
    for op in EVENT_RUNS:
        acc = acc0.copy()
        op(acc, a_rows, w, b_rows, np.uint64(n_rows), ev_idx, ev_sign, np.uint64(1), np.uint64(count),
           np.uint64(10), np.uint64(n // 4 + 1), np.uint64(n))
        out.append(acc)
    np.testing.assert_array_equal(bits(out[0]), bits(out[1]))


def test_ir_is_selected_here_and_constants_are_shared():
    """On this machine the IR builds and agrees with the plain loops, so the probe keeps it."""
    assert intrinsics.REQUESTED == os.environ.get("EVSIM_INTRINSICS", "ir")
    if intrinsics.REQUESTED == "ir":
        assert intrinsics.SELECTED == "ir"
        assert intrinsics.queue16 is simd.queue16
    assert simd.LANES == simd_plain.LANES == intrinsics.LANES


RUN_SHIPPED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from evsim import compile_network, intrinsics, read_network, simulate
    net = read_network(sys.argv[1])
    x = np.load(sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from networks import random_input, residual_net, residual_net_pruned_taps
    out = {"selected": intrinsics.SELECTED}
    # the shipped model (conv_rows, csr, dense) and small nets holding every kind (conv_taps, identity too)
    cases = [("shipped", net, x)]
    for model, enc in (("ternary_lif", "direct"), ("ctsn_event", "spikes"), ("cuba_lif", "direct")):
        g = residual_net(model=model, encoding=enc)
        cases.append((f"{model}/{enc}", g, random_input(g, 4)))
    g = residual_net_pruned_taps()
    cases.append(("pruned taps", g, random_input(g, 4)))
    # fixed-point networks (evsim.fixedpoint): the integer runs, int32 and int16
    from evsim.fixedpoint import quantize
    cases.append(("shipped 8-bit", quantize(net, 8), x))
    g = residual_net(model="ternary_lif", encoding="spikes")
    cases.append(("ternary/spikes 4-bit", quantize(g, 4, membrane_bits=10), random_input(g, 4)))
    for name, g, xs in cases:
        dts = ("float64", "float32") if g.fixed_point is None else ("int32", "int16")
        for dt in dts:
            if dt == "int16" and g.fixed_point.accumulator_bits > 16:
                continue
            r = simulate(compile_network(g, dtype=dt), xs, record=True)
            c = r.counters
            out[f"{name}/{dt}"] = {
                "kinds": sorted({p.mode for p in compile_network(g, dtype=dt).projections}),
                "outputs": r.outputs.view(np.uint64 if r.outputs.itemsize == 8 else np.uint32).tolist(),
                "ops": {k: v.tolist() for k, v in c.synaptic_ops.items()},
                "digest": {k: __import__("hashlib").sha1(s.tobytes()).hexdigest() for k, s in r.spikes.items()}}
    print(json.dumps(out))
""")


def _run_with(variant: str, env_extra=None) -> dict:
    env = dict(os.environ, EVSIM_INTRINSICS=variant, **(env_extra or {}))
    p = subprocess.run([sys.executable, "-c", RUN_SHIPPED, str(SHIPPED / "folded.h5"),
                        str(SHIPPED / "samples" / "batch8.npy"), str(ROOT / "tests")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.slow
def test_engine_on_the_plain_path_is_bit_for_bit_the_ir_engine():
    """The shipped model's eight samples and small nets of every projection kind, float64 and float32, and
    fixed-point ones in int32 and int16: every output bit, spike and count equal. (The plain path once indexed conv_taps' 2-D arrays by flat
    offsets, out of bounds: the shipped model alone, all conv_rows, did not see it.)"""
    ir, plain = _run_with("ir"), _run_with("plain")
    assert (ir.pop("selected"), plain.pop("selected")) == ("ir", "plain")
    kinds = set().union(*(set(v["kinds"]) for v in ir.values()))
    assert kinds == {"conv_rows", "conv_taps", "csr", "identity", "dense"}, kinds
    assert ir.keys() == plain.keys()
    assert {"shipped 8-bit/int32", "ternary/spikes 4-bit/int16"} <= ir.keys()
    for case in ir:
        assert ir[case] == plain[case], case


def test_a_broken_ir_falls_back_to_the_plain_path():
    """If the IR does not build, evsim warns once and runs the plain loops (here: llvmlite's IR builder
    made unimportable in a child process)."""
    code = textwrap.dedent("""
        import sys, warnings
        import llvmlite.ir
        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "evsim.simd":
                    raise ImportError("llvmlite IR API changed (simulated)")
        sys.meta_path.insert(0, Broken())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import evsim.intrinsics as I
        print(I.SELECTED, any("plain-Numba path" in str(w.message) for w in caught))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, EVSIM_INTRINSICS="ir"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["plain", "True"]

"""The engine against the dense NumPy reference, and each Numba kernel against plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import networks
import reference
from conftest import ENCODINGS, MODELS, NETWORKS, case, ternary
from evsim import compile_network, kernels as K, run, simulate
from evsim.compiler import ConvGeometry
from evsim.layout import to_channels_last
from evsim.projections import conv_rows, conv_taps, csr, dense, identity
from evsim.projections.conv_rows import lower_weights as row_kernel
from evsim.projections.conv_taps import lower_weights as kernel_csr
from evsim.graph import INPUT, Network, Population, Projection
from evsim.neurons import NEURON_MODELS
from evsim.program import Program, build_program

DTYPES = (np.float32, np.float64)


def per_sample(a: np.ndarray, value: int) -> np.ndarray:
    """Count ``a == value`` per sample of a (T, N, ...) spike record."""
    return (a == value).reshape(a.shape[0], a.shape[1], -1).sum(axis=(0, 2))


# ------------------------------------------------------------ engine vs reference
# The driver takes a thread's samples one at a time or, for networks with a
# large state, all together layer by layer (Program.samples_per_pass): test both,
# and the profiling run (the same driver reading the clock between steps).
DRIVERS = ["fused", "fused-layer-major", "profiled"]


def _simulate_with(monkeypatch, driver, cn, x):
    if driver == "fused-layer-major":
        monkeypatch.setattr(Program, "samples_per_pass", lambda self, n_samples: n_samples)
    elif driver == "fused":
        assert build_program(cn).samples_per_pass(len(x)) == 1   # the test networks have a small state
    return simulate(cn, x, record=True, profile=driver == "profiled")


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
@pytest.mark.parametrize("net_name", list(NETWORKS))
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("model", MODELS)
def test_engine_matches_reference(monkeypatch, model, encoding, net_name, conv_mode, driver):
    net, x, ref_out, ref_spikes, ref_ops = case(net_name, model, encoding)
    cn = compile_network(net, dtype="float64", conv_mode=conv_mode)
    r = _simulate_with(monkeypatch, driver, cn, x)

    # spike for spike
    assert set(r.spikes) == set(ref_spikes)
    for name, s in ref_spikes.items():
        assert r.spikes[name].dtype == np.int8
        np.testing.assert_array_equal(r.spikes[name], s, err_msg=f"population {name}")
    np.testing.assert_allclose(r.outputs, ref_out, rtol=0, atol=1e-12)

    # the counters: measured, and equal to the reference's per-event count
    for pr in net.projections:
        np.testing.assert_array_equal(r.counters.synaptic_ops[pr.name], ref_ops[pr.name], err_msg=pr.name)
    for name, s in ref_spikes.items():
        np.testing.assert_array_equal(r.counters.spikes_pos[name], per_sample(s, 1))
        np.testing.assert_array_equal(r.counters.spikes_neg[name], per_sample(s, -1))
        assert r.counters.spikes_pos[name].sum() > 0, f"{name} never fires: the comparison would be vacuous"
    if encoding == "spikes":
        np.testing.assert_array_equal(r.counters.input_events,
                                      np.count_nonzero(x.reshape(len(x), -1), axis=1))
    else:
        np.testing.assert_array_equal(r.counters.input_events, 0)
    for pr in net.projections:
        dense = pr.source == INPUT and encoding == "direct"
        expected_nonzero = 0
        if dense:
            expected_events = np.zeros(len(x), dtype=np.int64)
            reach = reference.reach(pr, net.input_shape)
            expected_macs = int(reach.sum())
            # an event processor's MACs: each non-zero input value, with the synapses it reaches
            expected_nonzero = ((x != 0) * reach).reshape(len(x), -1).sum(1)
            assert (expected_nonzero < expected_macs).any(), "no zero pixel: the two MAC counts would not differ"
        elif pr.source == INPUT:
            expected_events = r.counters.input_events
            expected_macs = 0
        else:
            expected_events = r.counters.spikes_pos[pr.source] + r.counters.spikes_neg[pr.source]
            expected_macs = 0
        np.testing.assert_array_equal(r.counters.events_in[pr.name], expected_events, err_msg=pr.name)
        np.testing.assert_array_equal(r.counters.macs[pr.name], expected_macs, err_msg=pr.name)
        np.testing.assert_array_equal(r.counters.macs_nonzero[pr.name], expected_nonzero, err_msg=pr.name)
    total_neg = sum(int(v.sum()) for v in r.counters.spikes_neg.values())
    if NEURON_MODELS[model].ternary:
        assert total_neg > 0
    else:
        assert total_neg == 0


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("net_name", list(NETWORKS))
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("model", ["ternary_lif", "ctsn_event"])
def test_float32_agrees_with_reference(monkeypatch, model, encoding, net_name, driver):
    net, x, ref_out, ref_spikes, _ = case(net_name, model, encoding, n=16, seed=3)
    r = _simulate_with(monkeypatch, driver, compile_network(net, dtype="float32"), x)
    assert r.outputs.dtype == np.float32
    assert np.mean(r.predictions == ref_out.argmax(1)) >= 0.9
    # float32 may flip a spike at the threshold; samples whose spikes all agree must agree closely
    same = np.ones(len(x), dtype=bool)
    for name, s in ref_spikes.items():
        same &= (r.spikes[name] == s).reshape(s.shape[0], s.shape[1], -1).all(axis=(0, 2))
    assert same.mean() >= 0.75
    scale = np.abs(ref_out).max(axis=1, keepdims=True)
    err = np.abs(r.outputs - ref_out)[same]
    assert np.all(err <= 1e-3 * scale[same] + 1e-6), err.max()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_batching_gives_the_same_results(encoding):
    net = networks.residual_net(model="ternary_lif", encoding=encoding)
    x = networks.random_input(net, 5, seed=7)
    cn = compile_network(net, dtype="float64")
    whole = simulate(cn, x, record=True)
    done = []
    batched = run(cn, x, batch_size=2, record=True, progress=done.append)
    assert done == [2, 2, 1]
    np.testing.assert_array_equal(batched.outputs, whole.outputs)
    for name in whole.spikes:
        np.testing.assert_array_equal(batched.spikes[name], whole.spikes[name])
    for attr in ("spikes_pos", "spikes_neg", "events_in", "synaptic_ops", "macs", "macs_nonzero"):
        a, b = getattr(batched.counters, attr), getattr(whole.counters, attr)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{attr}[{k}]")
    np.testing.assert_array_equal(batched.counters.input_events, whole.counters.input_events)
    # one sample without the batch axis
    one = run(cn, x[2])
    np.testing.assert_array_equal(one.outputs, whole.outputs[2:3])


# ------------------------------------------------------------ hand-computed cases
def _two_neuron_net() -> Network:
    """input (1,) -> h (2,) with weights [-1, +1] -> readout with weights [1, 3]."""
    lif = {"tau": 0.25, "v_threshold": 0.5}
    return Network([Population("h", (2,), "ternary_lif", lif)],
                   [Projection("in", "input", "h", "linear", np.array([[-1.0], [1.0]])),
                    Projection("out", "h", "readout", "linear", np.array([[1.0, 3.0]]))],
                   timesteps=3, input_shape=(1,), encoding="spikes")


@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
def test_negative_spikes_are_events(conv_mode):
    net = _two_neuron_net()
    x = np.array([[[1], [1], [-1]]], dtype=np.int8)    # (N=1, T=3, 1): a -1 input spike at t=2
    r = simulate(compile_network(net, "float64", conv_mode), x, record=True)
    # t0, t1: +1 in -> h = (-1, +1); t2: -1 in -> h = (+1, -1)
    np.testing.assert_array_equal(r.spikes["h"][:, 0], [[-1, 1], [-1, 1], [1, -1]])
    assert r.counters.input_events.tolist() == [3]
    assert r.counters.events_in["in"].tolist() == [3]
    assert r.counters.spikes_pos["h"].tolist() == [3]
    assert r.counters.spikes_neg["h"].tolist() == [3]
    assert r.counters.events_in["out"].tolist() == [6]
    assert r.counters.synaptic_ops["in"].tolist() == [6]     # 3 events x 2 synapses, -1 included
    assert r.counters.synaptic_ops["out"].tolist() == [6]    # 6 events x 1 synapse
    # readout: t0 -1+3, t1 -1+3, t2 +1-3 -> 2 / T
    np.testing.assert_allclose(r.outputs, [[2.0 / 3.0]], rtol=0, atol=1e-15)
    ref_out, _, ref_ops = reference.simulate(net, x)
    np.testing.assert_allclose(r.outputs, ref_out, atol=1e-15)
    assert {k: v.tolist() for k, v in ref_ops.items()} == {"in": [6], "out": [6]}


def _one_conv_net(stride: int) -> Network:
    """input (1, 4, 4) spikes -> 3x3 conv, padding 1, 2 output channels -> silent population."""
    w = np.arange(1.0, 19.0).reshape(2, 1, 3, 3)
    w[1, 0, 0, 0] = 0.0      # pruned: channel 1, tap (0, 0)
    w[0, 0, 2, 2] = 0.0      # pruned: channel 0, tap (2, 2)
    ho = (4 + 2 - 3) // stride + 1
    never = {"tau": 0.25, "v_threshold": 1e9}
    return Network([Population("c", (2, ho, ho), "ternary_lif", never)],
                   [Projection("conv", "input", "c", "conv2d", w, None, (stride, stride), (1, 1)),
                    Projection("fc", "c", "readout", "linear", np.ones((1, 2 * ho * ho)))],
                   timesteps=2, input_shape=(1, 4, 4), encoding="spikes")


@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
@pytest.mark.parametrize("stride, y, x, sign, expected", [
    (1, 0, 0, 1, 7),    # corner: taps (0..1, 0..1) in the map = 4 + 4 - 1 pruned
    (1, 1, 2, -1, 16),  # interior: all 9 taps, minus one pruned weight per channel
    (2, 0, 0, 1, 2),    # stride 2: only tap (1, 1) lands on an output, both channels
    (2, 3, 3, -1, 1),   # only tap (2, 2), whose channel-0 weight is pruned
    (2, 1, 1, 1, 6),    # taps (0|2, 0|2): 1 + 2 + 2 + 1
])
def test_conv_ac_count_by_hand(conv_mode, stride, y, x, sign, expected):
    net = _one_conv_net(stride)
    s = np.zeros((1, 2, 1, 4, 4), dtype=np.int8)
    s[0, 0, 0, y, x] = sign                     # one event, at t = 0 only
    r = simulate(compile_network(net, "float64", conv_mode), s)
    assert r.counters.events_in["conv"].tolist() == [1]
    assert r.counters.synaptic_ops["conv"].tolist() == [expected]
    assert r.counters.synaptic_ops["fc"].tolist() == [0]
    assert reference.simulate(net, s)[2]["conv"].tolist() == [expected]


# ---------------------------------------------------------------- kernels directly
def events_of(frame: np.ndarray, rng: np.random.Generator | None = None):
    """Event queue (idx, sign, cnt) of a (N, n) ternary frame, optionally in shuffled order."""
    n_samples, n = frame.shape
    idx = np.zeros((n_samples, n), dtype=np.int32)
    sign = np.zeros((n_samples, n), dtype=np.int8)
    cnt = np.zeros(n_samples, dtype=np.int64)
    for i in range(n_samples):
        nz = np.flatnonzero(frame[i])
        if rng is not None:
            nz = rng.permutation(nz)
        idx[i, :nz.size] = nz
        sign[i, :nz.size] = frame[i, nz]
        cnt[i] = nz.size
    return idx, sign, cnt


def _tol(dt):
    return dict(rtol=1e-5, atol=1e-5) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("c_in, h, w, c_out, k, stride, pad", [
    (3, 6, 5, 4, (3, 3), (1, 1), (1, 1)),
    (2, 7, 7, 3, (3, 2), (2, 3), (0, 2)),
    (1, 5, 6, 2, (1, 1), (2, 2), (0, 0)),
    (2, 4, 4, 5, (4, 4), (3, 1), (2, 1)),
])
@pytest.mark.parametrize("path", ["taps", "rows"])
@pytest.mark.parametrize("pruned", [True, False])
def test_scatter_conv_kernel(dt, c_in, h, w, c_out, k, stride, pad, path, pruned):
    rng = np.random.default_rng(c_in * 100 + h)
    wt = rng.normal(size=(c_out, c_in) + k)
    if pruned:
        wt[rng.random(wt.shape) < 0.3] = 0.0
        wt[:, 0, 0, 0] = 0.0                               # a fully pruned tap
    ho = (h + 2 * pad[0] - k[0]) // stride[0] + 1
    wo = (w + 2 * pad[1] - k[1]) // stride[1] + 1
    n = 3
    frame = ternary(rng, (n, c_in, h, w), 0.4)
    frame_cl = to_channels_last(frame, (c_in, h, w))
    idx, sign, cnt = events_of(frame_cl, rng)
    taps = kernel_csr(wt, dt)
    acc0 = rng.normal(size=(n, ho * wo, c_out)).astype(dt)
    acc = acc0.copy()
    ops = np.full(n, 5, dtype=np.int64)                    # counters accumulate
    geom = ConvGeometry(c_in, h, w, c_out, ho, wo, k, stride, pad)
    row_map, col_map = geom.offset_maps()
    if path == "taps":
        conv_taps.scatter_batch(idx, sign, cnt, c_in, w, taps["tap_ptr"], taps["tap_y"], taps["tap_x"], taps["tap_w"],
                       taps["tap_nnz"], row_map, col_map, wo, acc, ops)
    else:
        rows = row_kernel(wt, geom, dt)
        conv_rows.scatter_batch(idx, sign, cnt, c_in, w, k[0], k[1], row_map, rows["col_plan"], wo, c_out,
                            rows["row_w"], rows["reach"], bool(rows["has_zeros"]), acc.reshape(n, -1), ops)
    expected = np.stack([reference.conv2d(frame[i].astype(float), wt, stride, pad) for i in range(n)])
    expected = acc0 + expected.reshape(n, c_out, ho * wo).transpose(0, 2, 1)
    np.testing.assert_allclose(acc, expected, **_tol(dt))
    reach = reference.conv_reach((c_in, h, w), wt, stride, pad)
    np.testing.assert_array_equal(ops, 5 + (reach[None] * (frame != 0)).sum(axis=(1, 2, 3)))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("c_in, h, w, c_out, k, stride, pad", [
    (1, 7, 6, 4, (3, 3), (1, 1), (1, 1)),
    (3, 8, 9, 5, (3, 2), (2, 3), (0, 2)),
    (2, 5, 5, 16, (5, 5), (1, 2), (2, 2)),
])
def test_direct_conv_kernel(dt, c_in, h, w, c_out, k, stride, pad):
    rng = np.random.default_rng(h * 10 + w)
    wt = rng.normal(size=(c_out, c_in) + k)
    ho = (h + 2 * pad[0] - k[0]) // stride[0] + 1
    wo = (w + 2 * pad[1] - k[1]) // stride[1] + 1
    n = 3
    x = rng.random((n, c_in, h, w)).astype(dt)
    out0 = rng.normal(size=(n, ho * wo * c_out)).astype(dt)
    out = out0.copy()
    dense.direct_conv(x, np.ascontiguousarray(wt.transpose(2, 3, 1, 0).reshape(-1, c_out).astype(dt)),
                  k[0], k[1], stride[0], stride[1], pad[0], pad[1], ho, wo, out)
    expected = np.stack([reference.conv2d(x[i].astype(float), wt, stride, pad) for i in range(n)])
    expected = out0 + expected.reshape(n, c_out, ho * wo).transpose(0, 2, 1).reshape(n, -1)
    np.testing.assert_allclose(out, expected, **_tol(dt))


@pytest.mark.parametrize("dt", DTYPES)
def test_direct_linear_kernel(dt):
    rng = np.random.default_rng(5)
    x = rng.random((4, 11)).astype(dt)
    wt = rng.normal(size=(11, 7)).astype(dt)
    out0 = rng.normal(size=(4, 7)).astype(dt)
    out = out0.copy()
    dense.direct_linear(x, wt, out)
    np.testing.assert_allclose(out, out0 + x.astype(float) @ wt.astype(float), **_tol(dt))


@pytest.mark.parametrize("prune,n_src", [(0.0, 13), (0.6, 13), (0.0, 150)])
@pytest.mark.parametrize("dt", DTYPES)
def test_scatter_csr_kernel(dt, prune, n_src):
    """Rows that cover a contiguous range of targets take the vector path, in groups of consecutive events
    on the same range (150 sources: groups longer than CSR_GROUP), the others the gather loop; with prune=0
    every row but the two edited ones is contiguous (a dense linear layer)."""
    rng = np.random.default_rng(11)
    n, n_tgt = 4, 21
    dense = rng.normal(size=(n_src, n_tgt))
    dense[rng.random(dense.shape) < prune] = 0.0
    dense[3] = 0.0                                        # a source neuron with no synapse
    dense[5, 7] = 0.0                                     # a row with a gap
    dense[6, :4] = dense[6, -3:] = 0.0                    # a contiguous row that starts late and ends early
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(n_src + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_src), out=indptr[1:])
    indices = cols.astype(np.int32)
    data = dense[rows, cols].astype(dt)
    frame = ternary(rng, (n, n_src), 0.5)
    frame[:, 3] = 1
    idx, sign, cnt = events_of(frame, rng)
    acc0 = rng.normal(size=(n, n_tgt)).astype(dt)
    acc = acc0.copy()
    ops = np.zeros(n, dtype=np.int64)
    csr.scatter_batch(idx, sign, cnt, indptr, indices, data, acc, ops)
    np.testing.assert_allclose(acc, acc0 + frame @ dense, **_tol(dt))
    np.testing.assert_array_equal(ops, np.abs(frame) @ (dense != 0).sum(1))


@pytest.mark.parametrize("dt", [np.int16, np.int32])
def test_dense_rows_keep_the_matrix(dt):
    """Rows holding at least half of the targets are stored over all of them, zeros included (one contiguous
    run each, the vector path); the others as they were; ``row_ops`` holds each row's non-zeros. The kernel
    adds the same integers either way."""
    import scipy.sparse as sp
    rng = np.random.default_rng(13)
    n_src, n_tgt, n = 70, 19, 3
    w = rng.integers(-9, 10, size=(n_src, n_tgt))
    w[rng.random(w.shape) < 0.2] = 0
    w[3] = 0                                               # no synapse
    w[4, :5], w[4, 5:] = 3, 0                              # a quarter of the targets: left sparse
    w[5, :] = 7                                            # full: unchanged
    m = sp.csr_matrix(w.astype(dt))
    m.eliminate_zeros()
    a = csr.dense_rows(m, dt)
    rows = np.diff(a["indptr"])
    np.testing.assert_array_equal(a["row_ops"], np.count_nonzero(w, axis=1))
    assert rows[3] == 0 and rows[4] == 5 and rows[5] == n_tgt
    assert (rows[np.count_nonzero(w, axis=1) * 2 >= n_tgt] == n_tgt).all()
    back = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=w.shape).toarray()
    np.testing.assert_array_equal(back, w)
    assert a["data"].dtype == dt and a["indices"].dtype == np.int32
    frame = ternary(rng, (n, n_src), 0.5)
    idx, sign, cnt = events_of(frame, rng)
    acc0 = rng.integers(-1000, 1000, size=(n, n_tgt)).astype(dt)
    acc, ops = acc0.copy(), np.zeros(n, dtype=np.int64)
    csr.scatter_batch(idx, sign, cnt, a["indptr"], a["indices"], a["data"], acc, ops)
    np.testing.assert_array_equal(acc, acc0 + frame.astype(np.int64) @ w)
    np.testing.assert_array_equal(ops, np.abs(frame) @ rows)      # stored entries: the driver counts row_ops
    assert csr.dense_rows(sp.csr_matrix(np.ones((4, 6), dt)), dt) is None


@pytest.mark.parametrize("top", [9 * 64, 40_000])
def test_tally_tables_count_as_the_per_neuron_counts(top):
    """The driver's table of synaptic operations per source neuron: int16 where every count fits, int64
    otherwise; either way operations = counts x spikes."""
    from evsim.projections.table import tally_table
    rng = np.random.default_rng(top)
    for n in (0, 1, 5, 4099):
        ops = rng.integers(0, top + 1, n)
        spikes = rng.integers(0, 256, n).astype(np.uint8)
        t = tally_table(ops)
        assert t[0] == n and t[1] == (16 if n == 0 or ops.max() < 2 ** 15 else 64)
        assert n < 4099 or t[1] == (16 if top < 2 ** 15 else 64)
        assert K._tally_ops(t, spikes) == int(ops @ spikes.astype(np.int64))


@pytest.mark.parametrize("dt", DTYPES)
def test_scatter_identity_kernel(dt):
    rng = np.random.default_rng(12)
    frame = ternary(rng, (3, 20), 0.5)
    idx, sign, cnt = events_of(frame, rng)
    acc0 = rng.normal(size=(3, 20)).astype(dt)
    acc = acc0.copy()
    ops = np.zeros(3, dtype=np.int64)
    scale = dt(0.8)
    identity.scatter_batch(idx, sign, cnt, scale, acc, ops)
    np.testing.assert_allclose(acc, acc0 + scale * frame, **_tol(dt))
    np.testing.assert_array_equal(ops, np.count_nonzero(frame, axis=1))


def _fire_numpy(model, prm, v, h, drive):
    """The neuron update of evsim.neurons, written out with NumPy."""
    tau, th, ka, kb, kg = prm
    spikes = (v >= th).astype(np.int8)
    if NEURON_MODELS[model].ternary:
        spikes -= (v <= -th).astype(np.int8)
    u = tau * np.where(spikes != 0, 0, v).astype(v.dtype)
    if model == "ctsn_static":
        h = ka * np.maximum(h, 0) + kb * np.minimum(h, 0) + kg * u
        return spikes, h + drive, h
    if model == "ctsn_event":
        h = ka * h + kb * np.maximum(u, 0) + kg * np.minimum(u, 0)
        return spikes, h + drive, h
    return spikes, u + drive, h


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("positions, channels", [(9, 5), (37, 3), (32, 4)])   # events queue 16 at a time: tails
def test_fire_and_advance_kernel(dt, model, channel_major, positions, channels):
    rng = np.random.default_rng(13)
    nm = NEURON_MODELS[model]
    n, size = 3, positions * channels    # channels-last
    prm = np.array([0.25, 0.5, 0.6, 0.3, 0.55], dtype=dt)
    v = rng.normal(0, 0.7, size=(n, size)).astype(dt)
    v[0, :4] = [prm[1], -prm[1], np.nextafter(prm[1], dt(0)), 0.0]   # exactly at / just under the threshold
    h = rng.normal(0, 0.3, size=(n, size if nm.has_complement else 0)).astype(dt)
    drive = rng.normal(0, 0.2, size=(n, size)).astype(dt)
    exp_spikes, exp_v, exp_h = _fire_numpy(model, prm, v.copy(), h.copy(), drive)

    ev_idx = np.full((n, size), -1, dtype=np.int32)
    ev_sign = np.zeros((n, size), dtype=np.int8)
    ev_cnt = np.zeros(n, dtype=np.int64)
    n_pos = np.full(n, 2, dtype=np.int64)
    n_neg = np.full(n, 1, dtype=np.int64)
    frame = np.zeros((n, size), dtype=np.int8)
    K.fire_and_advance(nm.code, prm[0], prm[1], prm[2], prm[3], prm[4], v, h, drive, frame, channels,
                       channel_major, ev_idx, ev_sign, ev_cnt, n_pos, n_neg)
    assert exp_spikes[0, 0] == 1 and exp_spikes[0, 2] == 0
    assert exp_spikes[0, 1] == (-1 if nm.ternary else 0)
    for i in range(n):
        nz = np.flatnonzero(exp_spikes[i])
        if channel_major:                                              # channel by channel, positions ascending
            nz = nz[np.lexsort((nz // channels, nz % channels))]
        assert ev_cnt[i] == nz.size
        np.testing.assert_array_equal(ev_idx[i, :nz.size], nz)
        np.testing.assert_array_equal(ev_sign[i, :nz.size], exp_spikes[i, nz])
    np.testing.assert_array_equal(n_pos, 2 + (exp_spikes == 1).sum(1))
    np.testing.assert_array_equal(n_neg, 1 + (exp_spikes == -1).sum(1))
    assert v.dtype == dt and h.dtype == dt
    np.testing.assert_allclose(v, exp_v, **_tol(dt))
    np.testing.assert_allclose(h, exp_h, **_tol(dt))


@pytest.mark.parametrize("dt", (np.int8,) + DTYPES)
def test_collect_events_kernel(dt):
    rng = np.random.default_rng(14)
    frame = ternary(rng, (4, 30), 0.4).astype(dt)
    frame[1] = 0                                           # a silent sample
    ev_idx = np.zeros((4, 30), dtype=np.int32)
    ev_sign = np.zeros((4, 30), dtype=np.int8)
    ev_cnt = np.full(4, 99, dtype=np.int64)                 # overwritten, not accumulated
    K.collect_events(frame, ev_idx, ev_sign, ev_cnt)
    for i in range(4):
        nz = np.flatnonzero(frame[i])
        assert ev_cnt[i] == nz.size
        np.testing.assert_array_equal(ev_idx[i, :nz.size], nz)
        np.testing.assert_array_equal(ev_sign[i, :nz.size], frame[i, nz].astype(np.int8))
    assert ev_cnt[1] == 0


@pytest.mark.parametrize("driver", ["fused", "profiled"])
@pytest.mark.parametrize("model", ["ternary_lif", "ctsn_static"])
def test_channel_major_events_match_reference(monkeypatch, model, driver):
    """Populations feeding large convs emit events channel by channel; the order must not change a result."""
    import evsim.compiler as C
    monkeypatch.setattr(C, "CHANNEL_MAJOR_WEIGHT_BYTES", 0)      # every conv counts as large
    net, x, ref_out, ref_spikes, ref_ops = case("residual_net", model, "spikes")
    cn = compile_network(net, dtype="float64")
    assert sum(p.channel_major for p in cn.populations) >= 3
    r = simulate(cn, x, record=True, profile=driver == "profiled")
    for name, s in ref_spikes.items():
        np.testing.assert_array_equal(r.spikes[name], s, err_msg=name)
    np.testing.assert_allclose(r.outputs, ref_out, rtol=0, atol=1e-12)
    for pr in net.projections:
        np.testing.assert_array_equal(r.counters.synaptic_ops[pr.name], ref_ops[pr.name], err_msg=pr.name)


def test_reused_state_between_batches_changes_nothing():
    """The engine keeps a batch's state arrays for the next batch of the same size; results must not leak."""
    net = networks.residual_net(model="ctsn_static", encoding="direct")
    cn = compile_network(net, dtype="float64")
    x = networks.random_input(net, 6, seed=5)
    first = simulate(cn, x[:3], record=True)
    kept = {k: v.copy() for k, v in first.counters.synaptic_ops.items()}
    second = simulate(cn, x[3:], record=True)          # same batch size: reuses the arrays
    again = simulate(cn, x[:3], record=True)
    np.testing.assert_array_equal(again.outputs, first.outputs)
    for name in first.spikes:
        np.testing.assert_array_equal(again.spikes[name], first.spikes[name])
    for k in kept:                                      # results handed out are not overwritten later
        np.testing.assert_array_equal(first.counters.synaptic_ops[k], kept[k])
    ref_out = reference.simulate(net, x[3:])[0]
    np.testing.assert_allclose(second.outputs, ref_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
def test_program_shares_the_compiled_weights(conv_mode):
    """The driver's program holds the weights once: the compiled projections become views of it,
    and the driver (profiled or not) still agrees with the reference afterwards."""
    net = networks.residual_net_pruned_taps(model="ternary_lif", encoding="spikes")
    cn = compile_network(net, dtype="float64", conv_mode=conv_mode)
    before = {(cp.name, k): a.copy() for cp in cn.projections for k, a in cp.arrays.items()}
    prog = build_program(cn)
    n_shared = 0
    for cp in cn.projections:
        for k, a in cp.arrays.items():
            np.testing.assert_array_equal(a, before[cp.name, k], err_msg=f"{cp.name}.{k}")
            # has_zeros is a flag, not an array of the network; an empty table (conv_rows' reach of a kernel
            # with no zero weight) holds nothing to share
            if cp.mode != "dense" and k != "has_zeros" and a.size:
                buf = prog.i32buf if a.dtype == np.int32 else prog.fbuf if a.dtype == cn.dtype else prog.ibuf
                assert np.shares_memory(a, buf), f"{cp.name}.{k} is a copy"
                assert a.ctypes.data % 64 == 0, f"{cp.name}.{k} does not start on a cache line"
                n_shared += 1
    assert n_shared >= 10
    assert {cp.mode for cp in cn.projections} >= ({"conv_rows", "conv_taps"} if conv_mode == "kernel" else {"csr"})
    x = networks.random_input(net, 3, seed=2)
    ref_out = reference.simulate(net, x)[0]
    for profile in (False, True):
        np.testing.assert_allclose(simulate(cn, x, profile=profile).outputs, ref_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_of_every_population_starts_on_a_cache_line(dtype):
    """Populations of sizes that are no multiple of 16 still start 64-byte aligned in every sample's state,
    and the gaps between them change no result."""
    net = networks.residual_net(model="ternary_lif", encoding="spikes", c=3, hw=4)   # populations of 48 and 24 neurons
    cn = compile_network(net, dtype=dtype)
    prog = build_program(cn)
    sizes = [p.size for p in cn.populations]
    assert any(n % 16 for n in sizes)                 # the case the padding is for
    np.testing.assert_array_equal(prog.pop_size, sizes)
    assert all(off % 64 == 0 for off in prog.pop_off)
    assert all(prog.pop_off[i] + sizes[i] <= prog.pop_off[i + 1] for i in range(len(sizes)))
    x = networks.random_input(net, 3, seed=4)
    res = simulate(cn, x, record=True)
    ws = prog.workspaces[3]
    assert all(a.ctypes.data % 64 == 0 for a in ws if a.size)     # (an unused, empty one has no memory)
    ref_out, ref_spikes = reference.simulate(net, x)[:2]
    np.testing.assert_allclose(res.outputs, ref_out, rtol=0, atol=1e-12 if dtype == "float64" else 1e-4)
    if dtype == "float64":
        for name in ref_spikes:
            np.testing.assert_array_equal(res.spikes[name], ref_spikes[name], err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_several_direct_input_projections(dtype):
    """Direct input feeding two populations, one of them twice, and the readout: the driver adds each
    current to the biases in projection order, as the reference does; profiled or not, the same answer."""
    rng = np.random.default_rng(5)
    lif = {"tau": 0.5, "v_threshold": 0.6}
    n_in, hid = 10, 24
    pops = [Population("a", (hid,), "ternary_lif", lif), Population("b", (hid,), "ternary_lif", lif)]
    projs = [
        Projection("in_a", "input", "a", "linear", rng.normal(0, 0.8, (hid, n_in)), rng.normal(0, 0.1, hid)),
        Projection("in_b1", "input", "b", "linear", rng.normal(0, 0.8, (hid, n_in)), rng.normal(0, 0.1, hid)),
        Projection("in_b2", "input", "b", "linear", rng.normal(0, 0.8, (hid, n_in)), None),
        Projection("a_b", "a", "b", "linear", rng.normal(0, 0.5, (hid, hid)), None),
        Projection("in_out", "input", "readout", "linear", rng.normal(0, 0.3, (3, n_in)), rng.normal(0, 0.1, 3)),
        Projection("b_out", "b", "readout", "linear", rng.normal(0, 0.5, (3, hid)), None),
    ]
    net = Network(pops, projs, 4, (n_in,), encoding="direct", input_range=(0.0, 1.0))
    x = rng.random((5, n_in))
    cn = compile_network(net, dtype=dtype)
    plain = simulate(cn, x, record=True)
    step = simulate(cn, x, record=True, profile=True)
    np.testing.assert_array_equal(plain.outputs, step.outputs)       # same arithmetic, same order
    for name in step.spikes:
        np.testing.assert_array_equal(plain.spikes[name], step.spikes[name])
    assert all(np.abs(s).sum() > 0 for s in plain.spikes.values())   # both populations spike
    if dtype == "float64":
        ref_out, ref_spikes = reference.simulate(net, x)[:2]
        np.testing.assert_allclose(plain.outputs, ref_out, rtol=0, atol=1e-12)
        for name in ref_spikes:
            np.testing.assert_array_equal(plain.spikes[name], ref_spikes[name])


@pytest.mark.parametrize("profile", [False, True])
def test_identity_of_scale_zero_counts_nothing(profile):
    """A pruned shortcut (scale 0) adds nothing, so it performs and counts no operation."""
    net = networks.residual_net(shortcut_scale=0.0)
    x = networks.random_input(net, 3, seed=2)
    ref_out, ref_spikes, ref_ops = reference.simulate(net, x)
    r = simulate(compile_network(net, dtype="float64"), x, record=True, profile=profile)
    np.testing.assert_allclose(r.outputs, ref_out, rtol=0, atol=1e-12)
    for name, s in ref_spikes.items():
        np.testing.assert_array_equal(r.spikes[name], s, err_msg=name)
    assert r.counters.events_in["b1.shortcut"].sum() > 0
    np.testing.assert_array_equal(r.counters.synaptic_ops["b1.shortcut"], 0)
    np.testing.assert_array_equal(ref_ops["b1.shortcut"], 0)


def test_import_and_run_leave_the_environment_and_thread_count_alone():
    """`import evsim` and a run set no environment variable (PyTorch's OpenMP must not see evsim's
    choices) and leave the caller's Numba thread count as it was; ``threads`` acts per call."""
    import subprocess
    import sys
    code = (
        "import os, json; before = dict(os.environ)\n"
        "import numba, numpy as np, evsim, networks\n"
        "net = evsim.compile_network(networks.residual_net())\n"
        "numba.set_num_threads(1)\n"
        "r = evsim.simulate(net, networks.random_input(networks.residual_net(), 3), threads=2)\n"
        "print(json.dumps([sorted(set(os.environ.items()) ^ set(before.items())), numba.get_num_threads()]))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).parent)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    changed, n_threads = __import__("json").loads(p.stdout.splitlines()[-1])
    assert changed == [] and n_threads == 1


def test_profile_shares_out_the_driver_time():
    """A profiled run names every step of the program once, the driver's parts add up to its wall time,
    and the kinds the network uses all took time (where the CPU has a clock evsim can read)."""
    from evsim.clock import AVAILABLE
    net = networks.residual_net(encoding="spikes")
    cn = compile_network(net, dtype="float32")
    r = run(cn, networks.random_input(net, 6, seed=2), batch_size=3, profile=True)
    p = r.profile
    assert p is not None and p.n_samples == 6
    prog = build_program(cn)
    assert len(p.parts) == len(prog.steps) + 3
    assert [label for label, _, _ in p.parts[:len(prog.steps)]] == [
        (cn.projections[j] if k == 0 else cn.populations[j]).name for k, j in prog.steps]
    assert 0 < p.driver_s <= p.total_s
    if AVAILABLE:
        assert p.available
        driver = sum(sec for _, what, sec in p.parts if not what.startswith("dense MACs"))
        assert abs(driver - p.driver_s) <= 1e-9 * max(1.0, p.driver_s)
        kinds = p.by_kind()
        assert all(kinds[cp.mode] > 0 for cp in cn.projections)
        assert kinds["fire ternary_lif"] > 0
    assert simulate(cn, networks.random_input(net, 2, seed=2)).profile is None

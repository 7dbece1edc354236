"""Property tests of the CSR builders, the channels-last layout and the event queue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import networks
import reference
from evsim import compile_network, kernels as K
from evsim.compiler import ConvGeometry
from evsim.layout import cl_permutation, from_channels_last, to_channels_last
from evsim.projections.conv_taps import lower_weights as kernel_csr
from evsim.projections.csr import conv_explicit_csr, conv_explicit_nnz, linear_csr
from evsim.projections.positions import decode, divider
from evsim.errors import NetworkError
from evsim.neurons import LIF_TERNARY

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_cases(draw):
    """A small conv: weight with random pruning (possibly whole channels), geometry, and a seed."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 7))
    w = draw(st.integers(max(1, kw - 2 * pw), 7))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(c_out, c_in, kh, kw))
    weight[rng.random(weight.shape) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))] = 0.0
    if draw(st.booleans()):
        weight[:, draw(st.integers(0, c_in - 1))] = 0.0     # an input channel with no synapse at all
    if draw(st.booleans()):
        weight[draw(st.integers(0, c_out - 1))] = 0.0       # an output channel nobody reaches
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    geom = ConvGeometry(c_in, h, w, c_out, ho, wo, (kh, kw), (sh, sw), (ph, pw))
    return weight, geom, rng


@SETTINGS
@given(conv_cases(), st.sampled_from(["float32", "float64"]))
def test_explicit_conv_csr_equals_dense_conv(case, dtype):
    weight, g, rng = case
    m = conv_explicit_csr(weight, g, np.dtype(dtype))
    assert m.shape == (g.c_in * g.h_in * g.w_in, g.c_out * g.h_out * g.w_out)
    assert m.dtype == np.dtype(dtype)
    assert np.all(m.data != 0)                               # pruned weights are not stored
    assert m.nnz == conv_explicit_nnz(weight, g)
    assert m.nnz == reference.conv_reach((g.c_in, g.h_in, g.w_in), weight, g.stride, g.padding).sum()
    x = rng.normal(size=(2, g.c_in, g.h_in, g.w_in))
    y_cl = to_channels_last(x, (g.c_in, g.h_in, g.w_in)) @ m.toarray().astype(np.float64)
    y = from_channels_last(y_cl, (g.c_out, g.h_out, g.w_out))
    expected = np.stack([reference.conv2d(xi, weight, g.stride, g.padding) for xi in x])
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


@SETTINGS
@given(conv_cases())
def test_kernel_csr_keeps_exactly_the_nonzero_taps(case):
    weight, g, _ = case
    c_out, c_in, kh, kw = weight.shape
    k = kernel_csr(weight, np.float32)
    assert k["tap_ptr"].shape == (c_in + 1,) and k["tap_ptr"][0] == 0
    assert np.all(np.diff(k["tap_ptr"]) >= 0)
    n_taps = k["tap_ptr"][-1]
    assert k["tap_y"].shape == k["tap_x"].shape == k["tap_nnz"].shape == (n_taps,)
    assert k["tap_w"].shape == (n_taps, c_out) and k["tap_w"].flags.c_contiguous
    assert k["tap_w"].dtype == np.float32
    for ci in range(c_in):
        lo, hi = k["tap_ptr"][ci], k["tap_ptr"][ci + 1]
        kept = set(zip(k["tap_y"][lo:hi].tolist(), k["tap_x"][lo:hi].tolist()))
        expected = {(ky, kx) for ky in range(kh) for kx in range(kw) if np.any(weight[:, ci, ky, kx] != 0)}
        assert kept == expected and hi - lo == len(expected)
        for j in range(lo, hi):
            col = weight[:, ci, k["tap_y"][j], k["tap_x"][j]]
            np.testing.assert_array_equal(k["tap_w"][j], col.astype(np.float32))
            assert k["tap_nnz"][j] == np.count_nonzero(col) > 0
    assert k["tap_nnz"].sum() == np.count_nonzero(weight)


shapes = st.one_of(st.tuples(st.integers(1, 20)),
                   st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)))


@SETTINGS
@given(shapes, st.one_of(st.none(), shapes), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_linear_csr_equals_dense_matmul(src_shape, tgt_shape, prune, seed):
    rng = np.random.default_rng(seed)
    n_out = int(np.prod(tgt_shape)) if tgt_shape is not None else int(rng.integers(1, 6))
    n_in = int(np.prod(src_shape))
    weight = rng.normal(size=(n_out, n_in))
    weight[rng.random(weight.shape) < prune] = 0.0
    m = linear_csr(weight, src_shape, tgt_shape, np.float64)
    assert m.shape == (n_in, n_out)
    assert m.nnz == np.count_nonzero(weight) and np.all(m.data != 0)
    assert m.has_sorted_indices
    x = rng.normal(size=(3,) + src_shape)
    y = to_channels_last(x, src_shape) @ m.toarray()
    expected = x.reshape(3, -1) @ weight.T
    if tgt_shape is not None:
        expected = to_channels_last(expected.reshape((3,) + tgt_shape), tgt_shape)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_explicit_memory_guard():
    weight = np.ones((8, 8, 3, 3))
    g = ConvGeometry(8, 16, 16, 8, 16, 16, (3, 3), (1, 1), (1, 1))
    with pytest.raises(NetworkError, match=r"explicit CSR .* over the .* limit; use the kernel CSR"):
        conv_explicit_csr(weight, g, np.float64, limit_mb=1e-3)
    assert conv_explicit_csr(weight, g, np.float64, limit_mb=100).nnz == conv_explicit_nnz(weight, g)
    net = networks.residual_net()
    with pytest.raises(NetworkError, match="explicit CSR"):
        compile_network(net, conv_mode="explicit", explicit_limit_mb=1e-4)


@SETTINGS
@given(shapes, st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_channels_last_round_trip(shape, n, seed):
    x = np.random.default_rng(seed).normal(size=(n,) + shape)
    cl = to_channels_last(x, shape)
    assert cl.shape == (n, int(np.prod(shape))) and cl.flags.c_contiguous
    np.testing.assert_array_equal(from_channels_last(cl, shape), x)
    # cl[:, i] is PyTorch flat index perm[i]; for a map, index p * C + c holds channel c at position p
    np.testing.assert_array_equal(cl, x.reshape(n, -1)[:, cl_permutation(shape)])
    if len(shape) == 3:
        c, h, w = shape
        p, ch = divmod(int(seed % (c * h * w)), c)
        assert cl[0, p * c + ch] == x[0, ch, p // w, p % w]
    # leading axes are kept: (T, N, P*C) -> (T, N, C, H, W)
    stacked = np.stack([cl, 2 * cl])
    np.testing.assert_array_equal(from_channels_last(stacked, shape), np.stack([x, 2 * x]))


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_event_queue_round_trip(n, size, density, seed):
    rng = np.random.default_rng(seed)
    frame = (rng.random((n, size)) < density).astype(np.int8) * rng.choice(np.array([-1, 1], np.int8), (n, size))
    ev_idx = np.zeros((n, size), dtype=np.int32)
    ev_sign = np.zeros((n, size), dtype=np.int8)
    ev_cnt = np.zeros(n, dtype=np.int64)
    K.collect_events(frame, ev_idx, ev_sign, ev_cnt)
    np.testing.assert_array_equal(ev_cnt, np.count_nonzero(frame, axis=1))
    for i in range(n):
        assert np.all(np.diff(ev_idx[i, :ev_cnt[i]]) > 0)
    out = np.full((n, size), 7, dtype=np.int8)              # stale values must be cleared
    K.events_to_dense(ev_idx, ev_sign, ev_cnt, out)
    np.testing.assert_array_equal(out, frame)


@SETTINGS
@given(st.integers(1, 2**31 - 1), st.data())
def test_divider_is_exact_on_every_int32_index(d, data):
    """The scatter divides event indices by a multiply and a shift instead of an integer division."""
    m, s = divider(d)
    k = data.draw(st.integers(0, (2**31 - 1) // d))
    candidates = [0, 2**31 - 1, k * d, k * d - 1, k * d + d - 1, data.draw(st.integers(0, 2**31 - 1))]
    for n in candidates:
        if 0 <= n < 2**31:
            assert (n * int(m)) >> int(s) == n // d, (n, d)
            assert n * int(m) < 2**64                     # the product fits the kernel's uint64


@SETTINGS
@given(st.integers(1, 4096), st.integers(1, 4096), st.integers(1, 4096), st.data())
def test_event_decode_is_exact(c_in, h_in, w_in, data):
    """Channel, row and column of any int32 event index, as the scatter kernels decode it."""
    n = min(c_in * h_in * w_in, 2**31)
    idx = data.draw(st.sampled_from([0, n - 1, n // 2, min(c_in - 1, n - 1), min(c_in, n - 1),
                                     min(w_in * c_in - 1, n - 1)]) | st.integers(0, n - 1))
    m_c, s_c = divider(c_in)
    m_w, s_w = divider(w_in)
    c, y, x = decode(idx, c_in, w_in, m_c, s_c, m_w, s_w)
    p, c_ref = divmod(idx, c_in)
    assert (c, y, x) == (c_ref, p // w_in, p % w_in)


@SETTINGS
@given(st.integers(1, 70), st.integers(1, 6), st.floats(0.0, 1.0), st.booleans(), st.integers(0, 2**32 - 1))
def test_fire_queues_every_spike_in_order(positions, channels, density, channel_major, seed):
    """The vector queue (16 neurons per step, strided when channel by channel) against np.flatnonzero."""
    rng = np.random.default_rng(seed)
    size = positions * channels
    spikes = (rng.random(size) < density).astype(np.int8) * rng.choice(np.array([-1, 1], np.int8), size)
    v = spikes.astype(np.float64) * 2.0                     # threshold 1: these potentials fire exactly `spikes`
    ev_idx = np.full(size, -1, dtype=np.int32)
    ev_sign = np.zeros(size, dtype=np.int8)
    frame = np.zeros(size, dtype=np.int8)
    cnt, pos, neg = K.fire(LIF_TERNARY, 0.5, 1.0, 0.0, 0.0, 0.0, v, np.zeros(0), np.zeros(size), frame, channels,
                           channel_major, ev_idx, ev_sign)
    expected = np.flatnonzero(spikes)
    if channel_major:
        expected = expected[np.lexsort((expected // channels, expected % channels))]
    assert (cnt, pos, neg) == (expected.size, int((spikes > 0).sum()), int((spikes < 0).sum()))
    np.testing.assert_array_equal(ev_idx[:cnt], expected)
    np.testing.assert_array_equal(ev_sign[:cnt], spikes[expected])


def test_compiled_sizes():
    net = networks.residual_net(encoding="spikes")
    kernel = compile_network(net, conv_mode="kernel")
    explicit = compile_network(net, conv_mode="explicit")
    assert kernel.nbytes > 0
    assert explicit.nbytes > kernel.nbytes
    assert compile_network(net, dtype="float32").nbytes < kernel.nbytes
    modes = {p.name: p.mode for p in kernel.projections}
    assert modes == {"stem.conv": "conv_rows", "b1.conv1": "conv_rows", "b1.conv2": "conv_rows",
                     "b1.shortcut": "identity", "b2.conv1": "conv_rows", "b2.conv2": "conv_rows",
                     "b2.shortcut": "conv_rows", "fc": "csr"}
    # a kernel whose taps are mostly empty is scattered tap by tap (the empty taps cost nothing)
    pruned = {p.name: p.mode for p in compile_network(networks.residual_net_pruned_taps(encoding="spikes")).projections}
    assert pruned["b1.conv2"] == pruned["b2.conv1"] == "conv_taps" and pruned["b1.conv1"] == "conv_rows"
    assert {p.name: p.mode for p in explicit.projections}["b1.conv1"] == "csr"
    direct = compile_network(networks.residual_net(encoding="direct"))
    assert direct.direct == [0] and direct.projections[0].mode == "dense"


def test_compile_rejects_unknown_options():
    net = networks.mlp_net()
    with pytest.raises(NetworkError, match="unknown dtype 'float16'"):
        compile_network(net, dtype="float16")
    with pytest.raises(NetworkError, match="unknown conv mode 'im2col'"):
        compile_network(net, conv_mode="im2col")


@SETTINGS
@given(conv_cases())
def test_offset_maps_match_the_conv_definition(case):
    """row_map[y, ky] = oy exactly when oy * stride - pad + ky == y inside the output map (else -1)."""
    _, geom, _ = case
    row_map, col_map = geom.offset_maps()
    for table, n_in, k, s, p, n_out in ((row_map, geom.h_in, geom.kernel[0], geom.stride[0], geom.padding[0],
                                         geom.h_out),
                                        (col_map, geom.w_in, geom.kernel[1], geom.stride[1], geom.padding[1],
                                         geom.w_out)):
        assert table.shape == (n_in, k) and table.dtype == np.int32
        for y in range(n_in):
            for ky in range(k):
                hits = [o for o in range(n_out) if o * s - p + ky == y]
                assert table[y, ky] == (hits[0] if hits else -1)

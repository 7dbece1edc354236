"""The pooled conv (format v3, evsim/pooling.py): average pooling before a conv, run exactly.

* the lowering (composite conv + edge correction) against PyTorch's AvgPool2d followed by Conv2d in
  float64, on even and odd maps, with ``ceil_mode`` and both divisors, for hand-picked and
  hypothesis-drawn shapes; its count of synaptic operations against the non-zeros of the exact map,
  computed independently by pushing one impulse per source neuron through PyTorch;
* whole networks through the engine's driver against the dense PyTorch reference, spike for spike;
* the file: round trip as version 3, v1/v2 still written for everything else, and one clear line for
  every malformed pool attribute.
"""

from __future__ import annotations


import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from evsim import compile_network, read_network, simulate, write_network
from evsim.bridge.dense import run_folded_torch
from evsim.errors import FormatError, LimitError, NetworkError
from evsim.format import file_version
from evsim.graph import Network, Population, Projection
from evsim.layout import to_channels_last
from evsim.limits import Limits
from evsim.pooling import AvgPool
from evsim.projections import conv_rows, csr
from test_format import assert_edit_refused

LIF = {"tau": 0.5, "v_threshold": 1.2}


def pooled_net(pool: AvgPool, c_in=2, h=8, w=8, c_out=3, k=(3, 3), stride=(1, 1), padding=(1, 1), seed=0, T=3):
    """Spike input -> pooled conv -> population -> linear readout."""
    rng = np.random.default_rng(seed)
    hp, wp = pool.output_hw(h, w)
    ho, wo = (hp + 2 * padding[0] - k[0]) // stride[0] + 1, (wp + 2 * padding[1] - k[1]) // stride[1] + 1
    pops = [Population("a", (c_out, ho, wo), "ternary_lif", LIF)]
    projs = [Projection("pc", "input", "a", "conv2d", rng.normal(0, 1.0, (c_out, c_in) + k), rng.normal(0, 0.1, c_out),
                        stride, padding, pool=pool),
             Projection("fc", "a", "readout", "linear", rng.normal(0, 1.0, (4, c_out * ho * wo)))]
    return Network(pops, projs, T, (c_in, h, w), encoding="spikes")


def torch_pooled_conv(x, weight, pool: AvgPool, stride, padding):
    y = F.avg_pool2d(torch.from_numpy(x), pool.kernel, pool.stride, pool.padding, pool.ceil_mode,
                     pool.count_include_pad)
    return F.conv2d(y, torch.from_numpy(weight), None, stride, padding).numpy()


def exact_map_nonzeros(weight, pool: AvgPool, src_shape, stride, padding) -> np.ndarray:
    """Per source neuron (PyTorch order): the non-zeros of its column of pool-then-conv, from one impulse each."""
    n = int(np.prod(src_shape))
    eye = np.eye(n).reshape((n,) + tuple(src_shape))
    cols = torch_pooled_conv(eye, weight, pool, stride, padding).reshape(n, -1)
    return (cols != 0).sum(axis=1)


def scatter(cn, frame_cl):
    """The current and counted operations of the first graph projection (and its edge correction), from one
    frame of events per sample: the compiled kernels called directly."""
    n = frame_cl.shape[0]
    idx = np.zeros(frame_cl.shape, dtype=np.int32)
    sign = np.zeros(frame_cl.shape, dtype=np.int8)
    cnt = np.zeros(n, dtype=np.int64)
    for i in range(n):
        nz = np.flatnonzero(frame_cl[i])
        idx[i, :nz.size], sign[i, :nz.size], cnt[i] = nz, frame_cl[i, nz], nz.size
    main = cn.projections[0]
    g = main.geometry
    acc = np.zeros((n, g.c_out * g.h_out * g.w_out))
    ops = np.zeros(n, dtype=np.int64)
    uncounted = np.zeros(n, dtype=np.int64)
    for cp in cn.projections:
        if cp.name != main.name and cp.part_of != main.name:
            continue
        a = cp.arrays
        counter = ops if cp.part_of is None else uncounted
        if cp.mode == conv_rows.NAME:
            conv_rows.scatter_batch(idx, sign, cnt, g.c_in, g.w_in, g.kernel[0], g.kernel[1], a["row_map"],
                                    a["col_plan"], g.w_out, g.c_out, a["row_w"], a["reach"], bool(a["has_zeros"]),
                                    acc, counter)
        else:
            assert cp.mode == csr.NAME
            csr.scatter_batch(idx, sign, cnt, a["indptr"], a["indices"], a["data"], acc, counter)
    return acc, ops


def check_lowering(pool, c_in, h, w, c_out, k, stride, padding, seed, conv_mode="kernel", n=3):
    net = pooled_net(pool, c_in, h, w, c_out, k, stride, padding, seed).validate()
    pr = net.projections[0]
    cn = compile_network(net, "float64", conv_mode=conv_mode)
    rng = np.random.default_rng(seed + 1)
    frame = (rng.random((n, c_in, h, w)) < 0.4) * rng.choice([-1, 1], (n, c_in, h, w))
    acc, ops = scatter(cn, to_channels_last(frame.astype(np.int8), (c_in, h, w)))
    want = torch_pooled_conv(frame.astype(np.float64), pr.weight, pool, stride, padding)
    ho, wo = want.shape[2:]
    got = acc.reshape(n, ho, wo, c_out).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    nnz = exact_map_nonzeros(pr.weight, pool, (c_in, h, w), stride, padding)
    np.testing.assert_array_equal(ops, (frame != 0).reshape(n, -1) @ nnz)
    return cn


@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
@pytest.mark.parametrize("h, w", [(8, 8), (9, 9), (8, 9), (32, 33)])
def test_stem_pool_then_conv_equals_pytorch(h, w, conv_mode):
    """Their ImageNet ResNets' stem pool, AvgPool2d(3, 2, 1), then a 3x3 conv: on an even map the composite 7x7/2
    conv alone would read pooled row Hp from source row H-1; the edge correction removes exactly that."""
    pool = AvgPool((3, 3), (2, 2), (1, 1))
    cn = check_lowering(pool, 3, h, w, 4, (3, 3), (1, 1), (1, 1), seed=h * 100 + w, conv_mode=conv_mode)
    g = cn.projections[0].geometry
    assert (g.kernel, g.stride, g.padding) == ((7, 7), (2, 2), (3, 3))
    edge = [cp for cp in cn.projections if cp.part_of == "pc"]
    if conv_mode == "explicit" or (h % 2 and w % 2):
        assert edge == []                      # odd maps: the composite is the pooled conv exactly
    else:
        assert len(edge) == 1 and edge[0].mode == "csr"
        indptr = edge[0].arrays["indptr"]
        rows = np.flatnonzero(np.diff(indptr))  # source neurons with a correction: the last row and column only
        pos = rows // 3
        y, x = pos // w, pos % w
        assert set(zip(y.tolist(), x.tolist())) <= {(h - 1, c) for c in range(w)} | {(r, w - 1) for r in range(h)}


@pytest.mark.parametrize("pool", [
    AvgPool((2, 2), (2, 2), (0, 0), ceil_mode=True, count_include_pad=False),   # resnet20m's AvgDown on odd maps
    AvgPool((3, 3), (2, 2), (1, 1), count_include_pad=False),
    AvgPool((3, 2), (1, 2), (1, 0), ceil_mode=True),
    AvgPool((2, 2), (2, 2), (0, 0)),                                             # floor mode drops the last row
], ids=["avgdown", "excl-pad", "ceil-rect", "floor"])
@pytest.mark.parametrize("conv_mode", ["kernel", "explicit"])
def test_partial_windows_and_divisors_equal_pytorch(pool, conv_mode):
    for h, w in ((5, 5), (6, 7)):
        check_lowering(pool, 2, h, w, 3, (1, 1), (1, 1), (0, 0), seed=h, conv_mode=conv_mode)
        check_lowering(pool, 2, h, w, 3, (2, 2), (1, 1), (1, 1), seed=h + 1, conv_mode=conv_mode)


@st.composite
def pooled_geometries(draw):
    kp = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sp = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pp = (draw(st.integers(0, kp[0] // 2)), draw(st.integers(0, kp[1] // 2)))
    pool = AvgPool(kp, sp, pp, draw(st.booleans()), draw(st.booleans()))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(pool.problem(h, w) is None)
    hp, wp = pool.output_hw(h, w)
    assume(hp >= 1 and wp >= 1)
    pad = (draw(st.integers(0, min(1, hp))), draw(st.integers(0, min(1, wp))))
    k = (draw(st.integers(1, min(3, hp + 2 * pad[0]))), draw(st.integers(1, min(3, wp + 2 * pad[1]))))
    stride = (draw(st.integers(1, min(2, hp + 2 * pad[0]))), draw(st.integers(1, min(2, wp + 2 * pad[1]))))
    return pool, draw(st.integers(1, 3)), h, w, draw(st.integers(1, 3)), k, stride, pad, draw(st.integers(0, 99))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooled_geometries(), st.sampled_from(["kernel", "explicit"]))
def test_pooled_conv_equals_pytorch_property(geometry, conv_mode):
    check_lowering(*geometry, conv_mode=conv_mode)


@pytest.mark.parametrize("h", [8, 9])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_engine_runs_pooled_networks_spike_exact(h, dtype):
    """Through the fused driver (the correction as its own table row), against the dense PyTorch reference."""
    pool = AvgPool((3, 3), (2, 2), (1, 1))
    net = pooled_net(pool, 3, h, h, 4, seed=h).validate()
    rng = np.random.default_rng(h)
    x = ((rng.random((4, 3, 3, h, h)) < 0.5) * rng.choice([-1, 1], (4, 3, 3, h, h))).astype(np.float64)
    res = simulate(compile_network(net, dtype), x, record=True)
    out, spikes = run_folded_torch(net, torch.from_numpy(x))
    rate = float(np.abs(res.spikes["a"]).mean())
    assert 0.05 < rate < 0.6, rate
    if dtype == "float64":
        np.testing.assert_array_equal(res.spikes["a"], spikes["a"].numpy())
        np.testing.assert_allclose(res.outputs, out.numpy(), atol=1e-9)
    else:
        assert (res.spikes["a"] == spikes["a"].numpy()).mean() > 0.99
    # counters list the graph's projections only: the edge correction is part of "pc"
    assert sorted(res.counters.synaptic_ops) == ["fc", "pc"]
    ops = res.counters.synaptic_ops["pc"]
    nnz = exact_map_nonzeros(net.projections[0].weight, pool, (3, h, h), (1, 1), (1, 1))
    np.testing.assert_array_equal(ops, np.einsum("ntp,p->n", (x != 0).reshape(4, 3, -1).astype(np.int64), nnz))


def test_pooled_conv_from_a_population_counts_the_exact_map():
    """Events from a population (the driver may count from per-neuron spike tallies): the same rule."""
    pool = AvgPool((3, 3), (2, 2), (1, 1))
    rng = np.random.default_rng(5)
    pops = [Population("s", (3, 8, 8), "ternary_lif", LIF), Population("a", (4, 4, 4), "ternary_lif", LIF)]
    projs = [Projection("stem", "input", "s", "conv2d", rng.normal(0, 0.6, (3, 2, 3, 3)), None, (1, 1), (1, 1)),
             Projection("pc", "s", "a", "conv2d", rng.normal(0, 1.0, (4, 3, 3, 3)), None, (1, 1), (1, 1), pool=pool),
             Projection("fc", "a", "readout", "linear", rng.normal(0, 1.0, (2, 64)))]
    net = Network(pops, projs, 4, (2, 8, 8), encoding="spikes").validate()
    x = ((rng.random((3, 4, 2, 8, 8)) < 0.5) * rng.choice([-1, 1], (3, 4, 2, 8, 8))).astype(np.float64)
    res = simulate(compile_network(net, "float64"), x, record=True)
    out, spikes = run_folded_torch(net, torch.from_numpy(x))
    np.testing.assert_array_equal(res.spikes["a"], spikes["a"].numpy())
    fired = np.abs(res.spikes["s"]).reshape(4, 3, -1).sum(axis=0).astype(np.int64)      # per sample and neuron
    assert 0.05 < fired.sum() / (3 * 4 * 192) < 0.6
    nnz = exact_map_nonzeros(projs[1].weight, pool, (3, 8, 8), (1, 1), (1, 1))
    np.testing.assert_array_equal(res.counters.synaptic_ops["pc"], fired @ nnz)
    np.testing.assert_array_equal(res.counters.events_in["pc"], fired.sum(axis=1))


def test_report_and_dense_macs_of_a_pooled_conv():
    pool = AvgPool((3, 3), (2, 2), (1, 1))
    net = pooled_net(pool, 3, 8, 8, 4).validate()
    cn = compile_network(net, "float64")
    assert [cp.name for cp in cn.reported_projections] == ["pc", "fc"]
    assert [cp.name for cp in cn.projections] == ["pc", "pc/edge", "fc"]
    # the ANN equivalent: the 3x3 conv on the 4x4 pooled map (taps inside the map x C_in x C_out)
    assert cn.projections[0].dense_macs == (4 * 4 * 9 - 4 * 3 * 4 + 4) * 3 * 4


# ------------------------------------------------------------------ the file
def test_round_trip_as_version_3_and_others_stay_version_1(tmp_path):
    pool = AvgPool((2, 3), (2, 1), (1, 1), ceil_mode=True, count_include_pad=False)
    net = pooled_net(pool, 2, 7, 6, 3).validate()
    path = write_network(net, tmp_path / "pooled.h5")
    with h5py.File(path) as f:
        assert f.attrs["format_version"] == 3
        g = f["projections/pc"]
        assert g.attrs["pool_kernel"].tolist() == [2, 3] and g.attrs["pool_ceil_mode"] == 1
        assert g.attrs["pool_count_include_pad"] == 0 and "pool_kernel" not in f["projections/fc"].attrs
    back = read_network(path)
    assert back.projections[0].pool == pool and back.projections[1].pool is None
    assert back.projections[0].weight.tobytes() == net.projections[0].weight.tobytes()
    net.projections[0].pool = None
    net.projections[0].weight = net.projections[0].weight[:, :, :1, :1].copy()
    net.projections[0].padding = (0, 0)
    net.populations[0].shape = (3, 7, 6)
    net.projections[1].weight = np.zeros((4, 3 * 7 * 6))
    assert file_version(net.validate()) == 1


@pytest.fixture(scope="module")
def pooled_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pooled") / "pooled.h5"
    write_network(pooled_net(AvgPool((3, 3), (2, 2), (1, 1))), path)
    return path


def _set(path, key, value):
    return lambda f: f[path].attrs.__setitem__(key, value)


def _del(path, key):
    return lambda f: f[path].attrs.__delitem__(key)


POOL = "projections/pc"
BAD = {
    "version_1_with_pool": (_set("/", "format_version", 1), FormatError,
                            r"/projections/pc: attribute 'pool_kernel' \(a pooled conv\) needs format version 3, "
                            r"the file says 1"),
    "version_2_with_pool": (_set("/", "format_version", 2), FormatError, r"is a fixed-point network but has no"),
    "version_3_without_pool": (lambda f: [f[POOL].attrs.__delitem__(k) for k in list(f[POOL].attrs)
                                          if k.startswith("pool_")], FormatError,
                               r"format version 3 is for networks with a pooled conv, but no projection has pool"),
    "fixed_point_in_version_3": (_set("/", "fixed_point", "{}"), FormatError,
                                 r"has an attribute 'fixed_point', which needs version 2"),
    "missing_pool_stride": (_del(POOL, "pool_stride"), FormatError,
                            r"a pooled conv needs all of pool_kernel, .*; missing attribute 'pool_stride'"),
    "kernel_zero": (_set(POOL, "pool_kernel", [0, 3]), FormatError, r"'pool_kernel' must be positive, got \(0, 3\)"),
    "kernel_one_element": (_set(POOL, "pool_kernel", [3]), FormatError, r"'pool_kernel' must hold 2 integers"),
    "kernel_float": (_set(POOL, "pool_kernel", [3.0, 3.0]), FormatError, r"'pool_kernel' must hold 2 integers"),
    "stride_negative": (_set(POOL, "pool_stride", [-2, 2]), FormatError, r"'pool_stride' must be positive"),
    "padding_negative": (_set(POOL, "pool_padding", [-1, 1]), FormatError, r"'pool_padding' must not be negative"),
    "padding_over_half_kernel": (_set(POOL, "pool_padding", [2, 1]), NetworkError,
                                 r"projection 'pc': pool padding \(2, 1\) is more than half the pool kernel \(3, 3\)"),
    "kernel_over_source": (_set(POOL, "pool_kernel", [11, 3]), NetworkError,
                           r"projection 'pc': pool kernel \(11, 3\) is larger than the padded source 10x10"),
    "stride_10**9": (_set(POOL, "pool_stride", [10**9, 10**9]), NetworkError, r"pool stride .* is longer than the"),
    "ceil_mode_2": (_set(POOL, "pool_ceil_mode", 2), FormatError, r"'pool_ceil_mode' must be 0 or 1, got 2"),
    "include_pad_float": (_set(POOL, "pool_count_include_pad", 1.0), FormatError,
                          r"'pool_count_include_pad' must be an integer, got 1.0"),
    "include_pad_text": (_set(POOL, "pool_count_include_pad", "yes"), FormatError, r"must be an integer, got text"),
    "include_pad_bool": (_set(POOL, "pool_count_include_pad", True), FormatError, r"HDF5 enum \(bool\) type"),
    "pool_on_linear": (lambda f: [f["projections/fc"].attrs.__setitem__(k, f[POOL].attrs[k])
                                  for k in f[POOL].attrs if k.startswith("pool_")], NetworkError,
                       r"projection 'fc': only a conv2d projection can pool its source, this one is linear"),
    "output_mismatch": (_set(POOL, "pool_stride", [1, 1]), NetworkError,
                        r"projection 'pc': conv2d output would be \(3, 8, 8\), target 'a' has shape \(3, 4, 4\)"),
    "direct_input": (_set("/", "encoding", "direct"), NetworkError,
                     r"projection 'pc': a pooled conv from a direct-encoded \(real-valued\) input is not supported"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_pool_is_one_line(tmp_path, pooled_file, name):
    assert_edit_refused(tmp_path, pooled_file, name, *BAD[name])


def test_pooled_file_control_reads_and_runs(pooled_file):
    net = read_network(pooled_file)
    assert net.projections[0].pool == AvgPool((3, 3), (2, 2), (1, 1))
    assert np.isfinite(simulate(compile_network(net, "float32"), np.zeros((1, 3, 2, 8, 8))).outputs).all()


def test_compiler_budget_covers_the_composite():
    net = pooled_net(AvgPool((2, 2), (40, 40), (0, 0)), 2, 200, 200, 2, (3, 3), (1, 1), (1, 1)).validate()
    with pytest.raises(LimitError, match=r"compiling pooled conv 'pc': its composite 82x82 kernel"):
        compile_network(net, "float64", limits=Limits(max_bytes=100_000))


def test_quantize_map_and_nir_refuse_pooled_convs(tmp_path, pooled_file):
    from click.testing import CliRunner

    from evsim.bridge.nir import network_to_nir
    from evsim.cli import main
    from evsim.hardware.mapping import map_network
    from evsim.hardware.profile import load_profile
    res = CliRunner().invoke(main, ["quantize", "-w", str(pooled_file), "--weight-bits", "8", "-o",
                                    str(tmp_path / "q.h5")])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        "Error: projection 'pc' is a pooled conv (format v3): evsim quantize does not quantise average pooling "
        "before a conv; run the network in float32 or float64"]
    net = read_network(pooled_file)
    with pytest.raises(NetworkError, match="NIR export of average pooling before a conv is not supported"):
        network_to_nir(net, tmp_path / "x.nir")
    with pytest.raises(NetworkError, match="does not map average pooling before a conv"):
        map_network(net, load_profile("loihi2"))
    res = CliRunner().invoke(main, ["info", str(pooled_file)])
    assert res.exit_code == 0 and "avgpool k=3x3 s=2,2 p=1,1, then k=3x3 s=1 p=1" in res.output

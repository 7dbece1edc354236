"""Lower a :class:`~evsim.graph.Network` to the arrays the engine runs on.

* linear projections -> CSR rows per presynaptic neuron (scipy names:
  ``indptr``, ``indices``, ``data``), zeros dropped;
* conv projections -> weight-shared kernel *rows* (``conv_rows``: each kernel
  row's taps over the output channels as one contiguous run, any stride), or,
  for kernels whose taps are mostly empty, a *kernel CSR* (mode ``conv``: per
  input channel its non-zero taps, each with the weight vector over output
  channels; pruned taps cost nothing). Optionally (``conv_mode="explicit"``) a per-neuron CSR
  of the same conv, built with scipy.sparse and guarded by a memory limit,
  since it grows with neurons x fan-out;
* identity projections -> a scale;
* projections from a direct-encoded input -> a dense operator evaluated
  once per sample (its multiply-accumulates are counted once).

All index arithmetic is in the engine's channels-last order (``p * C + c``).
Shapes and dtypes are fixed here, once, never checked in the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import NetworkError
from .graph import INPUT, READOUT, Network, Population, Projection, conv_output_hw
from .limits import Limits
from .tuning import CHANNEL_MAJOR_WEIGHT_BYTES, ROWS_OVER_TAPS_MAX_EMPTY

DTYPES = {"float32": np.float32, "float64": np.float64}
CONV_MODES = ("kernel", "explicit")
DEFAULT_EXPLICIT_LIMIT_MB = 1024.0


@dataclass
class ConvGeometry:
    c_in: int
    h_in: int
    w_in: int
    c_out: int
    h_out: int
    w_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def offset_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """row_map[y, ky]: the output row input row y reaches through kernel row ky, or -1
        (outside the map, or between strides); col_map[x, kx] likewise. int32."""
        def one(n_in, k, stride, pad, n_out):
            num = np.arange(n_in)[:, None] + pad - np.arange(k)[None, :]
            out = np.where(num >= 0, num // stride, -1)
            ok = (num >= 0) & (num % stride == 0) & (out < n_out)
            return np.where(ok, out, -1).astype(np.int32)
        return (one(self.h_in, self.kernel[0], self.stride[0], self.padding[0], self.h_out),
                one(self.w_in, self.kernel[1], self.stride[1], self.padding[1], self.w_out))

    def valid_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """How many output rows (cols) each kernel row (col) offset reaches inside the map.

        Offset ``k`` reaches output ``o`` when ``0 <= o * stride - pad + k < n_in``: an interval
        of ``o``, counted in closed form (O(kernel), not O(kernel x outputs))."""
        def count(k, stride, pad, n_in, n_out):
            off = np.arange(k, dtype=np.int64) - pad
            first = np.maximum(-(off // stride), 0)                 # ceil(-off / stride)
            last = np.minimum((n_in - 1 - off) // stride, n_out - 1)
            return np.maximum(last - first + 1, 0)
        return (count(self.kernel[0], self.stride[0], self.padding[0], self.h_in, self.h_out),
                count(self.kernel[1], self.stride[1], self.padding[1], self.w_in, self.w_out))


@dataclass
class CompiledProjection:
    """One projection, ready for its kernel. ``mode`` picks the kernel:
    "conv_rows" (weight-shared conv, kernel rows as contiguous runs), "conv"
    (weight-shared kernel CSR, tap by tap: for kernels with mostly empty
    taps), "csr" (explicit rows), "identity", "dense" (direct input)."""

    name: str
    kind: str
    mode: str
    source: int            # population index, or -1 for the input
    target: int            # population index, or -1 for the readout
    arrays: dict = field(default_factory=dict)
    scale: float = 1.0
    geometry: ConvGeometry | None = None
    dense_macs: int = 0     # multiply-accumulates if run densely (ANN) once
    direct_macs: int = 0    # MACs this projection costs per sample under direct encoding, all input positions
    # direct input only: the MACs one non-zero input value costs (non-zero synapses it reaches inside
    # the target), per input neuron in PyTorch order; the MACs of an event processor, which skips zeros
    input_reach: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


@dataclass
class CompiledPopulation:
    name: str
    shape: tuple[int, ...]
    channels: int
    positions: int
    model: str
    code: int
    params: np.ndarray      # [tau, v_threshold, k_alpha, k_beta, k_gamma]
    bias: np.ndarray        # (P * C,) sum of the folded biases of all incoming projections
    channel_major: bool = False   # emit events channel by channel (feeds a conv with large weights)

    @property
    def size(self) -> int:
        return self.channels * self.positions


@dataclass
class CompiledNetwork:
    network: Network
    dtype: np.dtype
    populations: list[CompiledPopulation]
    projections: list[CompiledProjection]
    incoming: list[list[int]]          # per population: indices of event-driven projections into it
    readout_incoming: list[int]
    direct: list[int]                  # projections evaluated once from the direct-encoded input
    readout_bias: np.ndarray
    n_outputs: int
    conv_mode: str
    # the same network flattened for the fused driver (evsim.program.Program), built by compile_network;
    # the projections' arrays above are views of its buffers, so the weights are held once
    program: Any = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the compiled connectivity (weights, CSR, biases)."""
        return int(sum(p.nbytes for p in self.projections) + sum(p.bias.nbytes for p in self.populations)
                   + self.readout_bias.nbytes)


# ---------------------------------------------------------------------- layout
def cl_permutation(shape: tuple[int, ...]) -> np.ndarray:
    """perm[cl] = PyTorch flat index of channels-last flat index cl."""
    if len(shape) == 1:
        return np.arange(shape[0])
    c, h, w = shape
    return np.arange(c * h * w).reshape(c, h * w).T.reshape(-1)


def to_channels_last(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, *shape) in PyTorch order -> (N, P * C) channels-last, contiguous."""
    n = x.shape[0]
    if len(shape) == 1:
        return np.ascontiguousarray(x.reshape(n, -1))
    c, h, w = shape
    return np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1).reshape(n, h * w * c))


def from_channels_last(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(..., P * C) channels-last -> (..., *shape) in PyTorch order."""
    lead = x.shape[:-1]
    if len(shape) == 1:
        return x.reshape(*lead, shape[0])
    c, h, w = shape
    return np.moveaxis(x.reshape(*lead, h * w, c), -1, -2).reshape(*lead, c, h, w)


# --------------------------------------------------------------- CSR builders
def linear_weight_cl(weight: np.ndarray, source_shape, target_shape) -> np.ndarray:
    """A linear weight (n_target, n_source) with both axes in channels-last order
    (``target_shape`` None: the readout, already flat)."""
    w = weight[:, cl_permutation(tuple(source_shape))]
    if target_shape is not None:
        w = w[cl_permutation(tuple(target_shape)), :]
    return w


def linear_csr(weight: np.ndarray, source_shape, target_shape, dtype) -> sp.csr_matrix:
    """Rows = presynaptic neurons, columns = targets, both channels-last; zeros dropped."""
    w = linear_weight_cl(weight, source_shape, target_shape)
    m = sp.csr_matrix(np.ascontiguousarray(w.T).astype(dtype))
    m.eliminate_zeros()
    m.sort_indices()
    return m


def conv_geometry(pr: Projection, source_shape, target_shape) -> ConvGeometry:
    c_out, c_in, kh, kw = pr.weight.shape
    ho, wo = conv_output_hw(source_shape[1], source_shape[2], (kh, kw), pr.stride, pr.padding)
    return ConvGeometry(c_in, source_shape[1], source_shape[2], c_out, ho, wo, (kh, kw), pr.stride, pr.padding)


def kernel_csr(weight: np.ndarray, dtype) -> dict:
    """Weight-shared kernel CSR: per input channel, its taps with any non-zero weight.

    Returns ``tap_ptr (C_in+1,)``, ``tap_y, tap_x, tap_nnz (n_taps,)`` and
    ``tap_w (n_taps, C_out)`` (contiguous rows: the inner loop of the scatter).
    """
    c_out, c_in, kh, kw = weight.shape
    per_tap = weight.transpose(1, 2, 3, 0).reshape(c_in, kh * kw, c_out)   # [ci, tap, co]
    nnz = (per_tap != 0).sum(-1)                                           # [ci, tap]
    keep = nnz > 0
    ci_idx, tap_idx = np.nonzero(keep)
    tap_ptr = np.zeros(c_in + 1, dtype=np.int32)
    np.cumsum(keep.sum(1), out=tap_ptr[1:])
    return dict(
        tap_ptr=tap_ptr,
        tap_y=(tap_idx // kw).astype(np.int32),
        tap_x=(tap_idx % kw).astype(np.int32),
        tap_w=np.ascontiguousarray(per_tap[ci_idx, tap_idx].astype(dtype)),
        tap_nnz=nnz[ci_idx, tap_idx].astype(np.int64),
    )


def row_kernel(weight: np.ndarray, geom: ConvGeometry, dtype) -> dict:
    """Weights of a conv as whole kernel rows, for :func:`evsim.kernels.conv_rows`.

    An input column ``x`` reaches, through one kernel row, the taps
    ``kx = r, r+s, r+2s, ...`` (stride ``s`` along x, ``r = (x + pad) mod s``),
    which land on adjacent output columns in *reverse* order. So each kernel
    row stores its taps grouped by ``r``, each group reversed: then one event's
    contribution through one kernel row is one contiguous run of weights and
    one contiguous run of the channels-last accumulator. Returns

    * ``row_w``: ``[ci, ky, tap in that order, co]`` flattened;
    * ``row_nnz_cum[ci, ky, t]``: non-zero weights of the first ``t`` taps
      (the synaptic operations of a clipped run), flattened;
    * ``col_plan[x] = (first tap, number of taps, first output column)``,
      borders and stride resolved (0 taps: the column reaches nothing);
    * ``has_zeros``: whether any weight is zero (then the kernel counts
      operations with ``row_nnz_cum``).
    """
    c_out, c_in, kh, kw = weight.shape
    s, pad = geom.stride[1], geom.padding[1]
    taps = np.arange(kw, dtype=np.int64)
    order = np.lexsort((-taps, taps % s))                  # by residue r = kx mod s, each group descending
    group_size = np.bincount(taps % s, minlength=min(s, kw))       # residues >= kw hold no tap
    group_start = np.concatenate(([0], np.cumsum(group_size)))
    w = weight.transpose(1, 2, 3, 0)[:, :, order, :]                 # [ci, ky, tap, co]
    cum = np.zeros((c_in, kh, kw + 1), dtype=np.int64)
    np.cumsum((w != 0).sum(-1), axis=2, out=cum[:, :, 1:])
    # Column x (padded: xp) reaches through the m taps of its residue r, stored as kx = r + s*(m-1-i),
    # output columns q-m+1+i (q = xp // s) for i = 0..m-1: keep the i that land in [0, w_out).
    xp = np.arange(geom.w_in, dtype=np.int64) + pad
    r, q = xp % s, xp // s
    has = r < len(group_size)
    m = np.where(has, group_size[np.minimum(r, len(group_size) - 1)], 0)
    first = np.maximum(m - 1 - q, 0)
    last = np.minimum(m - 1, geom.w_out - 1 - q + m - 1)
    n = np.maximum(last - first + 1, 0)
    start = np.where(has, group_start[np.minimum(r, len(group_size) - 1)], 0)
    plan = np.zeros((geom.w_in, 3), dtype=np.int64)
    inside = n > 0
    plan[inside, 0] = (start + first)[inside]
    plan[inside, 1] = n[inside]
    plan[inside, 2] = (q - m + 1 + first)[inside]
    return dict(row_w=np.ascontiguousarray(w.astype(dtype)).reshape(-1), row_nnz_cum=cum.reshape(-1),
                col_plan=plan, has_zeros=np.array(bool((weight == 0).any())))


def prefers_rows(weight: np.ndarray) -> bool:
    """Use the row kernel unless most taps are all zero (then skipping them tap by tap wins)."""
    empty = ~(weight != 0).any(axis=0)                  # [ci, ky, kx] taps with no weight
    return bool(empty.mean() < ROWS_OVER_TAPS_MAX_EMPTY)


def conv_explicit_nnz(weight: np.ndarray, geom: ConvGeometry) -> int:
    """Non-zeros of the per-neuron CSR of a conv, computed without building it."""
    cy, cx = geom.valid_counts()
    nnz_tap = (weight != 0).sum(axis=(0, 1))          # [ky, kx] over (co, ci)
    return int((nnz_tap * cy[:, None] * cx[None, :]).sum())


def conv_input_reach(weight: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Non-zero synapses an input neuron (ci, y, x) reaches inside the output map, int64 (C_in, H, W).

    Offset (ky, kx) joins input row y to output row o when ``o * stride - pad + ky = y`` with o inside
    the map; the count is a sum over offsets of the non-zero (co) weights, in O(kernel x map)."""
    def joins(k, stride, pad, n_in, n_out):
        i = np.arange(n_in)[None, :] + pad - np.arange(k)[:, None]          # [offset, input] -> o * stride
        return ((i >= 0) & (i % stride == 0) & (i // stride < n_out)).astype(np.int64)
    ry = joins(geom.kernel[0], geom.stride[0], geom.padding[0], geom.h_in, geom.h_out)
    rx = joins(geom.kernel[1], geom.stride[1], geom.padding[1], geom.w_in, geom.w_out)
    nz = (weight != 0).sum(axis=0).astype(np.int64)                          # [ci, ky, kx] over co
    return np.einsum("ckl,ky,lx->cyx", nz, ry, rx)


def conv_explicit_csr(weight: np.ndarray, geom: ConvGeometry, dtype,
                      limit_mb: float = DEFAULT_EXPLICIT_LIMIT_MB) -> sp.csr_matrix:
    """Per-neuron CSR of a conv: row = input neuron (channels-last), col = output neuron.

    Refuses (NetworkError) when the matrix would exceed ``limit_mb``.
    """
    nnz = conv_explicit_nnz(weight, geom)
    itemsize = np.dtype(dtype).itemsize
    n_rows = geom.c_in * geom.h_in * geom.w_in
    mb = (nnz * (itemsize + 4) + (n_rows + 1) * 8) / 2**20
    if mb > limit_mb:
        raise NetworkError(f"explicit CSR of this conv needs {mb:.0f} MB ({nnz} synapses), over the "
                           f"{limit_mb:.0f} MB limit; use the kernel CSR (conv_mode='kernel') or raise the limit")
    def reach(k, stride, pad, n_in, n_out):
        """(outputs, inputs) that kernel offset k joins: o * stride - pad + k = i, both inside."""
        first = max(-((k - pad) // stride), 0)
        last = min((n_in - 1 - k + pad) // stride, n_out - 1)
        o = np.arange(first, max(last + 1, first))
        return o, o * stride - pad + k

    rows, cols, vals = [], [], []
    for ky, kx in zip(*np.nonzero((weight != 0).any(axis=(0, 1)))):   # taps with a weight, nothing else
        oy, iy = reach(int(ky), geom.stride[0], geom.padding[0], geom.h_in, geom.h_out)
        ox, ix = reach(int(kx), geom.stride[1], geom.padding[1], geom.w_in, geom.w_out)
        if oy.size == 0 or ox.size == 0:
            continue
        p_in = (iy[:, None] * geom.w_in + ix[None, :]).ravel()
        q_out = (oy[:, None] * geom.w_out + ox[None, :]).ravel()
        w = weight[:, :, ky, kx]                       # [co, ci]
        co, ci = np.nonzero(w)
        rows.append((p_in[:, None] * geom.c_in + ci[None, :]).ravel())
        cols.append((q_out[:, None] * geom.c_out + co[None, :]).ravel())
        vals.append(np.broadcast_to(w[co, ci][None, :], (p_in.size, co.size)).ravel())
    n_cols = geom.c_out * geom.h_out * geom.w_out
    if rows:
        m = sp.coo_matrix((np.concatenate(vals).astype(dtype), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_rows, n_cols)).tocsr()
    else:
        m = sp.csr_matrix((n_rows, n_cols), dtype=dtype)
    m.sort_indices()
    return m


def _csr_arrays(m: sp.csr_matrix, dtype) -> dict:
    return dict(indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
                data=np.ascontiguousarray(m.data.astype(dtype)))


# ------------------------------------------------------------------ compile
def check_range(network: Network, dtype: str) -> None:
    """Refuse numbers the run dtype cannot hold, before they turn into inf in the engine.

    A constant or scale beyond the dtype's range is refused, and so is a projection whose
    largest possible contribution to one neuron in one step (largest |weight| times the
    fan-in, times the largest |input| of a direct input with an ``input_range``, plus the
    largest |bias|) is: 1e300 is finite in float64 but inf in float32. The readout sums
    T steps before its bias, so its weights count T times.
    """
    top = float(np.finfo(DTYPES[dtype]).max)
    for p in network.populations:
        for k, v in p.params.items():
            if abs(v) > top:
                raise NetworkError(f"population {p.name!r}: constant {k} = {v:g} is beyond the range of {dtype} "
                                   f"(+-{top:.3g})")
    lo, hi = network.input_range or (1.0, 1.0)
    for pr in network.projections:
        where = f"projection {pr.name!r}"
        if pr.kind == "identity":
            if abs(pr.scale) > top:
                raise NetworkError(f"{where}: scale {pr.scale:g} is beyond the range of {dtype} (+-{top:.3g})")
            continue
        fan_in = int(np.prod(pr.weight.shape[1:]))
        largest = float(np.abs(pr.weight).max()) if pr.weight.size else 0.0
        if pr.source == INPUT and network.encoding == "direct":
            largest *= max(abs(lo), abs(hi), 1.0)
        bias = float(np.abs(pr.bias).max()) if pr.bias is not None and pr.bias.size else 0.0
        bound = largest * fan_in * (network.timesteps if pr.target == READOUT else 1) + bias
        if bound > top:
            raise NetworkError(f"{where}: weights up to {largest:g} over a fan-in of {fan_in}"
                               + (f" and biases up to {bias:g}" if bias else "")
                               + f" can reach {bound:.3g}, beyond the range of {dtype} (+-{top:.3g}); "
                                 f"compile for float64 or rescale the weights")


def compile_network(network: Network, dtype="float64", conv_mode: str = "kernel",
                    explicit_limit_mb: float = DEFAULT_EXPLICIT_LIMIT_MB,
                    limits: Limits | None = None) -> CompiledNetwork:
    """Lower a validated network for the engine, in ``dtype`` ("float32" or "float64").

    Numbers the dtype cannot hold are refused (:func:`check_range`), and so is any array this
    builds from the geometry alone that would exceed the memory budget (``limits``, by default
    :meth:`evsim.limits.Limits.from_env`).
    """
    if dtype not in DTYPES:
        raise NetworkError(f"unknown dtype {dtype!r} (use float32 or float64)")
    if conv_mode not in CONV_MODES:
        raise NetworkError(f"unknown conv mode {conv_mode!r} (known: {', '.join(CONV_MODES)})")
    dt = DTYPES[dtype]
    limits = limits or Limits.from_env()
    network.validate()
    check_range(network, dtype)
    order = network.topological_order()
    pops = {p.name: p for p in network.populations}
    index = {name: i for i, name in enumerate(order)}
    cpops = []
    for name in order:
        p: Population = pops[name]
        c, npos = p.channels_positions
        cpops.append(CompiledPopulation(name, p.shape, c, npos, p.model, p.neuron.code,
                                        np.asarray(p.neuron.vector(p.params), dtype=dt),
                                        np.zeros(c * npos, dtype=dt)))
    n_out = network.n_classes
    readout_bias = np.zeros(n_out, dtype=np.float64)
    cprojs: list[CompiledProjection] = []
    incoming: list[list[int]] = [[] for _ in order]
    readout_incoming: list[int] = []
    direct: list[int] = []
    shapes = {INPUT: network.input_shape, **{p.name: p.shape for p in network.populations}}
    for pr in network.projections:
        src_shape = shapes[pr.source]
        tgt_shape = None if pr.target == READOUT else shapes[pr.target]
        src = -1 if pr.source == INPUT else index[pr.source]
        tgt = -1 if pr.target == READOUT else index[pr.target]
        cp = CompiledProjection(pr.name, pr.kind, "", src, tgt, scale=pr.scale)
        if pr.kind == "identity":
            cp.mode = "identity"
            cp.dense_macs = 0
        elif pr.kind == "linear":
            cp.dense_macs = int(pr.weight.size)
            if pr.source == INPUT and network.encoding == "direct":
                cp.mode = "dense"
                w = linear_weight_cl(pr.weight, src_shape, tgt_shape)
                cp.arrays["weight_t"] = np.ascontiguousarray(w.T.astype(dt))   # (n_src_cl, n_tgt_cl)
                cp.direct_macs = int(np.count_nonzero(pr.weight))
                cp.input_reach = np.count_nonzero(pr.weight, axis=0).astype(np.int64)
            else:
                cp.mode = "csr"
                cp.arrays.update(_csr_arrays(linear_csr(pr.weight, src_shape, tgt_shape, dt), dt))
        else:  # conv2d
            geom = conv_geometry(pr, src_shape, tgt_shape)
            cp.geometry = geom
            limits.check_bytes(f"compiling projection {pr.name!r}: its offset maps "
                               f"({geom.h_in}x{geom.kernel[0]} + {geom.w_in}x{geom.kernel[1]} int32)",
                               4 * (geom.h_in * geom.kernel[0] + geom.w_in * geom.kernel[1]))
            cy, cx = geom.valid_counts()
            cp.dense_macs = int((cy[:, None] * cx[None, :]).sum() * geom.c_in * geom.c_out)
            if pr.source == INPUT and network.encoding == "direct":
                cp.mode = "dense"
                # dense weight for kernels.direct_conv: rows ordered (ky, kx, ci)
                cp.arrays["weight_t"] = np.ascontiguousarray(
                    pr.weight.transpose(2, 3, 1, 0).reshape(-1, geom.c_out).astype(dt))
                cp.direct_macs = conv_explicit_nnz(pr.weight, geom)
                cp.input_reach = conv_input_reach(pr.weight, geom).reshape(-1)
            elif conv_mode == "explicit":
                cp.mode = "csr"
                cp.arrays.update(_csr_arrays(conv_explicit_csr(pr.weight, geom, dt, explicit_limit_mb), dt))
            elif prefers_rows(pr.weight):
                cp.mode = "conv_rows"
                cp.arrays.update(row_kernel(pr.weight, geom, dt))
                cp.arrays["row_map"] = geom.offset_maps()[0]
            else:
                cp.mode = "conv"
                cp.arrays.update(kernel_csr(pr.weight, dt))
                cp.arrays["row_map"], cp.arrays["col_map"] = geom.offset_maps()
        if pr.bias is not None:
            if tgt < 0:
                readout_bias += pr.bias
            else:
                if pr.kind == "linear":      # one bias per target neuron, PyTorch order
                    b = pr.bias[cl_permutation(tgt_shape)]
                else:                        # one bias per output channel, at every position
                    b = np.tile(pr.bias, cpops[tgt].positions)
                cpops[tgt].bias += b.astype(dt)
        i = len(cprojs)
        cprojs.append(cp)
        if cp.mode == "dense":
            direct.append(i)
        elif tgt < 0:
            readout_incoming.append(i)
        else:
            incoming[tgt].append(i)
    for cp in cprojs:
        if cp.source >= 0 and cp.mode in ("conv", "conv_rows"):
            w = cp.arrays.get("row_w", cp.arrays.get("tap_w"))
            if w.nbytes > CHANNEL_MAJOR_WEIGHT_BYTES:
                cpops[cp.source].channel_major = True
    net = CompiledNetwork(network, np.dtype(dt), cpops, cprojs, incoming, readout_incoming, direct,
                          readout_bias.astype(dt), n_out, conv_mode)
    from .program import build_program      # program.py builds on this module's types
    build_program(net)
    return net

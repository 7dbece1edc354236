"""Lower a :class:`~evsim.graph.Network` to the arrays the engine runs on.

Each graph projection becomes one projection *kind* of :mod:`evsim.projections`
(:func:`choose_kind`), whose module builds its arrays:

* ``conv_rows``: a weight-shared conv as whole kernel rows, each a contiguous
  run (any stride); the default for conv2d;
* ``conv_taps``: a weight-shared conv tap by tap, non-zero taps only, for
  kernels whose taps are mostly empty;
* ``csr``: explicit synapses per presynaptic neuron, zeros dropped: linear
  projections, and convs with ``conv_mode="explicit"`` (memory-guarded);
* ``identity``: a scale;
* ``dense``: a projection from a direct-encoded input, evaluated once per
  sample (its multiply-accumulates are counted once).

A pooled conv (format v3, :mod:`evsim.pooling`) becomes its composite conv as ``conv_rows``
(every source neuron's count of synaptic operations taken from the exact pooled conv), plus, where
the composite is not exact at the edges, a second compiled projection ``<name>/edge``: a ``csr``
over those source neurons only, whose operations are not counted (``part_of``); with
``conv_mode="explicit"`` it is one ``csr`` of the exact map.

Here: the geometry, biases, the populations' constants, the order, and the
checks that the run dtype holds every number. All index arithmetic is in the
engine's channels-last order (:mod:`evsim.layout`). Shapes and dtypes are
fixed here, once, never checked in the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import NetworkError
from .fixedpoint import INT16_BITS, leak, membrane_range, readout_weight_dtype, synaptic_input_bits
from .graph import INPUT, READOUT, Network, Population, Projection, conv_output_hw
from .layout import cl_permutation
from .limits import Limits
from .pooling import composite_geometry, composite_weight, correction_bound, edge_columns
from .projections import KINDS, conv_rows, conv_taps, csr, dense, identity
from .projections.csr import DEFAULT_EXPLICIT_LIMIT_MB, conv_explicit_csr
from .projections.dense import conv_input_reach
from .tuning import CHANNEL_MAJOR_WEIGHT_BYTES

DTYPES = {"float32": np.float32, "float64": np.float64, "int16": np.int16, "int32": np.int32}
INT_DTYPES = ("int16", "int32")     # fixed-point networks only (evsim.fixedpoint)
CONV_MODES = ("kernel", "explicit")


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
    """One projection, ready for its kernel. ``kind`` is the graph's (linear, conv2d, identity);
    ``mode`` the projection kind of :mod:`evsim.projections` it was lowered to (conv_rows,
    conv_taps, csr, identity, dense), whose module reads ``arrays``."""

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
    rescale: tuple[int, int] | None = None   # fixed point, direct input: current = (acc * mult) >> shift
    # the edge correction of a pooled conv: the graph projection it belongs to. It runs as its own
    # projection but is not one of the graph's: its events and operations are not counted or reported
    part_of: str | None = None

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
    # fixed point: (shift, membrane min, membrane max, leak mult, leak shift: fixedpoint.leak); floats: unused
    fixed: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

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
    # the type the event-driven projections' weights are held and a step's synaptic input is summed in: the
    # run's (the default), or int16 in an int32 run whose synaptic input fits 16 bits (kept apart from the
    # membranes)
    synaptic_dtype: Any = None

    def __post_init__(self):
        self.synaptic_dtype = np.dtype(self.dtype if self.synaptic_dtype is None else self.synaptic_dtype)

    @property
    def reported_projections(self) -> list[CompiledProjection]:
        """The compiled projections that stand for the graph's projections, one each, in the graph's order:
        what the counters and reports list (a pooled conv's edge correction is part of its projection)."""
        return [cp for cp in self.projections if cp.part_of is None]

    @property
    def nbytes(self) -> int:
        """Bytes held by the compiled connectivity (weights, CSR, biases)."""
        return int(sum(p.nbytes for p in self.projections) + sum(p.bias.nbytes for p in self.populations)
                   + self.readout_bias.nbytes)


# ---------------------------------------------------------------------- layout






# --------------------------------------------------------------- CSR builders




def conv_geometry(pr: Projection, source_shape, target_shape) -> ConvGeometry:
    c_out, c_in, kh, kw = pr.weight.shape
    ho, wo = conv_output_hw(source_shape[1], source_shape[2], (kh, kw), pr.stride, pr.padding)
    return ConvGeometry(c_in, source_shape[1], source_shape[2], c_out, ho, wo, (kh, kw), pr.stride, pr.padding)
















# ------------------------------------------------------------------ compile
def choose_kind(pr: Projection, encoding: str, conv_mode: str) -> str:
    """The projection kind (:mod:`evsim.projections`) a graph projection is lowered to."""
    if pr.kind == "identity":
        return identity.NAME
    if pr.source == INPUT and encoding == "direct":
        return dense.NAME
    if pr.kind == "linear" or conv_mode == "explicit":
        return csr.NAME
    if pr.pool is not None:        # its counts come from the exact map, which conv_rows takes per neuron
        return conv_rows.NAME
    return conv_rows.NAME if conv_rows.prefers_rows(pr.weight) else conv_taps.NAME


def lower_pooled(pr: Projection, src_shape, tgt_shape, dt, conv_mode: str, explicit_limit_mb: float,
                 limits: Limits):
    """A pooled conv, lowered exactly (:mod:`evsim.pooling`): ``(geometry of the composite conv, its arrays,
    the edge correction's CSR arrays or None, dense MACs)``.

    ``conv_rows`` runs the composite conv; its per-neuron operation counts (``reach``) are those of the
    exact map M: the composite's for every source neuron whose column it gets right, M's non-zeros
    for the others. Their column difference ``M - composite`` is the correction, a CSR over those
    source neurons only. ``explicit``: one CSR holding M itself (the composite's rows, the others
    replaced by M's)."""
    where = f"compiling pooled conv {pr.name!r}"
    c_out, c_in, kh, kw = pr.weight.shape
    kernel, stride, padding, (ho, wo) = composite_geometry(pr.pool, pr.weight.shape, src_shape, pr.stride, pr.padding)
    limits.check_bytes(f"{where}: its composite {kernel[0]}x{kernel[1]} kernel ({c_out}x{c_in} channels)",
                       8 * c_out * c_in * kernel[0] * kernel[1] * 2)
    n_pos, n_syn = correction_bound(pr.pool, pr.weight.shape, src_shape, pr.stride, pr.padding)
    limits.check_bytes(f"{where}: the exact columns of its {n_pos} edge positions (up to {n_syn} synapses)",
                       40 * n_syn)
    geom = ConvGeometry(c_in, src_shape[1], src_shape[2], c_out, ho, wo, kernel, stride, padding)
    limits.check_bytes(f"{where}: its offset maps ({geom.h_in}x{kernel[0]} + {geom.w_in}x{kernel[1]} int32)",
                       4 * (geom.h_in * kernel[0] + geom.w_in * kernel[1]))
    hp, wp = pr.pool.output_hw(src_shape[1], src_shape[2])
    cy, cx = ConvGeometry(c_in, hp, wp, c_out, ho, wo, (kh, kw), pr.stride, pr.padding).valid_counts()
    dense_macs = int((cy[:, None] * cx[None, :]).sum() * c_in * c_out)     # the conv on the pooled map
    k = composite_weight(pr.weight, pr.pool)
    rows, cols, m_vals, d_vals = edge_columns(pr.weight, pr.pool, src_shape, pr.stride, pr.padding)
    n_src, n_tgt = c_in * geom.h_in * geom.w_in, c_out * ho * wo
    edge_rows = np.unique(rows)
    if conv_mode == "explicit":
        m = conv_explicit_csr(k, geom, np.float64, explicit_limit_mb).tocoo()
        keep = ~np.isin(m.row, edge_rows)
        nz = m_vals != 0
        exact = sp.coo_matrix((np.concatenate([m.data[keep], m_vals[nz]]),
                               (np.concatenate([m.row[keep], rows[nz]]), np.concatenate([m.col[keep], cols[nz]]))),
                              shape=(n_src, n_tgt)).tocsr()
        exact.sort_indices()
        return geom, csr.csr_arrays(exact, dt), None, dense_macs
    arrays = conv_rows.lower_weights(k, geom, dt)
    arrays["row_map"] = geom.offset_maps()[0]
    reach = conv_input_reach(k, geom).transpose(1, 2, 0).reshape(-1).astype(np.int64)
    if rows.size:
        reach[edge_rows] = 0
        np.add.at(reach, rows, (m_vals != 0).astype(np.int64))
    arrays["reach"] = np.ascontiguousarray(reach)
    arrays["has_zeros"] = np.array(True)          # count from reach: the exact map's synapses
    corr = None
    nz = d_vals != 0
    if nz.any():
        mat = sp.csr_matrix((d_vals[nz], (rows[nz], cols[nz])), shape=(n_src, n_tgt))
        mat.sort_indices()
        corr = csr.csr_arrays(mat, dt)
    return geom, arrays, corr, dense_macs


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


def engine_dtype(network: Network, requested: str, explicit: bool = True) -> str:
    """The arithmetic a run of ``network`` uses when ``requested`` is asked for: a fixed-point network runs
    in integers, so a float type that was not asked for explicitly (a default) means int32 there; a float
    asked for explicitly with a fixed-point network, or an integer type with a real-valued one, is refused
    in one line."""
    fixed = network.fixed_point is not None
    if fixed and requested not in INT_DTYPES:
        if not explicit:
            return "int32"
        raise NetworkError(f"dtype {requested}: this is a fixed-point network (evsim quantize), which runs in "
                           f"integer arithmetic: use int32 or int16")
    if not fixed and requested in INT_DTYPES:
        raise NetworkError(f"dtype {requested} runs fixed-point networks only; this one is real-valued (make a "
                           f"fixed-point one with evsim quantize)")
    return requested


def direct_dtype(network: Network, pr: Projection, dt):
    """The type a direct-input projection accumulates in: the run's for a real network; for a fixed-point
    one int32 when the largest sum of |input level x weight level| fits it (8-bit inputs and weights
    always do: twice the speed of int64 on the same vector width), int64 otherwise. Exact either way."""
    if network.fixed_point is None:
        return dt
    from .fixedpoint import direct_level_bound
    return np.int32 if direct_level_bound(network, pr) < 2 ** 31 else np.int64


def compile_network(network: Network, dtype="float64", conv_mode: str = "kernel",
                    explicit_limit_mb: float = DEFAULT_EXPLICIT_LIMIT_MB,
                    limits: Limits | None = None, narrow_synaptic: bool = True) -> CompiledNetwork:
    """Lower a validated network for the engine, in ``dtype`` ("float32" or "float64"; "int32" or
    "int16" for a fixed-point network).

    Numbers the dtype cannot hold are refused (:func:`check_range`), and so is any array this
    builds from the geometry alone that would exceed the memory budget (``limits``, by default
    :meth:`evsim.limits.Limits.from_env`).

    An int32 run of a fixed-point network whose synaptic input of one step fits 16 bits
    (:func:`evsim.fixedpoint.synaptic_input_bits`) holds its event-driven weights in int16 and sums
    each step's synaptic input apart from the membranes, in int16, adding it to them when the
    population fires: the same integers, with the vector runs at 32 lanes instead of 16.
    ``narrow_synaptic=False`` keeps everything in int32 (the plain int32 engine, for comparison).
    """
    if dtype not in DTYPES:
        raise NetworkError(f"unknown dtype {dtype!r} (use float32 or float64; int32 or int16 for a fixed-point network)")
    fx = network.fixed_point
    engine_dtype(network, dtype)           # a float with a fixed-point network, or an int with a real one: one line
    if fx is not None and dtype == "int16" and fx.accumulator_bits > INT16_BITS:
        raise NetworkError(f"this fixed-point network's accumulators can need {fx.accumulator_bits} bits: "
                           f"int16 cannot hold them, use int32")
    if conv_mode not in CONV_MODES:
        raise NetworkError(f"unknown conv mode {conv_mode!r} (known: {', '.join(CONV_MODES)})")
    dt = DTYPES[dtype]
    limits = limits or Limits.from_env()
    network.validate()
    sdt = dt                               # the type the event-driven weights and a step's input take
    if fx is not None and dt == np.int32 and narrow_synaptic and synaptic_input_bits(network) <= INT16_BITS:
        sdt = np.int16
    if fx is None:
        check_range(network, dtype)          # a fixed-point network's range is checked by its accumulator_bits
    order = network.topological_order()
    pops = {p.name: p for p in network.populations}
    index = {name: i for i, name in enumerate(order)}
    cpops = []
    for name in order:
        p: Population = pops[name]
        c, npos = p.channels_positions
        cpops.append(CompiledPopulation(name, p.shape, c, npos, p.model, p.neuron.code,
                                        np.asarray(p.neuron.vector(p.params), dtype=np.int64 if fx else dt),
                                        np.zeros(c * npos, dtype=dt)))
        if fx is not None:
            cpops[-1].fixed = (fx.frac_bits, *membrane_range(fx.membrane_bits),
                               *leak(p.params["tau"], fx.frac_bits))
    n_out = network.n_classes
    readout_bias = np.zeros(n_out, dtype=np.int64 if fx else np.float64)
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
        geom = None
        correction = None
        if pr.kind == "conv2d" and pr.pool is None:
            geom = conv_geometry(pr, src_shape, tgt_shape)
            cp.geometry = geom
            limits.check_bytes(f"compiling projection {pr.name!r}: its offset maps "
                               f"({geom.h_in}x{geom.kernel[0]} + {geom.w_in}x{geom.kernel[1]} int32)",
                               4 * (geom.h_in * geom.kernel[0] + geom.w_in * geom.kernel[1]))
            cy, cx = geom.valid_counts()
            cp.dense_macs = int((cy[:, None] * cx[None, :]).sum() * geom.c_in * geom.c_out)
        elif pr.kind == "linear":
            cp.dense_macs = int(pr.weight.size)
        cp.mode = choose_kind(pr, network.encoding, conv_mode)
        if pr.pool is not None:
            cp.geometry, cp.arrays, correction, cp.dense_macs = lower_pooled(
                pr, src_shape, tgt_shape, sdt, conv_mode, explicit_limit_mb, limits)
        elif cp.mode == dense.NAME:
            cp.arrays, cp.direct_macs, cp.input_reach = dense.lower(pr, geom, direct_dtype(network, pr, dt),
                                                                    src_shape, tgt_shape)
            if fx is not None:
                cp.rescale = fx.rescale[pr.name]
        elif cp.mode == csr.NAME:
            wdt = readout_weight_dtype(network, dt) if tgt < 0 else sdt    # an int16 run's readout: int32
            cp.arrays = csr.lower(pr, geom, wdt, src_shape, tgt_shape, explicit_limit_mb)
        else:
            cp.arrays = KINDS[cp.mode].lower(pr, geom, sdt)
        if pr.bias is not None:
            if tgt < 0:
                readout_bias += pr.bias.astype(readout_bias.dtype)
            else:
                if pr.kind == "linear":      # one bias per target neuron, PyTorch order
                    b = pr.bias[cl_permutation(tgt_shape)]
                else:                        # one bias per output channel, at every position
                    b = np.tile(pr.bias, cpops[tgt].positions)
                cpops[tgt].bias += b.astype(dt)
        i = len(cprojs)
        cprojs.append(cp)
        if cp.mode == dense.NAME:
            direct.append(i)
        elif tgt < 0:
            readout_incoming.append(i)
        else:
            incoming[tgt].append(i)
        if correction is not None:       # runs after the composite, into the same target; not counted
            incoming[tgt].append(len(cprojs))
            cprojs.append(CompiledProjection(f"{pr.name}/edge", pr.kind, csr.NAME, src, tgt, arrays=correction,
                                             part_of=pr.name))
    for cp in cprojs:
        if cp.source >= 0 and cp.mode in (conv_taps.NAME, conv_rows.NAME):
            w = cp.arrays.get("row_w", cp.arrays.get("tap_w"))
            if w.nbytes > CHANNEL_MAJOR_WEIGHT_BYTES:
                cpops[cp.source].channel_major = True
    net = CompiledNetwork(network, np.dtype(dt), cpops, cprojs, incoming, readout_incoming, direct,
                          readout_bias if fx else readout_bias.astype(dt), n_out, conv_mode,
                          synaptic_dtype=np.dtype(sdt))
    from .program import build_program      # program.py builds on this module's types
    build_program(net)
    return net

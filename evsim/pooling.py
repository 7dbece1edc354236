"""Average pooling in front of a conv: the pooled conv of format v3, and its exact lowering.

A ``conv2d`` projection may carry an :class:`AvgPool`: its source is first average-pooled as
PyTorch's ``AvgPool2d`` pools (zero padding; ``ceil_mode``; the divisor of ``count_include_pad``;
no ``divisor_override``), then the conv applies to the pooled map (docs/FORMAT.md, "Pooled
conv"). Pooling is linear, so pool-then-conv is one linear map ``M`` from the source neurons to
the target neurons. This module states that map and lowers it for the engine without changing
any kernel:

* the **composite conv**: the pool's window tiled by the conv's taps, one shift-invariant conv of
  kernel ``(kc - 1) * sp + kp``, stride ``sc * sp`` and padding ``pc * sp + pp`` (per axis: c the
  conv, p the pool) whose weights are ``weight / (kpy * kpx)`` summed over the (conv tap, pool
  tap) pairs that meet. It equals ``M`` wherever every pooled cell involved lies inside the
  pooled map and averages a full window;
* the **edge correction**: for the source neurons where that fails (a pooled cell outside the
  pooled map that the conv's zero padding hides but the composite would compute from real source
  rows, e.g. row ``Hp`` of a 3x3/2 pool with padding 1 on an even map; or a window whose divisor
  is smaller: ``count_include_pad=False`` or ``ceil_mode``), ``M`` minus the composite, column by
  column, as explicit synapses (:func:`edge_correction`).

Both are computed in float64 in one fixed order, so the correction is exactly zero wherever the
composite is right, and no synapse is kept there. The count of synaptic operations of a pooled
conv is that of ``M`` (:func:`exact_reach`; docs/COUNTING.md), not of the composite plus the
correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NetworkError

POOL_ATTRIBUTES = ("pool_kernel", "pool_stride", "pool_padding", "pool_ceil_mode", "pool_count_include_pad")


def pooled_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's AvgPool2d output size along one axis (its ``pooling_output_shape``, dilation 1)."""
    out = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:       # the last window would start in the right padding
        out -= 1
    return out


@dataclass(frozen=True)
class AvgPool:
    """AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad), each pair (y, x)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        for name in ("kernel", "stride", "padding"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "ceil_mode", bool(self.ceil_mode))
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))

    def problem(self, h: int, w: int) -> str | None:
        """Why this pool cannot apply to an ``h`` x ``w`` map (None when it can): PyTorch's own rules."""
        if len(self.kernel) != 2 or len(self.stride) != 2 or len(self.padding) != 2:
            return (f"pool kernel, stride and padding must be (y, x) pairs, got {self.kernel}, {self.stride}, "
                    f"{self.padding}")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            return f"pool kernel {self.kernel} and stride {self.stride} must be >= 1, padding {self.padding} >= 0"
        if self.padding[0] > self.kernel[0] // 2 or self.padding[1] > self.kernel[1] // 2:
            return f"pool padding {self.padding} is more than half the pool kernel {self.kernel}"
        if self.kernel[0] > h + 2 * self.padding[0] or self.kernel[1] > w + 2 * self.padding[1]:
            return f"pool kernel {self.kernel} is larger than the padded source {h + 2 * self.padding[0]}x" \
                   f"{w + 2 * self.padding[1]}"
        if self.stride[0] > h + 2 * self.padding[0] or self.stride[1] > w + 2 * self.padding[1]:
            return f"pool stride {self.stride} is longer than the padded source"
        return None

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return (pooled_size(h, self.kernel[0], self.stride[0], self.padding[0], self.ceil_mode),
                pooled_size(w, self.kernel[1], self.stride[1], self.padding[1], self.ceil_mode))

    def describe(self) -> str:
        k, s, p = self.kernel, self.stride, self.padding
        text = f"avgpool k={k[0]}x{k[1]} s={s[0]},{s[1]} p={p[0]},{p[1]}"
        if self.ceil_mode:
            text += " ceil"
        if not self.count_include_pad:
            text += " excl-pad"
        return text

    def to_dict(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
                "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad}


def windows(n: int, k: int, s: int, p: int, ceil_mode: bool, include_pad: bool):
    """Per pooled index q along one axis: the first and one-past-last source index its window averages
    (clipped to the map) and its divisor factor, as PyTorch's CPU kernel computes them: the window
    ``[q*s - p, q*s - p + k)`` clipped to the padded map ``n + p`` gives the factor when padding
    counts; clipped to the map itself, otherwise. int64 arrays of the pooled size."""
    q = np.arange(pooled_size(n, k, s, p, ceil_mode), dtype=np.int64)
    start = q * s - p
    end = np.minimum(start + k, n + p)
    span = end - start
    lo, hi = np.maximum(start, 0), np.minimum(end, n)
    return lo, hi, (span if include_pad else hi - lo)


@dataclass
class Axis:
    """One axis of a pooled conv: source n, pool (k, s, p), pooled map np, conv (kc, sc, pc), output no."""

    n: int
    k: int
    s: int
    p: int
    n_pooled: int
    kc: int
    sc: int
    pc: int
    n_out: int
    factor: np.ndarray          # divisor factor per pooled index (windows' third array)

    @property
    def kernel(self) -> int:         # the composite's
        return (self.kc - 1) * self.s + self.k

    @property
    def stride(self) -> int:
        return self.sc * self.s

    @property
    def padding(self) -> int:
        return self.pc * self.s + self.p

    def links(self, y: int) -> list[tuple[int, int, int]]:
        """(output o, conv tap kc, pooled index q) that join source index ``y`` to an output inside the map
        through the composite: ``q = o*sc - pc + kc`` and ``y`` in q's unclipped window ``[q*s - p, q*s - p + k)``,
        any q (inside the pooled map or not), sorted by o then kc."""
        out = []
        q_lo = -((self.k - 1 - y - self.p) // self.s)       # ceil((y + p - k + 1) / s)
        q_hi = (y + self.p) // self.s
        for q in range(q_lo, q_hi + 1):
            for kc in range(self.kc):
                num = q + self.pc - kc
                if num % self.sc == 0 and 0 <= num // self.sc < self.n_out:
                    out.append((num // self.sc, kc, q))
        out.sort()
        return out

    def irregular(self) -> np.ndarray:
        """Source indices (sorted) some of whose links go through a pooled cell the composite gets wrong:
        outside the pooled map, or averaging fewer than k cells (its divisor factor is not k)."""
        kc = np.arange(self.kc, dtype=np.int64)
        o = np.arange(self.n_out, dtype=np.int64)
        q = np.unique((o[:, None] * self.sc - self.pc + kc[None, :]).ravel())
        inside = (q >= 0) & (q < self.n_pooled)
        qi = q[inside]
        bad = np.concatenate([q[~inside], qi[self.factor[qi] != self.k]])
        first = bad * self.s - self.p                # each bad cell's window, clipped to the map: a union of
        lo, hi = np.clip(first, 0, self.n), np.clip(first + self.k, 0, self.n)      # intervals, O(n + cells)
        mark = np.zeros(self.n + 1, dtype=np.int64)
        np.add.at(mark, lo, 1)
        np.add.at(mark, hi, -1)
        return np.flatnonzero(np.cumsum(mark[:-1]) > 0).astype(np.int64)


def axes(pool: AvgPool, weight_shape, src_shape, stride, padding) -> tuple[Axis, Axis]:
    """The two axes (y, x) of a pooled conv of ``weight_shape`` (C_out, C_in, kH, kW) on ``src_shape``."""
    _, h, w = src_shape
    hp, wp = pool.output_hw(h, w)
    res = []
    for a, (n, n_p) in enumerate(((h, hp), (w, wp))):
        kc = weight_shape[2 + a]
        n_out = (n_p + 2 * padding[a] - kc) // stride[a] + 1
        factor = windows(n, pool.kernel[a], pool.stride[a], pool.padding[a], pool.ceil_mode,
                         pool.count_include_pad)[2]
        res.append(Axis(n, pool.kernel[a], pool.stride[a], pool.padding[a], n_p, kc, stride[a], padding[a], n_out,
                        factor))
    return res[0], res[1]


def output_shape(pool: AvgPool, weight_shape, src_shape, stride, padding) -> tuple[int, int, int]:
    ay, ax = axes(pool, weight_shape, src_shape, stride, padding)
    return (weight_shape[0], ay.n_out, ax.n_out)


def composite_weight(weight: np.ndarray, pool: AvgPool) -> np.ndarray:
    """The composite conv's kernel (C_out, C_in, (kcy-1)*spy + kpy, (kcx-1)*spx + kpx): ``weight / (kpy*kpx)``
    added over every (conv tap, pool tap) pair, conv taps in row-major order (the order
    :func:`_columns` sums in, so the two agree bit for bit where they should)."""
    c_out, c_in, kh, kw = weight.shape
    (py, px), (sy, sx) = pool.kernel, pool.stride
    d0 = py * px
    out = np.zeros((c_out, c_in, (kh - 1) * sy + py, (kw - 1) * sx + px))
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, ky * sy:ky * sy + py, kx * sx:kx * sx + px] += (weight[:, :, ky, kx] / d0)[:, :, None, None]
    return out


def composite_geometry(pool: AvgPool, weight_shape, src_shape, stride, padding):
    """(kernel, stride, padding, (H_out, W_out)) of the composite conv; the output is the pooled conv's."""
    ay, ax = axes(pool, weight_shape, src_shape, stride, padding)
    return ((ay.kernel, ax.kernel), (ay.stride, ax.stride), (ay.padding, ax.padding), (ay.n_out, ax.n_out))


def _columns(weight: np.ndarray, pool: AvgPool, ay: Axis, ax: Axis, y: int, x: int):
    """The columns of source position (y, x) (all input channels): {(oy, ox): (M block, composite block)},
    each block (C_out, C_in), ``M`` the exact pooled conv, the composite as :func:`composite_weight` has it."""
    d0 = pool.kernel[0] * pool.kernel[1]
    blocks: dict = {}
    ly, lx = ay.links(y), ax.links(x)
    for oy, ky, qy in ly:                     # sorted by (o, kc): each block sums its taps in row-major order
        vy = 0 <= qy < ay.n_pooled
        for ox, kx, qx in lx:
            key = (oy, ox)
            if key not in blocks:
                z = np.zeros(weight.shape[:2])
                blocks[key] = [z, z.copy()]
            m, c = blocks[key]
            w = weight[:, :, ky, kx]
            c += w / d0
            if vy and 0 <= qx < ax.n_pooled:
                m += w / (int(ay.factor[qy]) * int(ax.factor[qx]))
    return blocks


def irregular_positions(ay: Axis, ax: Axis) -> np.ndarray:
    """(y, x) source positions whose columns of the composite may differ from ``M``, (n, 2) int64 row-major."""
    ry, rx = ay.irregular(), ax.irregular()
    mask = np.zeros((ay.n, ax.n), dtype=bool)
    mask[ry, :] = True
    mask[:, rx] = True
    return np.argwhere(mask).astype(np.int64)


def correction_bound(pool: AvgPool, weight_shape, src_shape, stride, padding) -> tuple[int, int]:
    """(irregular source positions, an upper bound on the synapses of their exact columns), from the geometry."""
    ay, ax = axes(pool, weight_shape, src_shape, stride, padding)
    ny, nx = len(ay.irregular()), len(ax.irregular())
    n = ny * ax.n + nx * ay.n - ny * nx              # rows and columns, their crossings once
    reach = -(-ay.kernel // ay.stride) * -(-ax.kernel // ax.stride)
    return n, n * reach * weight_shape[0] * weight_shape[1]


def edge_columns(weight: np.ndarray, pool: AvgPool, src_shape, stride, padding):
    """For every irregular source neuron: its exact column of ``M`` and the composite's difference to it.

    Returns ``(rows, cols, m_vals, d_vals)``: channels-last source neuron ``(y*W + x)*C_in + ci``,
    channels-last target neuron ``(oy*Wo + ox)*C_out + co``, ``M``'s value and ``M - composite``, one
    entry per (source, target) pair reached through at least one link (zeros included)."""
    ay, ax = axes(pool, weight.shape, src_shape, stride, padding)
    c_out, c_in = weight.shape[:2]
    rows, cols, mv, dv = [], [], [], []
    ci = np.arange(c_in)
    co = np.arange(c_out)
    for y, x in irregular_positions(ay, ax).tolist():
        src = (y * ax.n + x) * c_in + ci                                   # (C_in,)
        for (oy, ox), (m, c) in _columns(weight, pool, ay, ax, y, x).items():
            tgt = (oy * ax.n_out + ox) * c_out + co                        # (C_out,)
            rows.append(np.broadcast_to(src[None, :], (c_out, c_in)).ravel())
            cols.append(np.broadcast_to(tgt[:, None], (c_out, c_in)).ravel())
            mv.append(m.ravel())
            dv.append((m - c).ravel())
    if not rows:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0), np.zeros(0)
    return (np.concatenate(rows), np.concatenate(cols), np.concatenate(mv), np.concatenate(dv))


def check_pooled(where: str, pool: AvgPool, src_shape) -> tuple[int, int]:
    """The pooled map (Hp, Wp) of ``src_shape``; a NetworkError naming ``where`` if the pool cannot apply."""
    problem = pool.problem(src_shape[1], src_shape[2])
    if problem:
        raise NetworkError(f"{where}: {problem}")
    hp, wp = pool.output_hw(src_shape[1], src_shape[2])
    if hp < 1 or wp < 1:
        raise NetworkError(f"{where}: the pool leaves no output of the {src_shape[1]}x{src_shape[2]} source")
    return hp, wp

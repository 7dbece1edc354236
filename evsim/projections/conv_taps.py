"""conv_taps: a weight-shared conv scattered tap by tap (a *kernel CSR*), for kernels whose taps are mostly empty.

Per input channel the non-zero taps, each with its weight vector over the output channels; an
event adds each tap's vector to the output position the tap lands on. Empty taps cost nothing.
Lowering (:func:`lower`), packing into the program table (:func:`pack`) and the kernel with its
decoding (:func:`scatter_packed`) live here together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..intrinsics import add_run
from ..jitcache import PARALLEL, SERIAL
from .positions import decode, divider
from .table import (D_C_IN, D_C_OUT, D_H_IN, D_KH, D_KW, D_N, D_O1, D_O2, D_O3, D_O4, D_O5, D_O6, D_O7, D_W_IN,
                    D_W_OUT)

NAME = "conv_taps"
CODE = 0


def lower_weights(weight: np.ndarray, dtype) -> dict:
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


def lower(pr, geom, dtype) -> dict:
    """The arrays of a conv2d projection scattered tap by tap."""
    arrays = lower_weights(pr.weight, dtype)
    arrays["row_map"], arrays["col_map"] = geom.offset_maps()
    return arrays


def pack(cp, j, desc, scale, ib, i32, fb) -> None:
    d = desc[j]
    a = cp.arrays
    d[D_O1] = ib.add(a, "tap_ptr")
    d[D_O2] = ib.add(a, "tap_y")
    d[D_O3] = ib.add(a, "tap_x")
    d[D_O4] = ib.add(a, "tap_nnz")
    d[D_O5] = ib.add(a, "row_map")
    d[D_O6] = ib.add(a, "col_map")
    d[D_O7] = fb.add(a, "tap_w")
    d[D_N] = a["tap_w"].shape[0]


@njit(**SERIAL)
def conv_taps(ev_idx, ev_sign, cnt, c_in, w_in, tap_ptr, tap_y, tap_x, tap_w, tap_nnz,
              row_map, col_map, w_out, acc):
    """Scatter one sample's events through a weight-shared conv kernel, tap by tap.

    ``tap_ptr[ci]:tap_ptr[ci+1]`` are the non-zero taps of input channel
    ``ci``: offsets ``(tap_y, tap_x)``, the weight vector over output
    channels ``tap_w[k, :]`` and its count of non-zero weights ``tap_nnz[k]``.
    ``row_map[y, ky]`` is the output row an input row ``y`` reaches through
    kernel row ``ky`` (``-1`` where it falls outside the map or between
    strides), ``col_map[x, kx]`` likewise: stride, padding and borders are
    resolved at compile time, so the hot loop does no division. Taps that
    reach nothing are skipped and not counted. ``acc``: (P_out, C_out).
    The path for kernels with mostly empty taps (the compiler's choice, see
    :func:`evsim.projections.conv_rows.prefers_rows`); ``conv_rows``, which adds whole kernel
    rows as contiguous runs at any stride, is the one for dense kernels.
    """
    c_out = tap_w.shape[1]
    m_c, s_c = divider(c_in)
    m_w, s_w = divider(w_in)
    # the runs address flat arrays (add_run takes 1-D arrays only: indexing a 2-D one by a flat offset
    # would take rows, out of bounds)
    acc_flat = acc.reshape(-1)
    w_flat = tap_w.reshape(-1)
    ops = 0
    for e in range(cnt):
        ci, y, x = decode(ev_idx[e], c_in, w_in, m_c, s_c, m_w, s_w)
        sign = ev_sign[e]
        for k in range(tap_ptr[ci], tap_ptr[ci + 1]):
            oy = row_map[y, tap_y[k]]
            ox = col_map[x, tap_x[k]]
            if oy < 0 or ox < 0:
                continue
            add_run(acc_flat, np.uint64((oy * w_out + ox) * c_out), w_flat, np.uint64(k * c_out), np.uint64(c_out),
                    sign)
            ops += tap_nnz[k]
    return ops


@njit(**SERIAL)
def scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """:func:`conv_taps` for projection ``j`` of the program table (arrays decoded from the shared buffers)."""
    c_in = desc[j, D_C_IN]
    c_out = desc[j, D_C_OUT]
    n_taps = desc[j, D_N]
    o = desc[j, D_O1]
    tap_ptr = ibuf[o:o + c_in + 1]
    o = desc[j, D_O2]
    tap_y = ibuf[o:o + n_taps]
    o = desc[j, D_O3]
    tap_x = ibuf[o:o + n_taps]
    o = desc[j, D_O4]
    tap_nnz = ibuf[o:o + n_taps]
    o = desc[j, D_O5]
    row_map = ibuf[o:o + desc[j, D_H_IN] * desc[j, D_KH]].reshape((desc[j, D_H_IN], desc[j, D_KH]))
    o = desc[j, D_O6]
    col_map = ibuf[o:o + desc[j, D_W_IN] * desc[j, D_KW]].reshape((desc[j, D_W_IN], desc[j, D_KW]))
    o = desc[j, D_O7]
    tap_w = fbuf[o:o + n_taps * c_out].reshape((n_taps, c_out))
    w_out = desc[j, D_W_OUT]
    acc2 = acc.reshape((acc.shape[0] // c_out, c_out))
    return conv_taps(ev_idx, ev_sign, cnt, c_in, desc[j, D_W_IN], tap_ptr, tap_y, tap_x, tap_w, tap_nnz,
                     row_map, col_map, w_out, acc2)


@njit(**PARALLEL)
def scatter_batch(ev_idx, ev_sign, ev_cnt, c_in, w_in, tap_ptr, tap_y, tap_x, tap_w, tap_nnz,
                 row_map, col_map, w_out, acc, syn_ops):
    """:func:`conv_taps` over a batch; ``acc`` (N, P_out, C_out)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += conv_taps(ev_idx[n], ev_sign[n], ev_cnt[n], c_in, w_in, tap_ptr, tap_y, tap_x, tap_w,
                                tap_nnz, row_map, col_map, w_out, acc[n])


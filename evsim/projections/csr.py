"""csr: explicit synapses, one row of (target, weight) per presynaptic neuron (zeros dropped, but see
:func:`dense_rows`).

A linear projection fed by spikes, or a conv lowered neuron by neuron (``--conv-mode explicit``,
memory-guarded). Lowering (:func:`lower`), packing (:func:`pack`), the kernel and its decoding
(:func:`scatter_packed`) live here together.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from ..errors import NetworkError
from ..graph import INPUT
from ..intrinsics import add_runs
from ..jitcache import PARALLEL, SERIAL
from ..layout import linear_weight_cl
from ..tuning import CSR_GROUP
from .table import D_FLAG, D_N, D_O1, D_O2, D_O3, D_TALLY, tally_table

NAME = "csr"
CODE = 2
DEFAULT_EXPLICIT_LIMIT_MB = 1024.0


def linear_csr(weight: np.ndarray, source_shape, target_shape, dtype) -> sp.csr_matrix:
    """Rows = presynaptic neurons, columns = targets, both channels-last; zeros dropped."""
    w = linear_weight_cl(weight, source_shape, target_shape)
    m = sp.csr_matrix(np.ascontiguousarray(w.T).astype(dtype))
    m.eliminate_zeros()
    m.sort_indices()
    return m


def conv_explicit_nnz(weight: np.ndarray, geom) -> int:
    """Non-zeros of the per-neuron CSR of a conv, computed without building it."""
    cy, cx = geom.valid_counts()
    nnz_tap = (weight != 0).sum(axis=(0, 1))          # [ky, kx] over (co, ci)
    return int((nnz_tap * cy[:, None] * cx[None, :]).sum())


def conv_explicit_csr(weight: np.ndarray, geom, dtype,
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


def csr_arrays(m: sp.csr_matrix, dtype) -> dict:
    """The arrays :func:`csr` reads, of a CSR matrix whose rows are presynaptic neurons (channels-last)."""
    return dict(indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
                data=np.ascontiguousarray(m.data.astype(dtype)))


def dense_rows(m: sp.csr_matrix, dtype) -> dict | None:
    """The arrays of ``m`` with every row that holds at least half of the targets stored over all of them,
    zeros included, plus ``row_ops``, each row's synaptic operations (its non-zeros); None when no row
    changes. A dense linear layer of which quantisation rounded a few weights to zero then keeps one
    contiguous run per row, which :func:`csr` adds with the vector runs (each zero row entry left the
    row to the scalar loop, and ended the group of events around it); the padding adds at most as many
    additions of 0 as the row has synapses. Integer weights only (adding 0 changes no integer; a float
    -0.0 would become +0.0)."""
    n_src, n_tgt = m.shape
    nnz = np.diff(m.indptr)
    pad = (nnz < n_tgt) & (2 * nnz >= n_tgt) & (nnz > 0)
    if not pad.any():
        return None
    length = np.where(pad, n_tgt, nnz)
    indptr = np.zeros(n_src + 1, dtype=np.int64)
    np.cumsum(length, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=dtype)
    row_of = np.repeat(np.arange(n_src), nnz)
    keep = ~pad[row_of]                                   # entries of the rows left as they are
    at = indptr[row_of[keep]] + (np.flatnonzero(keep) - m.indptr[row_of[keep]])
    indices[at] = m.indices[keep]
    data[at] = m.data[keep]
    rows = np.flatnonzero(pad)
    at = (indptr[rows][:, None] + np.arange(n_tgt)[None, :]).ravel()
    indices[at] = np.tile(np.arange(n_tgt, dtype=np.int32), rows.size)
    data[at] = m[rows].toarray().astype(dtype).ravel()
    return dict(indptr=indptr, indices=indices, data=data, row_ops=nnz.astype(np.int64))


def lower(pr, geom, dtype, source_shape, target_shape, explicit_limit_mb=DEFAULT_EXPLICIT_LIMIT_MB) -> dict:
    """The arrays of a linear projection (``geom`` None) or of a conv lowered neuron by neuron.

    A fixed-point linear projection fed by a population stores its nearly dense rows with their zeros
    (:func:`dense_rows`); its operations are then counted from the source's spike tallies with
    ``row_ops`` (:data:`evsim.projections.table.D_TALLY`), as the kernel cannot tell a stored zero."""
    if geom is None:
        m = linear_csr(pr.weight, source_shape, target_shape, dtype)
        padded = dense_rows(m, dtype) if np.dtype(dtype).kind == "i" and pr.source != INPUT else None
        return padded if padded is not None else csr_arrays(m, dtype)
    return csr_arrays(conv_explicit_csr(pr.weight, geom, dtype, explicit_limit_mb), dtype)


def pack(cp, j, desc, scale, ib, i32, fb) -> None:
    d = desc[j]
    a = cp.arrays
    d[D_O1] = ib.add(a, "indptr")
    d[D_O2] = i32.add(a, "indices")
    # int32 weights in an int16 network: the readout's, in the type of its accumulator (the vector runs
    # take one type), held in the int32 buffer
    wide = a["data"].dtype != fb.dtype
    if wide and a["data"].dtype != np.int32:
        raise ValueError(f"csr weights of type {a['data'].dtype} in a {fb.dtype} program")
    d[D_O3] = (i32 if wide else fb).add(a, "data")
    d[D_FLAG] = int(wide)
    d[D_N] = a["indptr"].shape[0] - 1
    if "row_ops" in a:               # stored zeros: the driver counts from the source's spike tallies
        assert cp.source >= 0
        a["tally"] = tally_table(a["row_ops"])
        d[D_TALLY] = ib.add(a, "tally")


@njit(**SERIAL)
def csr(ev_idx, ev_sign, cnt, indptr, indices, data, acc):
    """Scatter one sample's events through explicit CSR rows (row = presynaptic neuron).

    Each row entry is one synaptic operation, as the CSR keeps no zeros (where
    :func:`dense_rows` stored some, the driver counts the operations instead and
    ignores this count). ``acc``: flat (n_target,). Column indices are sorted and
    unique within a row (as the compiler builds them), so a row whose first
    and last index lie ``len - 1`` apart covers a contiguous range of
    targets, as every row of a dense linear layer does. Consecutive events
    whose rows cover the same range are added in one pass with
    :func:`evsim.simd.add_runs` (the targets held in registers over the
    group); other rows take a gather-scatter loop.
    """
    group_w = np.empty(CSR_GROUP, np.uint64)
    group_sign = np.empty(CSR_GROUP, np.int8)
    row_a = np.empty(1, np.uint64)
    row_b = np.zeros(1, np.uint64)
    ops = 0
    e = 0
    while e < cnt:
        row = ev_idx[e]
        lo = indptr[row]
        hi = indptr[row + 1]
        n = hi - lo
        if n == 0:
            e += 1
            continue
        first = indices[lo]
        if indices[hi - 1] - first != n - 1:
            if ev_sign[e] > 0:
                for k in range(lo, hi):
                    acc[indices[k]] += data[k]
            else:
                for k in range(lo, hi):
                    acc[indices[k]] -= data[k]
            ops += n
            e += 1
            continue
        g = 0
        while e < cnt and g < CSR_GROUP:     # the following events whose rows cover the same targets
            row = ev_idx[e]
            lo = indptr[row]
            if indptr[row + 1] - lo != n or indices[lo] != first or indices[lo + n - 1] != first + n - 1:
                break
            group_w[g] = np.uint64(lo)
            group_sign[g] = ev_sign[e]
            g += 1
            e += 1
        row_a[0] = np.uint64(first)
        add_runs(acc, row_a, data, row_b, np.uint64(1), group_w, group_sign, np.uint64(g), np.uint64(n))
        ops += g * n
    return ops


@njit(**SERIAL)
def scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """:func:`csr` for projection ``j`` of the program table (arrays decoded from the shared buffers)."""
    n_rows = desc[j, D_N]
    o = desc[j, D_O1]
    indptr = ibuf[o:o + n_rows + 1]
    nnz = indptr[n_rows]
    o = desc[j, D_O2]
    indices = i32buf[o:o + nnz]
    return _with_weights(desc[j, D_O3], desc[j, D_FLAG] != 0, nnz, fbuf, i32buf, ev_idx, ev_sign, cnt, indptr,
                         indices, acc)


def _with_weights(o, wide, nnz, fbuf, i32buf, ev_idx, ev_sign, cnt, indptr, indices, acc):
    """:func:`csr` with the weights at ``o``: in the int32 buffer when ``wide`` (an int16 network's readout,
    held in its int32 accumulator's type), else in the engine's. (This body runs only under
    NUMBA_DISABLE_JIT.)"""
    data = i32buf[o:o + nnz] if wide else fbuf[o:o + nnz]
    return csr(ev_idx, ev_sign, cnt, indptr, indices, data, acc)


@overload(_with_weights, inline="always")
def _with_weights_typed(o, wide, nnz, fbuf, i32buf, ev_idx, ev_sign, cnt, indptr, indices, acc):
    # Wide weights exist only where the accumulator is int32 and the engine's type is not: every other
    # accumulator compiles the engine's weights alone (no second, dead specialisation of the kernel)
    if acc.dtype == types.int32 and fbuf.dtype != types.int32:
        def either(o, wide, nnz, fbuf, i32buf, ev_idx, ev_sign, cnt, indptr, indices, acc):
            if wide:
                return csr(ev_idx, ev_sign, cnt, indptr, indices, i32buf[o:o + nnz], acc)
            return csr(ev_idx, ev_sign, cnt, indptr, indices, fbuf[o:o + nnz], acc)
        return either

    def engine(o, wide, nnz, fbuf, i32buf, ev_idx, ev_sign, cnt, indptr, indices, acc):
        return csr(ev_idx, ev_sign, cnt, indptr, indices, fbuf[o:o + nnz], acc)
    return engine


@njit(**PARALLEL)
def scatter_batch(ev_idx, ev_sign, ev_cnt, indptr, indices, data, acc, syn_ops):
    """:func:`csr` over a batch; ``acc`` (N, n_target)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += csr(ev_idx[n], ev_sign[n], ev_cnt[n], indptr, indices, data, acc[n])


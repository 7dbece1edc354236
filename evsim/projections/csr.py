"""csr: explicit synapses, one row of (target, weight) per presynaptic neuron (zeros dropped).

A linear projection fed by spikes, or a conv lowered neuron by neuron (``--conv-mode explicit``,
memory-guarded). Lowering (:func:`lower`), packing (:func:`pack`), the kernel and its decoding
(:func:`scatter_packed`) live here together.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from ..errors import NetworkError
from ..intrinsics import add_runs
from ..jitcache import PARALLEL, SERIAL
from ..layout import linear_weight_cl
from ..tuning import CSR_GROUP
from .table import D_N, D_O1, D_O2, D_O3

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


def _csr_arrays(m: sp.csr_matrix, dtype) -> dict:
    return dict(indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32),
                data=np.ascontiguousarray(m.data.astype(dtype)))


def lower(pr, geom, dtype, source_shape, target_shape, explicit_limit_mb=DEFAULT_EXPLICIT_LIMIT_MB) -> dict:
    """The arrays of a linear projection (``geom`` None) or of a conv lowered neuron by neuron."""
    if geom is None:
        return _csr_arrays(linear_csr(pr.weight, source_shape, target_shape, dtype), dtype)
    return _csr_arrays(conv_explicit_csr(pr.weight, geom, dtype, explicit_limit_mb), dtype)


def pack(cp, j, desc, scale, ib, i32, fb) -> None:
    d = desc[j]
    a = cp.arrays
    d[D_O1] = ib.add(a, "indptr")
    d[D_O2] = i32.add(a, "indices")
    d[D_O3] = fb.add(a, "data")
    d[D_N] = a["indptr"].shape[0] - 1


@njit(**SERIAL)
def csr(ev_idx, ev_sign, cnt, indptr, indices, data, acc):
    """Scatter one sample's events through explicit CSR rows (row = presynaptic neuron).

    Stored zeros are not kept in the CSR, so each row entry is one synaptic
    operation. ``acc``: flat (n_target,). Column indices are sorted and
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
    o = desc[j, D_O3]
    data = fbuf[o:o + nnz]
    return csr(ev_idx, ev_sign, cnt, indptr, indices, data, acc)


@njit(**PARALLEL)
def scatter_batch(ev_idx, ev_sign, ev_cnt, indptr, indices, data, acc, syn_ops):
    """:func:`csr` over a batch; ``acc`` (N, n_target)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += csr(ev_idx[n], ev_sign[n], ev_cnt[n], indptr, indices, data, acc[n])


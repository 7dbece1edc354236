"""Plain-Numba versions of the vector building blocks of :mod:`evsim.simd`.

Same names, arguments and results as the LLVM-IR intrinsics, written as
ordinary loops that Numba and LLVM compile for any CPU. They are the
fallback when the IR cannot be built (a future llvmlite, an unusual target)
or when ``EVSIM_INTRINSICS=plain`` asks for them (see
:mod:`evsim.intrinsics`), and the reference the tests compare the IR with:
every accumulator receives the same IEEE additions in the same order, so the
results are bit for bit those of the IR path. Slower, never different.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .tuning import LANES

_INLINE = dict(cache=False, nogil=True, boundscheck=False, inline="always")


@njit(**_INLINE)
def queue16(frame, start, stride, ev_idx, ev_sign, cnt):
    """Queue the non-zero entries among ``frame[start + j * stride]``, ``j < 16``, in order;
    return ``cnt + n_events + (n_positive << 32)``."""
    n_pos = 0
    for j in range(LANES):
        at = start + j * stride
        v = frame[at]
        if v != 0:
            ev_idx[cnt] = np.int32(at)
            ev_sign[cnt] = v
            cnt += 1
            if v > 0:
                n_pos += 1
    return cnt + (np.int64(n_pos) << 32)


@njit(**_INLINE)
def add_run(acc, a0, w, b0, n, sign):
    """``acc[a0 + j] += w[b0 + j]`` for ``j < n`` (``-=`` when ``sign`` is -1)."""
    a, b = np.int64(a0), np.int64(b0)
    if sign > 0:
        for j in range(np.int64(n)):
            acc[a + j] += w[b + j]
    else:
        for j in range(np.int64(n)):
            acc[a + j] -= w[b + j]


@njit(**_INLINE)
def add_runs(acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n):
    """``acc[a_rows[r] + j] += sign[k] * w[b_rows[r] + w_offsets[k] + j]``, events ``k`` in order."""
    for r in range(np.int64(n_rows)):
        for k in range(np.int64(count)):
            add_run(acc, a_rows[r], w, np.int64(b_rows[r]) + np.int64(w_offsets[k]), n, signs[k])


@njit(**_INLINE)
def add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n):
    """:func:`add_runs` for the queue's events ``e0 .. e0 + count - 1``; event k's weights start at
    ``(ev_idx[e0 + k] - first) * stride`` past ``b_rows[r]``."""
    e0, first, stride = np.int64(e0), np.int64(first), np.int64(stride)
    for r in range(np.int64(n_rows)):
        for k in range(np.int64(count)):
            off = (np.int64(ev_idx[e0 + k]) - first) * stride
            add_run(acc, a_rows[r], w, np.int64(b_rows[r]) + off, n, ev_sign[e0 + k])

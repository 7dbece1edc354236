"""identity: a residual shortcut, each event adding +-scale to the neuron at the same index.

Lowering is the scale alone; packing puts it in the program's scale column. A scale of 0 costs
nothing (docs/COUNTING.md).
"""

from __future__ import annotations

from numba import njit, prange

from ..jitcache import PARALLEL, SERIAL

NAME = "identity"
CODE = 3


def lower(pr, geom, dtype) -> dict:
    """No arrays: the scale is the projection's ``scale``."""
    return {}


def pack(cp, j, desc, scale, ib, i32, fb) -> None:
    scale[j] = cp.scale


@njit(**SERIAL)
def identity(ev_idx, ev_sign, cnt, scale, acc):
    """Residual shortcut: each event adds +-scale to the same index in the target.

    A shortcut of scale 0 adds nothing, so it performs (and counts) no operation."""
    if scale == 0:
        return 0
    for e in range(cnt):
        if ev_sign[e] > 0:
            acc[ev_idx[e]] += scale
        else:
            acc[ev_idx[e]] -= scale
    return cnt


@njit(**SERIAL)
def scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """:func:`identity` for projection ``j`` of the program table."""
    return identity(ev_idx, ev_sign, cnt, scale[j], acc)


@njit(**PARALLEL)
def scatter_batch(ev_idx, ev_sign, ev_cnt, scale, acc, syn_ops):
    """:func:`identity` over a batch."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += identity(ev_idx[n], ev_sign[n], ev_cnt[n], scale, acc[n])


"""conv_rows: a weight-shared conv scattered by whole kernel rows, each a contiguous run (any stride).

The default conv kind: an input column reaches, through one kernel row, taps that land on
adjacent output columns, so one event's contribution through one row is a single run of
``n_taps x C_out`` weights onto a single run of the channels-last accumulator. Lowering
(:func:`lower`), packing (:func:`pack`), the kernel and its decoding (:func:`scatter_packed`)
live here together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..intrinsics import ROWS, add_event_runs
from ..jitcache import PARALLEL, SERIAL
from ..tuning import ROWS_OVER_TAPS_MAX_EMPTY
from .dense import conv_input_reach
from .positions import divider
from .table import (D_C_IN, D_C_OUT, D_FLAG, D_H_IN, D_KH, D_KW, D_O1, D_O2, D_O3, D_O4, D_TALLY, D_W_IN, D_W_OUT,
                    tally_table)

NAME = "conv_rows"
CODE = 1


def prefers_rows(weight: np.ndarray) -> bool:
    """Use the row kernel unless most taps are all zero (then skipping them tap by tap wins)."""
    empty = ~(weight != 0).any(axis=0)                  # [ci, ky, kx] taps with no weight
    return bool(empty.mean() < ROWS_OVER_TAPS_MAX_EMPTY)


def lower_weights(weight: np.ndarray, geom, dtype) -> dict:
    """Weights of a conv as whole kernel rows, for :func:`conv_rows`.

    An input column ``x`` reaches, through one kernel row, the taps
    ``kx = r, r+s, r+2s, ...`` (stride ``s`` along x, ``r = (x + pad) mod s``),
    which land on adjacent output columns in *reverse* order. So each kernel
    row stores its taps grouped by ``r``, each group reversed: then one event's
    contribution through one kernel row is one contiguous run of weights and
    one contiguous run of the channels-last accumulator. Returns

    * ``row_w``: ``[ci, ky, tap in that order, co]`` flattened;
    * ``reach[(y * W + x) * C_in + ci]``: the non-zero synapses input neuron
      ``(ci, y, x)`` reaches inside the output map (its synaptic operations per
      event), in the events' channels-last order; empty when no weight is zero;
    * ``col_plan[x] = (first tap, number of taps, first output column)``,
      borders and stride resolved (0 taps: the column reaches nothing);
    * ``has_zeros``: whether any weight is zero (then the kernel counts
      operations with ``reach``).
    """
    c_out, c_in, kh, kw = weight.shape
    s, pad = geom.stride[1], geom.padding[1]
    taps = np.arange(kw, dtype=np.int64)
    order = np.lexsort((-taps, taps % s))                  # by residue r = kx mod s, each group descending
    group_size = np.bincount(taps % s, minlength=min(s, kw))       # residues >= kw hold no tap
    group_start = np.concatenate(([0], np.cumsum(group_size)))
    w = weight.transpose(1, 2, 3, 0)[:, :, order, :]                 # [ci, ky, tap, co]
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
    has_zeros = bool((weight == 0).any())
    reach = (conv_input_reach(weight, geom).transpose(1, 2, 0).reshape(-1) if has_zeros
             else np.zeros(0, dtype=np.int64))
    return dict(row_w=np.ascontiguousarray(w.astype(dtype)).reshape(-1), reach=np.ascontiguousarray(reach),
                col_plan=plan, has_zeros=np.array(has_zeros))


def lower(pr, geom, dtype) -> dict:
    """The arrays of a conv2d projection scattered by kernel rows."""
    arrays = lower_weights(pr.weight, geom, dtype)
    arrays["row_map"] = geom.offset_maps()[0]
    return arrays


def pack(cp, j, desc, scale, ib, i32, fb) -> None:
    d = desc[j]
    a = cp.arrays
    d[D_O1] = ib.add(a, "row_map")
    d[D_O2] = fb.add(a, "row_w")
    d[D_O4] = ib.add(a, "col_plan")
    if a["has_zeros"] and cp.source >= 0:
        # events from a population: the driver counts the non-zero synapses from its spike tallies (reach
        # times each neuron's spikes, once per sample), the kernel skips its per-event pass over reach,
        # so only the tally table is kept (the kernel reads no reach: D_FLAG 0)
        a["tally"] = tally_table(a.pop("reach"))
        d[D_TALLY] = ib.add(a, "tally")
        d[D_O3] = 0
        d[D_FLAG] = 0
    else:
        d[D_O3] = ib.add(a, "reach")
        d[D_FLAG] = int(a["has_zeros"])


@njit(**SERIAL)
def conv_rows(ev_idx, ev_sign, cnt, c_in, w_in, kh, kw, row_map, col_plan, w_out, c_out, row_w, reach,
              has_zeros, acc):
    """Scatter one sample's events through a weight-shared conv, one kernel row at a time.

    Along x, the taps of one kernel row that an input column reaches land on
    *adjacent* output columns (for stride s: the taps ``kx = r, r+s, ...``
    with ``r`` fixed by the column, in reverse order), so in the
    channels-last accumulator they form one contiguous run of
    ``n_taps * C_out`` floats. ``row_w`` stores each kernel row with its taps
    grouped that way (:func:`lower_weights`), so the weights are one
    contiguous run too: an event costs ``kh`` long vector runs instead of
    ``kh * kw`` short ones. The events of one input position (consecutive in
    a queue in memory order) all reach the same runs, so they go as one group
    through :func:`evsim.simd.add_event_runs`, which holds the runs'
    accumulators in registers over the group. ``col_plan[x] = (first tap,
    number of taps, first output column)`` is resolved at compile time
    (stride, padding, borders);
    ``row_map[y, ky]`` likewise for rows (-1: outside). Only non-zero weights
    count as synaptic operations: when the kernel holds zero weights
    (``has_zeros``), an event's count is ``reach[ev_idx]``, its input neuron's
    non-zero synapses. ``acc``: flat (P_out * C_out,).
    """
    m_c, s_c = divider(c_in)
    m_w, s_w = divider(w_in)
    # The event loop works in unsigned offsets into flat views of the tables and the
    # whole arrays: an index that cannot be negative needs no wrap-around test, a flat
    # table needs no stride multiply, and a slice would take a reference on the shared
    # array's meminfo (one atomic update that all threads would fight over, per run).
    # Measured: the set-up of an event was as long as its additions at 16 output channels.
    u = np.uint64
    rm = row_map.reshape(-1)
    cp = col_plan.reshape(-1)
    uc_in, uw_in, ukh, uc_out = u(c_in), u(w_in), u(kh), u(c_out)
    row_stride = u(w_out * c_out)
    kernel_row = u(kw * c_out)
    channel = u(kh * kw * c_out)
    # the output runs that one group of events (those of one input position) reaches, one per
    # kernel row: accumulator and weight offsets
    row_a = np.empty(kh, np.uint64)
    row_b = np.empty(kh, np.uint64)
    ops = 0
    e = 0
    while e < cnt:
        idx = u(ev_idx[e])
        p = (idx * m_c) >> s_c          # idx // c_in, exact (see divider)
        first = p * uc_in
        # the events that follow at the same input position (its other channels: a queue in
        # memory order emits them together) reach the same output runs
        e0 = e
        e += 1
        while e < cnt and u(ev_idx[e]) - first < uc_in:     # unsigned: also false below first
            e += 1
        y = (p * m_w) >> s_w
        x3 = (p - y * uw_in) * u(3)
        n_taps = cp[x3 + u(1)]
        if n_taps == 0:                 # a column that reaches no output (stride, border)
            continue
        g = e - e0
        n = u(n_taps) * uc_out
        a_x = u(cp[x3 + u(2)]) * uc_out
        w0 = u(cp[x3]) * uc_out
        r = y * ukh
        n_rows = 0
        for ky in range(kh):
            oy = rm[r + u(ky)]
            if oy >= 0:
                row_a[n_rows] = u(oy) * row_stride + a_x
                row_b[n_rows] = w0 + u(ky) * kernel_row
                n_rows += 1
        if n_rows <= ROWS:
            # all rows in one pass (every kernel of up to ROWS rows, a 3x3 one included), on the row tables
            # themselves: the sliced views of the loop below cost a quarter of a one-event position's time
            # at 16 channels (measured: 32 -> 25 ns per position, the conv scatter alone)
            add_event_runs(acc, row_a, row_w, row_b, u(n_rows), ev_idx, ev_sign, u(e0), u(g), first, channel, n)
        else:
            for r0 in range(0, n_rows, ROWS):      # ROWS kernel rows per pass
                add_event_runs(acc, row_a[r0:], row_w, row_b[r0:], u(min(ROWS, n_rows - r0)), ev_idx, ev_sign,
                               u(e0), u(g), first, channel, n)
        ops += g * n_rows * n_taps * c_out
    if has_zeros:
        # Zero weights were added but are no synaptic operations: count each event's non-zero
        # synapses from the table, in a pass of its own (one load per event). Table lookups inside
        # the loop above made it 2.7x slower; an earlier version of this pass decoded every event and
        # walked its kernel rows, which doubled the layer's time when post-training quantisation
        # rounds a few per cent of the weights to zero (measured on the shipped ResNet-8 at 8 bits).
        ops = 0
        for e in range(cnt):
            ops += reach[ev_idx[e]]
    return ops


@njit(**SERIAL)
def scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """:func:`conv_rows` for projection ``j`` of the program table (arrays decoded from the shared buffers)."""
    c_in = desc[j, D_C_IN]
    kh = desc[j, D_KH]
    kw = desc[j, D_KW]
    c_out = desc[j, D_C_OUT]
    o = desc[j, D_O1]
    row_map = ibuf[o:o + desc[j, D_H_IN] * kh].reshape((desc[j, D_H_IN], kh))
    o = desc[j, D_O2]
    row_w = fbuf[o:o + c_in * kh * kw * c_out]
    w_in = desc[j, D_W_IN]
    o = desc[j, D_O3]
    reach = ibuf[o:o + (c_in * desc[j, D_H_IN] * w_in if desc[j, D_FLAG] != 0 else 0)]
    o = desc[j, D_O4]
    col_plan = ibuf[o:o + w_in * 3].reshape((w_in, 3))
    return conv_rows(ev_idx, ev_sign, cnt, c_in, w_in, kh, kw, row_map, col_plan,
                     desc[j, D_W_OUT], c_out, row_w, reach, desc[j, D_FLAG] != 0, acc)


@njit(**PARALLEL)
def scatter_batch(ev_idx, ev_sign, ev_cnt, c_in, w_in, kh, kw, row_map, col_plan, w_out, c_out,
                  row_w, reach, has_zeros, acc, syn_ops):
    """:func:`conv_rows` over a batch; ``acc`` (N, P_out * C_out)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += conv_rows(ev_idx[n], ev_sign[n], ev_cnt[n], c_in, w_in, kh, kw, row_map, col_plan, w_out,
                                c_out, row_w, reach, has_zeros, acc[n])


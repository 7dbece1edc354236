"""Numba kernels of the event-driven engine.

Plain arrays in, plain arrays out; no Python objects, no exceptions.

Two levels. The *per-sample* kernels (``conv_taps``, ``conv_rows``, ``csr``,
``identity``, ``fire``, ``collect``) do the work of one projection or one
population for one sample, serially. :func:`run_network` is the fused
driver: one call runs a whole batch through every timestep and every layer,
splitting the batch over threads *by sample* (one ``prange``), so no two
threads ever write the same accumulator (no atomics, no races) and the
thread pool wakes once per batch instead of once per layer and step. The
``scatter_*``/``fire_and_advance`` batch kernels wrap the same per-sample
kernels for the step-by-step engine, the tests and the benchmarks.

Layouts (channels-last, so the innermost loop over output channels is
contiguous and compiles to vector adds):

* events of a population: ``ev_idx[n, k]`` (int32, flat channels-last index
  ``p * C + c``), ``ev_sign[n, k]`` (int8, +1 or -1), ``ev_cnt[n]``; in
  memory order, or channel by channel for a population that feeds a conv
  with weights too large for the cache (see :func:`fire`)
* membrane / accumulator of a population: ``v[n, p, c]``; flat kernels see
  the same memory as ``v[n, p * C + c]``.

The synaptic path only adds or subtracts weights, chosen by the spike's
sign; every kernel counts the synaptic operations it actually performed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import jitcache
from .intrinsics import LANES, ROWS, add_event_runs, add_run, add_runs, queue16
from .neurons import CTSN_EVENT, CTSN_STATIC, LIF_BINARY
from .tuning import CSR_GROUP

jitcache.install()   # before the first @njit(cache=True): kernels cached in the user's cache dir

_SERIAL = dict(cache=True, nogil=True, fastmath=False, boundscheck=False)
_PARALLEL = dict(_SERIAL, parallel=True)


# ------------------------------------------------------------ per sample
@njit(cache=True, inline="always")
def divider(d):
    """Multiplier and shift that divide any index ``0 <= n < 2**31`` by ``d >= 1``: ``(n * m) >> s``.

    An integer division costs 20-40 cycles and sits on every event's path;
    a multiply and a shift cost 4. With ``l = ceil(log2 d)`` and ``m =
    ceil(2**(31 + l) / d)``, ``m * d`` exceeds ``2**(31 + l)`` by less than
    ``2**l``, which makes the quotient exact for every 31-bit ``n``
    (Granlund and Montgomery, PLDI 1994, theorem 4.2); ``m < 2**32 + 1``, so
    the product fits in 64 bits.
    """
    l = 0
    while (1 << l) < d:
        l += 1
    s = np.uint64(31 + l)
    return ((np.uint64(1) << s) + np.uint64(d - 1)) // np.uint64(d), s


@njit(cache=True, inline="always")
def _decode(idx, c_in, w_in, m_c, s_c, m_w, s_w):
    """Channel, row and column of a channels-last event index ``(y * w_in + x) * c_in + c``.

    ``(m_c, s_c)`` and ``(m_w, s_w)`` are :func:`divider` of ``c_in`` and
    ``w_in``, computed once per call: the two quotients are then a multiply
    and a shift each, exact for any int32 index. Measured against the float
    reciprocals used before: 15-20 % less time per event at 16-64 output
    channels (integer division, before that, cost 10-15 % more again).
    """
    p = np.int64((np.uint64(idx) * m_c) >> s_c)
    y = np.int64((np.uint64(p) * m_w) >> s_w)
    return idx - p * c_in, y, p - y * w_in


@njit(**_SERIAL)
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
    ``compiler.prefers_rows``); :func:`conv_rows`, which adds whole kernel
    rows as contiguous runs at any stride, is the one for dense kernels.
    """
    c_out = tap_w.shape[1]
    m_c, s_c = divider(c_in)
    m_w, s_w = divider(w_in)
    ops = 0
    for e in range(cnt):
        ci, y, x = _decode(ev_idx[e], c_in, w_in, m_c, s_c, m_w, s_w)
        sign = ev_sign[e]
        for k in range(tap_ptr[ci], tap_ptr[ci + 1]):
            oy = row_map[y, tap_y[k]]
            ox = col_map[x, tap_x[k]]
            if oy < 0 or ox < 0:
                continue
            add_run(acc, np.uint64((oy * w_out + ox) * c_out), tap_w, np.uint64(k * c_out), np.uint64(c_out), sign)
            ops += tap_nnz[k]
    return ops


@njit(**_SERIAL)
def conv_rows(ev_idx, ev_sign, cnt, c_in, w_in, kh, kw, row_map, col_plan, w_out, c_out, row_w, row_nnz_cum,
              has_zeros, acc):
    """Scatter one sample's events through a weight-shared conv, one kernel row at a time.

    Along x, the taps of one kernel row that an input column reaches land on
    *adjacent* output columns (for stride s: the taps ``kx = r, r+s, ...``
    with ``r`` fixed by the column, in reverse order), so in the
    channels-last accumulator they form one contiguous run of
    ``n_taps * C_out`` floats. ``row_w`` stores each kernel row with its taps
    grouped that way (``evsim.compiler.row_kernel``), so the weights are one
    contiguous run too: an event costs ``kh`` long vector runs instead of
    ``kh * kw`` short ones. The events of one input position (consecutive in
    a queue in memory order) all reach the same runs, so they go as one group
    through :func:`evsim.simd.add_event_runs`, which holds the runs'
    accumulators in registers over the group. ``col_plan[x] = (first tap,
    number of taps, first output column)`` is resolved at compile time
    (stride, padding, borders);
    ``row_map[y, ky]`` likewise for rows (-1: outside). ``row_nnz_cum[(ci*kh +
    ky)*(kw+1) + t]`` counts the non-zero weights of the first ``t`` taps of a
    row, so only non-zero weights count as synaptic operations (``has_zeros``:
    the kernel holds zero weights, so the count needs the table). ``acc``:
    flat (P_out * C_out,).
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
        for r0 in range(0, n_rows, ROWS):      # ROWS kernel rows per pass (all of a 3x3 kernel)
            add_event_runs(acc, row_a[r0:], row_w, row_b[r0:], u(min(ROWS, n_rows - r0)), ev_idx, ev_sign, u(e0),
                           u(g), first, channel, n)
        ops += g * n_rows * n_taps * c_out
    if has_zeros:
        # Zero weights were added but are no synaptic operations. Counting them in a
        # pass of their own keeps the loop above free of table lookups (which, measured,
        # made it 2.7x slower), and this pass runs only for kernels that contain zeros.
        for e in range(cnt):
            ci, y, x = _decode(ev_idx[e], c_in, w_in, m_c, s_c, m_w, s_w)
            n_taps = col_plan[x, 1]
            if n_taps == 0:
                continue
            t0 = col_plan[x, 0]
            for ky in range(kh):
                if row_map[y, ky] >= 0:
                    c = (ci * kh + ky) * (kw + 1) + t0
                    ops -= n_taps * c_out - (row_nnz_cum[c + n_taps] - row_nnz_cum[c])
    return ops




@njit(**_SERIAL)
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


@njit(**_SERIAL)
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


@njit(**_SERIAL)
def fire(model, tau, v_th, k_alpha, k_beta, k_gamma, v, h, drive, frame, n_channels, channel_major, ev_idx, ev_sign):
    """Threshold every neuron of one sample, emit its events, reset, and prepare the next step.

    After the synaptic input of step t has been added to ``v``, this emits
    the spikes of step t and leaves ``v`` holding the potential of step t+1
    before its synaptic input: leak (and, for CTSN, the complemental term)
    plus ``drive`` (folded biases and the direct-encoded input current).

    Two passes. A branch-free update over all neurons (one loop per model,
    no reductions, so each compiles to vector code) writes the spike frame
    into ``frame``; a scan of the frame then queues the events 16 neurons at
    a time with a vector compress (:func:`evsim.simd.queue16`), so its cost
    depends on neither the density nor the spike pattern (a branch per
    neuron mispredicts on random spikes). ``channel_major`` scans the
    frame channel by channel instead of in memory order: the events of one
    input channel then come together, so a conv whose weights do not fit
    in cache reuses each channel's weights while they are hot. Returns
    (events, positive spikes, negative spikes).
    """
    n_neurons = v.shape[0]
    zero = tau - tau  # a zero of the state's own float type
    if model == LIF_BINARY:
        for i in range(n_neurons):
            u = v[i]
            p = u >= v_th
            frame[i] = p
            v[i] = tau * (zero if p else u) + drive[i]
    elif model == CTSN_STATIC or model == CTSN_EVENT:
        static = model == CTSN_STATIC
        for i in range(n_neurons):
            u = v[i]
            p = u >= v_th
            m = u <= -v_th
            frame[i] = np.int8(p) - np.int8(m)
            u = tau * (zero if (p or m) else u)
            hp = h[i]
            if static:
                hn = k_alpha * max(hp, zero) + k_beta * min(hp, zero) + k_gamma * u
            else:
                hn = k_alpha * hp + k_beta * max(u, zero) + k_gamma * min(u, zero)
            h[i] = hn
            v[i] = hn + drive[i]
    else:
        for i in range(n_neurons):
            u = v[i]
            p = u >= v_th
            m = u <= -v_th
            frame[i] = np.int8(p) - np.int8(m)
            v[i] = tau * (zero if (p or m) else u) + drive[i]
    # queue the events, 16 neurons at a time (a vector compress, no branch per neuron). The memory-order
    # branch is the channel loop with stride 1, written out so that queue16 sees a constant stride:
    # merged into one loop with a run-time stride it measured 10 % slower end to end (sparse model).
    cnt = 0
    pos = 0
    if channel_major:
        n_positions = n_neurons // n_channels
        n_blocks = n_positions // LANES
        for c in range(n_channels):
            for b in range(n_blocks):
                r = queue16(frame, b * LANES * n_channels + c, n_channels, ev_idx, ev_sign, cnt)
                cnt = r & 0xFFFFFFFF
                pos += r >> 32
            for i in range(n_blocks * LANES * n_channels + c, n_neurons, n_channels):
                sg = frame[i]
                ev_idx[cnt] = i
                ev_sign[cnt] = sg
                cnt += sg != 0
                pos += sg > 0
    else:
        n_blocks = n_neurons // LANES
        for b in range(n_blocks):
            r = queue16(frame, b * LANES, 1, ev_idx, ev_sign, cnt)
            cnt = r & 0xFFFFFFFF
            pos += r >> 32
        for i in range(n_blocks * LANES, n_neurons):     # the last < 16 neurons: always write, advance on a spike
            sg = frame[i]
            ev_idx[cnt] = i
            ev_sign[cnt] = sg
            cnt += sg != 0
            pos += sg > 0
    return cnt, pos, cnt - pos


@njit(**_SERIAL)
def collect(values, ev_idx, ev_sign):
    """Turn one sample's ternary frame ``values[i]`` in {-1, 0, 1} into events."""
    cnt = 0
    for i in range(values.shape[0]):
        s = values[i]
        if s != 0:
            ev_idx[cnt] = i
            ev_sign[cnt] = 1 if s > 0 else -1
            cnt += 1
    return cnt


@njit(**_SERIAL)
def to_frame(ev_idx, ev_sign, cnt, out):
    """Write one sample's events into a dense int8 frame (recording)."""
    for i in range(out.shape[0]):
        out[i] = 0
    for e in range(cnt):
        out[ev_idx[e]] = ev_sign[e]


# ---------------------------------------------------------- direct-encoded input
# A direct-encoded input is real-valued, so its projection is the network's only
# dense multiply-accumulate work. It runs here, on Numba's own thread pool, and
# not through NumPy's BLAS: OpenBLAS worker threads keep spinning for a while
# after a call, and on a machine with few cores they then take the cores the
# driver's threads need (measured: 1 -> 2 thread speed-up 1.0x instead of 1.8x).
@njit(**_PARALLEL)
def direct_conv(x, wt, kh, kw, sh, sw, ph, pw, h_out, w_out, out):
    """Dense conv of a batch ``x`` (N, C_in, H, W) into ``out`` (N, H_out * W_out * C_out), channels-last.

    ``wt`` (kh * kw * C_in, C_out), rows ordered (ky, kx, ci). ``out`` is
    added to, one output position at a time, the innermost loop running over
    the contiguous output channels.
    """
    c_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3]
    c_out = wt.shape[1]
    for n in prange(x.shape[0]):
        for oy in range(h_out):
            for ox in range(w_out):
                o = (oy * w_out + ox) * c_out
                for ky in range(kh):
                    iy = oy * sh - ph + ky
                    if iy < 0 or iy >= h_in:
                        continue
                    for kx in range(kw):
                        ix = ox * sw - pw + kx
                        if ix < 0 or ix >= w_in:
                            continue
                        r = (ky * kw + kx) * c_in
                        for ci in range(c_in):
                            xv = x[n, ci, iy, ix]
                            for co in range(c_out):
                                out[n, o + co] += xv * wt[r + ci, co]


@njit(**_PARALLEL)
def direct_linear(x, wt, out):
    """Dense linear map of a batch ``x`` (N, n_in) into ``out`` (N, n_out): ``out += x @ wt``."""
    n_in, n_out = wt.shape
    for n in prange(x.shape[0]):
        for i in range(n_in):
            xv = x[n, i]
            for o in range(n_out):
                out[n, o] += xv * wt[i, o]


# ------------------------------------------------------------- the fused driver
# Columns of the projection table ``desc`` (see evsim.program).
MODE_TAPS, MODE_ROWS, MODE_CSR, MODE_IDENTITY = 0, 1, 2, 3
D_MODE, D_SRC, D_DST, D_C_IN, D_H_IN, D_W_IN, D_C_OUT, D_H_OUT, D_W_OUT, D_KH, D_KW, D_FLAG = range(12)
D_O1, D_O2, D_O3, D_O4, D_O5, D_O6, D_O7, D_N = range(12, 20)
DESC_WIDTH = 20
STEP_SCATTER, STEP_FIRE = 0, 1


@njit(**_SERIAL)
def _scatter_one(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """Run projection ``j`` of the program table for one sample; returns its synaptic operations."""
    mode = desc[j, D_MODE]
    if mode == MODE_ROWS:
        c_in = desc[j, D_C_IN]
        kh = desc[j, D_KH]
        kw = desc[j, D_KW]
        c_out = desc[j, D_C_OUT]
        o = desc[j, D_O1]
        row_map = ibuf[o:o + desc[j, D_H_IN] * kh].reshape((desc[j, D_H_IN], kh))
        o = desc[j, D_O2]
        row_w = fbuf[o:o + c_in * kh * kw * c_out]
        o = desc[j, D_O3]
        cum = ibuf[o:o + c_in * kh * (kw + 1)]
        w_in = desc[j, D_W_IN]
        o = desc[j, D_O4]
        col_plan = ibuf[o:o + w_in * 3].reshape((w_in, 3))
        return conv_rows(ev_idx, ev_sign, cnt, c_in, w_in, kh, kw, row_map, col_plan,
                         desc[j, D_W_OUT], c_out, row_w, cum, desc[j, D_FLAG] != 0, acc)
    if mode == MODE_TAPS:
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
    if mode == MODE_CSR:
        n_rows = desc[j, D_N]
        o = desc[j, D_O1]
        indptr = ibuf[o:o + n_rows + 1]
        nnz = indptr[n_rows]
        o = desc[j, D_O2]
        indices = i32buf[o:o + nnz]
        o = desc[j, D_O3]
        data = fbuf[o:o + nnz]
        return csr(ev_idx, ev_sign, cnt, indptr, indices, data, acc)
    return identity(ev_idx, ev_sign, cnt, scale[j], acc)


class ProgramRecord(NamedTuple):
    """The compiled network as the driver reads it (built by :mod:`evsim.program`)."""
    steps: np.ndarray              # (S, 2) int64: (STEP_SCATTER, projection) or (STEP_FIRE, population)
    desc: np.ndarray               # (J, DESC_WIDTH) int64: each projection's kernel and array offsets
    scale: np.ndarray              # (J,) identity scales
    ibuf: np.ndarray               # int64 index data of all projections
    i32buf: np.ndarray             # int32 CSR column indices
    fbuf: np.ndarray               # weights of all projections, engine dtype
    pop_off: np.ndarray            # (P+1,) population offsets in a sample's flat state
    pop_size: np.ndarray           # (P,)
    h_off: np.ndarray              # (P+1,) offsets in the CTSN complement state
    pop_code: np.ndarray           # (P,) neuron model codes
    pop_params: np.ndarray         # (P, 5) neuron constants
    pop_channels: np.ndarray       # (P,)
    pop_channel_major: np.ndarray  # (P,) 1: emit events channel by channel
    bias: np.ndarray               # (n_total,) folded biases at each population's offset


class StateRecord(NamedTuple):
    """Per-sample state of a batch, (N, ...) each; every array is written before it is read."""
    v: np.ndarray                  # membranes
    h: np.ndarray                  # CTSN complement
    drive: np.ndarray              # biases + direct-input current
    frame: np.ndarray              # int8 spike frame of one population
    ev_idx: np.ndarray             # event queues: neuron indices (int32) ...
    ev_sign: np.ndarray            # ... and signs (int8)
    ev_cnt: np.ndarray             # (N, P) queue lengths
    in_idx: np.ndarray             # input events (spike encoding)
    in_sign: np.ndarray
    in_cnt: np.ndarray             # (N,)


class InputRecord(NamedTuple):
    """What the batch is fed: spike-encoded input, or the direct-input currents."""
    x_spikes: np.ndarray           # (N, T, n_in) int8, channels-last (empty unless spike-encoded)
    current: np.ndarray            # (N, m) direct-input currents, concatenated
    current_map: np.ndarray        # (K, 3): (state offset, column in current, length)


class CounterRecord(NamedTuple):
    """What the driver measures, per sample (int64), plus the readout and the optional spike record."""
    n_pos: np.ndarray              # (N, P) +1 spikes
    n_neg: np.ndarray              # (N, P) -1 spikes
    syn_ops: np.ndarray            # (N, J) synaptic operations
    events_in: np.ndarray          # (N, J) events into each projection
    input_events: np.ndarray       # (N,) input events
    out_acc: np.ndarray            # (N, n_out) readout sum over the steps
    spikes: np.ndarray             # (N, T, n_total) int8, written only when recording


@njit(**_PARALLEL)
def run_network(timesteps, spike_input, record, n_groups, chunk, program, state, inputs, counters):
    """Run a batch through all timesteps of a compiled program (see :mod:`evsim.program`).

    ``program``, ``state``, ``inputs``, ``counters``: a :class:`ProgramRecord`,
    :class:`StateRecord`, :class:`InputRecord` and :class:`CounterRecord`
    (named tuples of arrays: no positional list of look-alike arrays to swap).

    ``steps[s] = (kind, index)``: scatter projection ``index`` or fire
    population ``index``, in topological order, once per timestep. State
    arrays are (N, ...) with each population at ``pop_off[i]:pop_off[i] +
    pop_size[i]`` of the flat per-sample vector (the gaps align the next one). ``spikes`` (N, T, n_neurons) is written
    only when ``record``.

    Each sample's ``drive`` is set here, just before the sample runs (so in
    parallel, and while it is about to be in cache): the biases ``bias``
    (n_total,) plus the direct-input currents, ``current[n, c:c + m]`` added
    at state offset ``lo`` for each row ``(lo, c, m)`` of ``current_map``, in
    order. ``v`` starts as a copy of it (step 1 from rest: u = 0 + drive).

    The batch is cut into ``n_groups`` contiguous groups of samples, one
    ``prange`` iteration each (one per thread). A thread runs its group
    ``chunk`` samples at a time, through all timesteps, each layer for all
    samples of the chunk before the next layer. A chunk of one sample keeps
    that sample's state in cache from step to step (best when the state is
    small); a chunk of the whole group lets a layer's weights serve every
    sample while they are in cache (best when the weights are large).
    """
    steps, desc, scale, ibuf, i32buf, fbuf = (program.steps, program.desc, program.scale, program.ibuf,
                                              program.i32buf, program.fbuf)
    pop_off, pop_size, h_off, pop_code = program.pop_off, program.pop_size, program.h_off, program.pop_code
    pop_params, pop_channels, pop_channel_major, bias = (program.pop_params, program.pop_channels,
                                                         program.pop_channel_major, program.bias)
    v, h, drive, frame, ev_idx, ev_sign = state.v, state.h, state.drive, state.frame, state.ev_idx, state.ev_sign
    ev_cnt, in_idx, in_sign, in_cnt = state.ev_cnt, state.in_idx, state.in_sign, state.in_cnt
    x_spikes, current, current_map = inputs.x_spikes, inputs.current, inputs.current_map
    n_pos, n_neg, syn_ops, events_in = counters.n_pos, counters.n_neg, counters.syn_ops, counters.events_in
    input_events, out_acc, spikes = counters.input_events, counters.out_acc, counters.spikes
    n_samples = v.shape[0]
    n_steps = steps.shape[0]
    per_group = (n_samples + n_groups - 1) // n_groups
    for g in prange(n_groups):
        g_first = g * per_group
        g_last = min(n_samples, g_first + per_group)
        for first in range(g_first, g_last, chunk):
            last = min(g_last, first + chunk)
            for n in range(first, last):
                drive[n, :] = bias
                for d in range(current_map.shape[0]):
                    lo = current_map[d, 0]
                    c0 = current_map[d, 1]
                    for i in range(current_map[d, 2]):
                        drive[n, lo + i] += current[n, c0 + i]
                v[n, :] = drive[n, :]
            for t in range(timesteps):
                if spike_input:
                    for n in range(first, last):
                        in_cnt[n] = collect(x_spikes[n, t], in_idx[n], in_sign[n])
                        input_events[n] += in_cnt[n]
                for s in range(n_steps):
                    kind = steps[s, 0]
                    j = steps[s, 1]
                    if kind == STEP_SCATTER:
                        src = desc[j, D_SRC]
                        dst = desc[j, D_DST]
                        for n in range(first, last):
                            if dst < 0:
                                acc = out_acc[n]
                            else:
                                acc = v[n, pop_off[dst]:pop_off[dst] + pop_size[dst]]
                            if src < 0:
                                cnt = in_cnt[n]
                                ops = _scatter_one(j, desc, scale, ibuf, i32buf, fbuf, in_idx[n], in_sign[n], cnt, acc)
                            else:
                                cnt = ev_cnt[n, src]
                                lo = pop_off[src]
                                hi = lo + pop_size[src]
                                ops = _scatter_one(j, desc, scale, ibuf, i32buf, fbuf, ev_idx[n, lo:hi],
                                                   ev_sign[n, lo:hi], cnt, acc)
                            events_in[n, j] += cnt
                            syn_ops[n, j] += ops
                    else:
                        lo = pop_off[j]
                        hi = lo + pop_size[j]
                        prm = pop_params[j]
                        for n in range(first, last):
                            cnt, pos, neg = fire(pop_code[j], prm[0], prm[1], prm[2], prm[3], prm[4], v[n, lo:hi],
                                                 h[n, h_off[j]:h_off[j + 1]], drive[n, lo:hi], frame[n, :hi - lo],
                                                 pop_channels[j], pop_channel_major[j] != 0, ev_idx[n, lo:hi],
                                                 ev_sign[n, lo:hi])
                            ev_cnt[n, j] = cnt
                            n_pos[n, j] += pos
                            n_neg[n, j] += neg
                            if record:
                                to_frame(ev_idx[n, lo:hi], ev_sign[n, lo:hi], cnt, spikes[n, t, lo:hi])


# ------------------------------------------------ batch kernels (step by step)
@njit(**_PARALLEL)
def scatter_conv(ev_idx, ev_sign, ev_cnt, c_in, w_in, tap_ptr, tap_y, tap_x, tap_w, tap_nnz,
                 row_map, col_map, w_out, acc, syn_ops):
    """:func:`conv_taps` over a batch; ``acc`` (N, P_out, C_out)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += conv_taps(ev_idx[n], ev_sign[n], ev_cnt[n], c_in, w_in, tap_ptr, tap_y, tap_x, tap_w,
                                tap_nnz, row_map, col_map, w_out, acc[n])


@njit(**_PARALLEL)
def scatter_conv_rows(ev_idx, ev_sign, ev_cnt, c_in, w_in, kh, kw, row_map, col_plan, w_out, c_out,
                      row_w, row_nnz_cum, has_zeros, acc, syn_ops):
    """:func:`conv_rows` over a batch; ``acc`` (N, P_out * C_out)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += conv_rows(ev_idx[n], ev_sign[n], ev_cnt[n], c_in, w_in, kh, kw, row_map, col_plan, w_out,
                                c_out, row_w, row_nnz_cum, has_zeros, acc[n])


@njit(**_PARALLEL)
def scatter_csr(ev_idx, ev_sign, ev_cnt, indptr, indices, data, acc, syn_ops):
    """:func:`csr` over a batch; ``acc`` (N, n_target)."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += csr(ev_idx[n], ev_sign[n], ev_cnt[n], indptr, indices, data, acc[n])


@njit(**_PARALLEL)
def scatter_identity(ev_idx, ev_sign, ev_cnt, scale, acc, syn_ops):
    """:func:`identity` over a batch."""
    for n in prange(ev_cnt.shape[0]):
        syn_ops[n] += identity(ev_idx[n], ev_sign[n], ev_cnt[n], scale, acc[n])


@njit(**_PARALLEL)
def fire_and_advance(model, tau, v_th, k_alpha, k_beta, k_gamma, v, h, drive, frame, n_channels, channel_major,
                     ev_idx, ev_sign, ev_cnt, n_pos, n_neg):
    """:func:`fire` over a batch; ``v, h, drive, frame``: (N, n) (``h`` (N, 0) without a complement)."""
    for n in prange(v.shape[0]):
        cnt, pos, neg = fire(model, tau, v_th, k_alpha, k_beta, k_gamma, v[n], h[n], drive[n], frame[n],
                             n_channels, channel_major, ev_idx[n], ev_sign[n])
        ev_cnt[n] = cnt
        n_pos[n] += pos
        n_neg[n] += neg


@njit(**_PARALLEL)
def collect_events(values, ev_idx, ev_sign, ev_cnt):
    """:func:`collect` over a batch."""
    for n in prange(values.shape[0]):
        ev_cnt[n] = collect(values[n], ev_idx[n], ev_sign[n])


@njit(**_PARALLEL)
def events_to_dense(ev_idx, ev_sign, ev_cnt, out):
    """:func:`to_frame` over a batch."""
    for n in prange(ev_cnt.shape[0]):
        to_frame(ev_idx[n], ev_sign[n], ev_cnt[n], out[n])

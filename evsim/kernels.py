"""Numba kernels of the event-driven engine.

Plain arrays in, plain arrays out; no Python objects, no exceptions.

Two levels. The *per-sample* kernels (each projection kind's, in
:mod:`evsim.projections`, and here ``fire`` and ``collect``) do the work of
one projection or one population for one sample, serially. :func:`run_network` is the fused
driver: one call runs a whole batch through every timestep and every layer,
splitting the batch over threads *by sample* (one ``prange``), so no two
threads ever write the same accumulator (no atomics, no races) and the
thread pool wakes once per batch instead of once per layer and step. It is
the engine's only path; a profiling run is the same driver reading the clock
between steps. ``fire_and_advance``, ``collect_events`` and
``events_to_dense`` here (and each kind's ``scatter_batch``) run one
per-sample kernel over a batch, for the kernel tests.

Layouts (channels-last, so the innermost loop over output channels is
contiguous and compiles to vector adds):

* events of a population: ``ev_idx[n, k]`` (int32, flat channels-last index
  ``p * C + c``), ``ev_sign[n, k]`` (int8, +1 or -1), ``ev_cnt[n]``; in
  memory order, or channel by channel for a population that feeds a conv
  with weights too large for the cache (see :func:`fire`)
* membrane / accumulator of a population: ``v[n, p, c]``; flat kernels see
  the same memory as ``v[n, p * C + c]``.

The synaptic path only adds or subtracts weights, chosen by the spike's
sign; every kernel counts the synaptic operations it actually performed,
except where a projection's weights include zeros that its kernel adds
anyway (quantised convs, dense CSR rows): the driver then counts them from
each source neuron's spikes (``D_TALLY``, see :func:`run_network`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from . import jitcache
from .clock import ticks
from .intrinsics import LANES, queue16
from .neurons import CTSN_EVENT, CTSN_STATIC, CUBA_LIF, CUBA_LIF_SUB, LIF_BINARY, LIF_BINARY_SUB, LIF_TERNARY
from .projections import conv_rows, conv_taps, csr, identity
from .projections.table import D_DST, D_MODE, D_SRC, D_TALLY

jitcache.install()   # before the first @njit(cache=True): kernels cached in the user's cache dir

_SERIAL, _PARALLEL = jitcache.SERIAL, jitcache.PARALLEL


# ------------------------------------------------------------ per sample














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
    elif model == LIF_BINARY_SUB:
        for i in range(n_neurons):
            u = v[i]
            p = u >= v_th
            frame[i] = p
            v[i] = tau * u - (v_th if p else zero) + drive[i]
    elif model == CUBA_LIF or model == CUBA_LIF_SUB:
        # h holds the membrane's own part of v (leak, reset); the rest is the synaptic current i[t]
        sub = model == CUBA_LIF_SUB
        for i in range(n_neurons):
            u = v[i]
            p = u >= v_th
            frame[i] = p
            cur = u - h[i]
            if sub:
                m = tau * u - (v_th if p else zero)
            else:
                m = tau * (zero if p else u)
            h[i] = m
            v[i] = m + k_alpha * cur + drive[i]
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
    return queue_frame(frame, n_neurons, n_channels, channel_major, ev_idx, ev_sign)


@njit(**_SERIAL)
def queue_frame(frame, n_neurons, n_channels, channel_major, ev_idx, ev_sign):
    """Queue the events of a spike frame ``frame[:n_neurons]`` (see :func:`fire`); returns
    (events, positive spikes, negative spikes)."""
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


def _membrane(v, syn, i):
    """Membrane ``i`` after this step's synaptic input: ``v[i]``, plus ``syn[i]`` where the run sums the
    input apart (``syn``'s type is not v's: a narrow int32 run), which it then clears for the next step.
    Exact: the sum that wrapped in ``syn``'s type fits it (:func:`evsim.fixedpoint.synaptic_input_bits`),
    and membrane plus input fits v's (:attr:`evsim.fixedpoint.FixedPoint.accumulator_bits`). Read inside
    the update loops, so the input costs no pass of its own over the membranes. (This body runs only
    under NUMBA_DISABLE_JIT.)"""
    if syn.dtype == v.dtype:
        return v[i]
    u = v.dtype.type(v[i] + syn[i])
    syn[i] = 0
    return u


@overload(_membrane, inline="always")
def _membrane_typed(v, syn, i):
    if syn.dtype != v.dtype:
        vt = as_dtype(v.dtype).type
        zero = as_dtype(syn.dtype).type(0)

        def apart(v, syn, i):
            u = vt(v[i] + syn[i])
            syn[i] = zero
            return u
        return apart
    return lambda v, syn, i: v[i]


@njit(**_SERIAL, inline="always")
def _leak(tmul, tshift, x):
    """``(tau * x) >> f`` as ``(tmul * x) >> tshift``: with tau = 2**-n the caller passes tmul = 1, tshift = n."""
    return (tmul * x) >> tshift


@njit(**_SERIAL, inline="always")
def _fire_fixed_loop(model, tmul, tshift, th, ka, kb, kg, f, lo, hi, v, h, drive, syn, frame):
    n_neurons = v.shape[0]
    zero = np.int64(0)
    if model == LIF_BINARY or model == LIF_BINARY_SUB or model == CUBA_LIF or model == CUBA_LIF_SUB:
        sub = model == LIF_BINARY_SUB or model == CUBA_LIF_SUB
        cuba = model == CUBA_LIF or model == CUBA_LIF_SUB
        for i in range(n_neurons):
            u = min(max(np.int64(_membrane(v, syn, i)), lo), hi)
            p = u >= th
            frame[i] = p
            if sub:
                m = _leak(tmul, tshift, u) - (th if p else zero)
            else:
                m = _leak(tmul, tshift, zero if p else u)
            if cuba:
                cur = u - np.int64(h[i])
                h[i] = m
                m = m + ((ka * cur) >> f)
            v[i] = m + np.int64(drive[i])
    elif model == CTSN_STATIC or model == CTSN_EVENT:
        static = model == CTSN_STATIC
        for i in range(n_neurons):
            u = min(max(np.int64(_membrane(v, syn, i)), lo), hi)
            p = u >= th
            q = u <= -th
            frame[i] = np.int8(p) - np.int8(q)
            m = _leak(tmul, tshift, zero if (p or q) else u)
            hp = np.int64(h[i])
            if static:
                hn = (ka * max(hp, zero) + kb * min(hp, zero) + kg * m) >> f
            else:
                hn = (ka * hp + kb * max(m, zero) + kg * min(m, zero)) >> f
            hn = min(max(hn, lo), hi)
            h[i] = hn
            v[i] = hn + np.int64(drive[i])
    else:
        for i in range(n_neurons):
            u = min(max(np.int64(_membrane(v, syn, i)), lo), hi)
            p = u >= th
            q = u <= -th
            frame[i] = np.int8(p) - np.int8(q)
            v[i] = _leak(tmul, tshift, zero if (p or q) else u) + np.int64(drive[i])


@njit(**_SERIAL, inline="always")
def _fire_fixed_narrow(model, sh, th, mth, lo, hi, inside, v, drive, syn, frame):
    """:func:`_fire_fixed_loop` for the models whose update is a clamp, compares, one shift and additions
    (ternary and binary LIF, reset to zero or by subtraction, leak 2**-n), in the state's own type: 16 int32
    or 32 int16 lanes per AVX-512 vector where int64 gave 8. ``sh, th, mth, lo, hi`` are of that type (the
    caller checked they fit it); ``mth`` is ``-th``, passed in: Numba types ``-th`` as int64, and that one
    int64 compare kept LLVM from the narrow lanes (the ternary loops ran at 8 int64 lanes or, clamped, as
    scalar code with branches; measured on 12 544 neurons, the int32 update took 1.1-1.3x float32's time,
    and takes 0.8-0.9x with ``mth``). The same numbers as the int64 loop: the clamped membrane and its shift are
    exact in the narrow type (``np.right_shift`` keeps NumPy's typing, where ``>>`` would widen to int64),
    and the additions after it wrap modulo 2**bits exactly as the int64 sum does when it is stored.

    ``inside``: 0 < th <= hi and lo <= -th. Then a membrane past the range compares with the thresholds as
    its saturated value does, and one that does not fire lies inside the range (a ternary one strictly
    between -th and th, a binary one below th), so the clamp changes nothing that is kept: ternary LIF
    skips it, binary LIF (reset to zero) keeps only its lower bound."""
    n_neurons = v.shape[0]
    zero = v.dtype.type(0)
    if inside and model == LIF_TERNARY:
        for i in range(n_neurons):
            u = _membrane(v, syn, i)
            p = u >= th
            q = u <= mth
            frame[i] = np.int8(p) - np.int8(q)
            v[i] = np.right_shift(zero if (p or q) else u, sh) + drive[i]
    elif inside and model == LIF_BINARY:
        for i in range(n_neurons):
            u = _membrane(v, syn, i)
            p = u >= th
            frame[i] = p
            u = lo if u < lo else u
            v[i] = np.right_shift(zero if p else u, sh) + drive[i]
    elif model == LIF_BINARY:
        for i in range(n_neurons):
            u = _membrane(v, syn, i)
            u = lo if u < lo else u
            u = hi if u > hi else u
            p = u >= th
            frame[i] = p
            v[i] = np.right_shift(zero if p else u, sh) + drive[i]
    elif model == LIF_BINARY_SUB:
        for i in range(n_neurons):
            u = _membrane(v, syn, i)
            u = lo if u < lo else u
            u = hi if u > hi else u
            p = u >= th
            frame[i] = p
            v[i] = np.right_shift(u, sh) - (th if p else zero) + drive[i]
    else:
        for i in range(n_neurons):
            u = _membrane(v, syn, i)
            u = lo if u < lo else u
            u = hi if u > hi else u
            p = u >= th
            q = u <= mth
            frame[i] = np.int8(p) - np.int8(q)
            v[i] = np.right_shift(zero if (p or q) else u, sh) + drive[i]


@njit(**_SERIAL, inline="always")
def _fits(v, x):
    """Whether the integer ``x`` is a value of ``v``'s element type."""
    return np.int64(v.dtype.type(x)) == x


@njit(**_SERIAL)
def fire_fixed(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major, ev_idx, ev_sign):
    """:func:`fire` in integer arithmetic, for a fixed-point network (docs/FIXED_POINT.md).

    ``prm``: the model's integer constants [tau, v_threshold, k_alpha (k_syn), k_beta, k_gamma], the
    multipliers as numerators over ``2**shift``; ``fxp``: the population's row of ``pop_fixed``, (shift,
    membrane min, membrane max, leak mult, leak shift). Each membrane first saturates to [lo, hi] (M bits);
    every product is int64 and ``>>`` an arithmetic shift (floor), as on a chip. The leak is ``(mult * u)
    >> shift`` as :func:`evsim.fixedpoint.leak` worked it out when the network was compiled: a leak
    tau = 2**-n (the Ternary Spike models' 0.25) is ``u >> n``, a shift with no multiply. The state arrays
    (int16 or int32) only ever receive values the quantiser proved fit them. Ternary and binary LIF with
    such a leak (and a threshold and membrane range the state's type holds) run in that type
    (:func:`_fire_fixed_narrow`: the same numbers, 2-4 times the lanes); the others in int64. ``syn``: the
    step's synaptic input where the run sums it apart from ``v`` (a narrow int32 run: int16), which each
    loop adds to the membrane as it reads it and clears (:func:`_membrane`); else an empty array of v's
    type.
    """
    th = np.int64(prm[1])
    ka = np.int64(prm[2])
    kb = np.int64(prm[3])
    kg = np.int64(prm[4])
    f = np.int64(fxp[0])
    lo = np.int64(fxp[1])
    hi = np.int64(fxp[2])
    narrow = (fxp[3] == 1 and (model == LIF_TERNARY or model == LIF_BINARY or model == LIF_BINARY_SUB)
              and _fits(v, th) and _fits(v, -th) and _fits(v, lo) and _fits(v, hi))
    if narrow:                   # a shift past the type's width fills with the sign bit, as in int64
        sh = v.dtype.type(min(np.int64(fxp[4]), np.int64(v.itemsize * 8 - 1)))
        t = v.dtype.type
        _fire_fixed_narrow(model, sh, t(th), t(-th), t(lo), t(hi), 0 < th <= hi and lo <= -th, v, drive, syn, frame)
    elif fxp[3] == 1:            # the constant 1 reaches the inlined loop: no multiply there
        _fire_fixed_loop(model, np.int64(1), np.int64(fxp[4]), th, ka, kb, kg, f, lo, hi, v, h, drive, syn, frame)
    else:
        _fire_fixed_loop(model, np.int64(fxp[3]), np.int64(fxp[4]), th, ka, kb, kg, f, lo, hi, v, h, drive, syn,
                         frame)
    return queue_frame(frame, v.shape[0], n_channels, channel_major, ev_idx, ev_sign)


def fire_population(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major, ev_idx, ev_sign):
    """:func:`fire` or :func:`fire_fixed`, chosen by the state's type when the driver is compiled.
    ``prm``: the population's row of ``pop_params``; ``fxp``: its row of ``pop_fixed``.
    (This body runs only under NUMBA_DISABLE_JIT; compiled code takes the overload's choice.)"""
    if np.issubdtype(v.dtype, np.integer):
        return fire_fixed(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major,
                          ev_idx, ev_sign)
    return fire(model, prm[0], prm[1], prm[2], prm[3], prm[4], v, h, drive, frame, n_channels, channel_major,
                ev_idx, ev_sign)


@overload(fire_population, inline="always")
def _fire_population(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major, ev_idx, ev_sign):
    if isinstance(v.dtype, types.Integer):
        def fixed(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major, ev_idx, ev_sign):
            return fire_fixed(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major,
                              ev_idx, ev_sign)
        return fixed

    def real(model, prm, fxp, v, h, drive, syn, frame, n_channels, channel_major, ev_idx, ev_sign):
        return fire(model, prm[0], prm[1], prm[2], prm[3], prm[4], v, h, drive, frame, n_channels, channel_major,
                    ev_idx, ev_sign)
    return real


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
def rescale_current(cur, mult, shift, out):
    """``out = (int64(cur) * mult) >> shift``, element by element, over a batch (N, m): a fixed-point
    direct input's current in its target's units (``np.right_shift``: NumPy's arithmetic shift, also for a
    shift past 63). One pass; in NumPy the widening, product, shift and narrowing were four, and took
    half as long again as the integer convolution itself."""
    for n in prange(cur.shape[0]):
        for i in range(cur.shape[1]):
            out[n, i] = np.right_shift(np.int64(cur[n, i]) * mult, shift)




# ------------------------------------------------------------- the driver
STEP_SCATTER, STEP_FIRE = 0, 1


@njit(**_SERIAL)
def _scatter_one(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc):
    """Run projection ``j`` of the program table for one sample through its kind's kernel; returns its
    synaptic operations. One line per event kind of :mod:`evsim.projections` (Numba dispatches statically)."""
    mode = desc[j, D_MODE]
    if mode == conv_rows.CODE:
        return conv_rows.scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc)
    if mode == conv_taps.CODE:
        return conv_taps.scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc)
    if mode == csr.CODE:
        return csr.scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc)
    return identity.scatter_packed(j, desc, scale, ibuf, i32buf, fbuf, ev_idx, ev_sign, cnt, acc)




@njit(**_SERIAL, inline="always")
def _scatter_from(j, src, n, program, state, acc):
    """Projection ``j`` for sample ``n``: its source's events (the input's when ``src < 0``) into ``acc``."""
    p, st = program, state
    if src < 0:
        return _scatter_one(j, p.desc, p.scale, p.ibuf, p.i32buf, p.fbuf, st.in_idx[n], st.in_sign[n], st.in_cnt[n],
                            acc)
    lo = p.pop_off[src]
    hi = lo + p.pop_size[src]
    return _scatter_one(j, p.desc, p.scale, p.ibuf, p.i32buf, p.fbuf, st.ev_idx[n, lo:hi], st.ev_sign[n, lo:hi],
                        st.ev_cnt[n, src], acc)


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
    pop_params: np.ndarray         # (P, 5) neuron constants (int64 for a fixed-point network)
    pop_fixed: np.ndarray          # (P, 3) int64 fixed point: (shift, membrane min, membrane max); unused for floats
    pop_channels: np.ndarray       # (P,)
    pop_channel_major: np.ndarray  # (P,) 1: emit events channel by channel
    bias: np.ndarray               # (n_total,) folded biases at each population's offset
    pop_tally: np.ndarray          # (P,) 1: count each neuron's spikes (a projection from it counts by D_TALLY)


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
    tally: np.ndarray              # (N, n_total) uint8: spikes of each neuron of a tallied population since the last flush
    syn: np.ndarray                # (N, n_total) a step's synaptic input, summed apart from v where its type differs
                                   # from v's (a narrow int32 run: int16); else (N, 0) of v's type, unused. Zero
                                   # when a run starts: each population's fire clears its part after its inputs
                                   # of the step (a topological order), so every run ends with it zero again


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
    ticks: np.ndarray              # (n_groups, S + 2) clock ticks per step (S: input events, S+1: drive), profiling


PROFILE_INPUT, PROFILE_DRIVE = 0, 1    # the two columns after the steps' in CounterRecord.ticks: S + these
TALLY_MAX = 255                        # spikes a uint8 tally holds: the driver flushes at least this often


def synaptic_target(v, syn, n, lo, hi):
    """The array that the projections into the population at ``[lo, hi)`` of sample ``n`` add to: the
    membranes ``v``, or ``syn`` where the run sums a step's synaptic input apart (its type is not v's).
    (This body runs only under NUMBA_DISABLE_JIT; compiled code takes the overload's choice.)"""
    return syn[n, lo:hi] if syn.dtype != v.dtype else v[n, lo:hi]


@overload(synaptic_target, inline="always")
def _synaptic_target(v, syn, n, lo, hi):
    if syn.dtype != v.dtype:
        return lambda v, syn, n, lo, hi: syn[n, lo:hi]
    return lambda v, syn, n, lo, hi: v[n, lo:hi]


@njit(**_SERIAL)
def _tally(frame, tally, fresh):
    """Add each neuron's spike of this step (``frame`` in {-1, 0, 1}) to its count, 64 neurons a vector;
    ``fresh``: the first step of a count, which sets it instead (no pass of its own to clear the counts)."""
    if fresh:
        for i in range(tally.shape[0]):
            tally[i] = frame[i] & 1
    else:
        for i in range(tally.shape[0]):
            tally[i] += frame[i] & 1


@njit(**_SERIAL, inline="always")
def _tally_ops(table, tally):
    """The synaptic operations of the counted spikes: each neuron's operations per event (``table``, a
    :func:`evsim.projections.table.tally_table`) times its spikes, summed."""
    n = table[0]
    s = np.int64(0)
    if table[1] == 16:
        ops16 = table[2:2 + (n + 3) // 4].view(np.int16)
        for i in range(n):
            s += np.int64(ops16[i]) * np.int64(tally[i])
    else:
        ops64 = table[2:2 + n]
        for i in range(n):
            s += ops64[i] * np.int64(tally[i])
    return s


@njit(**_SERIAL)
def _flush_tallies(first, last, program, tally, syn_ops, profile, tick, t0):
    """Add the operations counted from tallies (:func:`run_network`) for samples ``first .. last - 1``, each
    projection's time to its own step when profiling (returns the clock's last reading). The next step's
    :func:`_tally` starts fresh counts. Out of line: the driver's own loops stay as they were for networks
    without tallies."""
    steps, desc, pop_off, pop_size, ibuf = program.steps, program.desc, program.pop_off, program.pop_size, program.ibuf
    for s in range(steps.shape[0]):
        j = steps[s, 1]
        if steps[s, 0] == STEP_SCATTER and desc[j, D_TALLY] >= 0:
            src = desc[j, D_SRC]
            lo = pop_off[src]
            o = desc[j, D_TALLY]
            for n in range(first, last):
                syn_ops[n, j] += _tally_ops(ibuf[o:], tally[n, lo:lo + pop_size[src]])
            if profile:
                t1 = ticks()
                tick[s] += t1 - t0
                t0 = t1
    return t0


@njit(**_PARALLEL)
def run_network(timesteps, spike_input, record, profile, n_groups, chunk, program, state, inputs, counters):
    """Run a batch through all timesteps of a compiled program (see :mod:`evsim.program`).

    ``program``, ``state``, ``inputs``, ``counters``: a :class:`ProgramRecord`,
    :class:`StateRecord`, :class:`InputRecord` and :class:`CounterRecord`
    (named tuples of arrays: no positional list of look-alike arrays to swap).

    ``steps[s] = (kind, index)``: scatter projection ``index`` or fire
    population ``index``, in topological order, once per timestep. State
    arrays are (N, ...) with each population at ``pop_off[i]:pop_off[i] +
    pop_size[i]`` of the flat per-sample vector (the gaps align the next one). ``spikes`` (N, T, n_neurons) is written
    only when ``record``.

    ``profile``: add the clock ticks (:func:`evsim.clock.ticks`) each step takes, for all samples
    of a chunk, to ``ticks[g, s]`` of the thread's group ``g`` (the input events' and the drive's in
    the two last columns). The same code runs either way; the clock is read only when profiling.

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

    A narrow int32 run (:attr:`evsim.compiler.CompiledNetwork.synaptic_dtype` int16) adds each step's
    synaptic input into ``syn`` instead of ``v`` (:func:`synaptic_target`), and the population's update
    adds it to the membranes (:func:`fire_fixed`).

    Zero weights that a kernel adds (a quantised conv's rows, a dense CSR row
    stored with its zeros) are no synaptic operations. For a projection from a
    population that marks ``desc[j, D_TALLY]``, the kernel's count is not used:
    each of the source's neurons counts its spikes in ``tally`` (a byte, added
    after ``fire`` in one vector pass over the spike frame), and after the last
    step (and every ``TALLY_MAX`` steps, before a byte could overflow) the
    projection's operations are its table of non-zero synapses per neuron
    times those counts. The same numbers as a look-up per event, which cost
    the integer engine about a tenth of its conv time on the shipped ResNet-8.
    """
    steps, desc = program.steps, program.desc      # the kinds' buffers are read in _scatter_from
    pop_off, pop_size, h_off, pop_code = program.pop_off, program.pop_size, program.h_off, program.pop_code
    pop_params, pop_fixed, pop_channels, pop_channel_major, bias, pop_tally = (
        program.pop_params, program.pop_fixed, program.pop_channels, program.pop_channel_major, program.bias,
        program.pop_tally)
    v, h, drive, frame, ev_idx, ev_sign = state.v, state.h, state.drive, state.frame, state.ev_idx, state.ev_sign
    ev_cnt, in_idx, in_sign, in_cnt, tally = state.ev_cnt, state.in_idx, state.in_sign, state.in_cnt, state.tally
    syn = state.syn
    x_spikes, current, current_map = inputs.x_spikes, inputs.current, inputs.current_map
    n_pos, n_neg, syn_ops, events_in = counters.n_pos, counters.n_neg, counters.syn_ops, counters.events_in
    input_events, out_acc, spikes, tick = counters.input_events, counters.out_acc, counters.spikes, counters.ticks
    n_samples = v.shape[0]
    n_steps = steps.shape[0]
    n_pops = pop_size.shape[0]
    has_tally = False
    for i in range(n_pops):
        has_tally = has_tally or pop_tally[i] != 0
    per_group = (n_samples + n_groups - 1) // n_groups
    for g in prange(n_groups):
        g_first = g * per_group
        g_last = min(n_samples, g_first + per_group)
        for first in range(g_first, g_last, chunk):
            last = min(g_last, first + chunk)
            t0 = ticks() if profile else 0
            for n in range(first, last):
                drive[n, :] = bias
                for d in range(current_map.shape[0]):
                    lo = current_map[d, 0]
                    c0 = current_map[d, 1]
                    for i in range(current_map[d, 2]):
                        drive[n, lo + i] += current[n, c0 + i]
                v[n, :] = drive[n, :]
            if profile:
                t1 = ticks()
                tick[g, n_steps + PROFILE_DRIVE] += t1 - t0
                t0 = t1
            for t in range(timesteps):
                if spike_input:
                    for n in range(first, last):
                        in_cnt[n] = collect(x_spikes[n, t], in_idx[n], in_sign[n])
                        input_events[n] += in_cnt[n]
                    if profile:
                        t1 = ticks()
                        tick[g, n_steps + PROFILE_INPUT] += t1 - t0
                        t0 = t1
                for s in range(n_steps):
                    kind = steps[s, 0]
                    j = steps[s, 1]
                    if kind == STEP_SCATTER:
                        src = desc[j, D_SRC]
                        dst = desc[j, D_DST]
                        for n in range(first, last):
                            cnt = in_cnt[n] if src < 0 else ev_cnt[n, src]
                            # the readout's accumulator may be of another type (int64 for a fixed-point network)
                            if dst < 0:
                                ops = _scatter_from(j, src, n, program, state, out_acc[n])
                            else:
                                ops = _scatter_from(j, src, n, program, state,
                                                    synaptic_target(v, syn, n, pop_off[dst], pop_off[dst] + pop_size[dst]))
                            events_in[n, j] += cnt
                            if desc[j, D_TALLY] < 0:       # else counted from the source's tallies below
                                syn_ops[n, j] += ops
                    else:
                        lo = pop_off[j]
                        hi = lo + pop_size[j]
                        prm = pop_params[j]
                        for n in range(first, last):
                            cnt, pos, neg = fire_population(pop_code[j], prm, pop_fixed[j], v[n, lo:hi],
                                                            h[n, h_off[j]:h_off[j + 1]], drive[n, lo:hi],
                                                            syn[n, lo:hi], frame[n, :hi - lo], pop_channels[j],
                                                            pop_channel_major[j] != 0, ev_idx[n, lo:hi],
                                                            ev_sign[n, lo:hi])
                            ev_cnt[n, j] = cnt
                            n_pos[n, j] += pos
                            n_neg[n, j] += neg
                            if pop_tally[j] != 0:
                                _tally(frame[n, :hi - lo], tally[n, lo:hi], t % TALLY_MAX == 0)
                            if record:
                                to_frame(ev_idx[n, lo:hi], ev_sign[n, lo:hi], cnt, spikes[n, t, lo:hi])
                    if profile:
                        t1 = ticks()
                        tick[g, s] += t1 - t0
                        t0 = t1
                if has_tally and (t == timesteps - 1 or t % TALLY_MAX == TALLY_MAX - 1):
                    t0 = _flush_tallies(first, last, program, tally, syn_ops, profile, tick[g], t0)


# ------------------------------------------------ batch forms of the per-sample kernels (kernel tests)








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

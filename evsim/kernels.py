"""Numba kernels of the event-driven engine.

Plain arrays in, plain arrays out; no Python objects, no exceptions. Each
kernel handles a batch and splits it over threads *by sample* (``prange``
over the first axis), so no two threads ever write the same accumulator:
the scatter needs no atomics and stays race-free.

Layouts (channels-last, so the innermost loop over output channels is
contiguous and compiles to vector adds):

* events of a population: ``ev_idx[n, k]`` (int32, flat channels-last index
  ``p * C + c``), ``ev_sign[n, k]`` (int8, +1 or -1), ``ev_cnt[n]``
* membrane / accumulator of a population: ``v[n, p, c]``; flat kernels see
  the same memory as ``v[n, p * C + c]``.

The synaptic path only adds or subtracts weights, chosen by the spike's
sign; every kernel counts the synaptic operations it actually performed.
"""

from __future__ import annotations

import os

# Numba's OpenMP layer busy-waits between parallel regions by default; with
# dozens of short kernel calls per timestep that burns the other cores and,
# on a loaded machine, slows each call by milliseconds. Passive waiting keeps
# calls cheap. Set before Numba loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .neurons import CTSN_EVENT, CTSN_STATIC, LIF_BINARY

_OPTS = dict(cache=True, nogil=True, fastmath=False, parallel=True, boundscheck=False)


@njit(**_OPTS)
def scatter_conv(ev_idx, ev_sign, ev_cnt, c_in, w_in, tap_ptr, tap_y, tap_x, tap_w, tap_nnz,
                 row_map, col_map, w_out, acc, syn_ops):
    """Scatter events through a weight-shared conv kernel.

    ``tap_ptr[ci]:tap_ptr[ci+1]`` are the non-zero taps of input channel
    ``ci``: offsets ``(tap_y, tap_x)``, the weight vector over output
    channels ``tap_w[k, :]`` and its count of non-zero weights ``tap_nnz[k]``.
    ``row_map[y, ky]`` is the output row an input row ``y`` reaches through
    kernel row ``ky`` (``-1`` where it falls outside the map or between
    strides), ``col_map[x, kx]`` likewise: stride, padding and borders are
    resolved at compile time, so the hot loop does no division. Taps that
    reach nothing are skipped and not counted.
    """
    n_samples = ev_cnt.shape[0]
    c_out = tap_w.shape[1]
    for n in prange(n_samples):
        ops = 0
        for e in range(ev_cnt[n]):
            idx = ev_idx[n, e]
            p = idx // c_in
            ci = idx - p * c_in
            y = p // w_in
            x = p - y * w_in
            positive = ev_sign[n, e] > 0
            for k in range(tap_ptr[ci], tap_ptr[ci + 1]):
                oy = row_map[y, tap_y[k]]
                ox = col_map[x, tap_x[k]]
                if oy < 0 or ox < 0:
                    continue
                q = oy * w_out + ox
                if positive:
                    for co in range(c_out):
                        acc[n, q, co] += tap_w[k, co]
                else:
                    for co in range(c_out):
                        acc[n, q, co] -= tap_w[k, co]
                ops += tap_nnz[k]
        syn_ops[n] += ops


@njit(**_OPTS)
def scatter_csr(ev_idx, ev_sign, ev_cnt, indptr, indices, data, acc, syn_ops):
    """Scatter events through explicit CSR rows (row = presynaptic neuron).

    ``acc`` is flat per sample, ``(N, n_target)``. Stored zeros are not kept
    in the CSR, so each row entry is one synaptic operation.
    """
    n_samples = ev_cnt.shape[0]
    for n in prange(n_samples):
        ops = 0
        for e in range(ev_cnt[n]):
            row = ev_idx[n, e]
            lo = indptr[row]
            hi = indptr[row + 1]
            if ev_sign[n, e] > 0:
                for k in range(lo, hi):
                    acc[n, indices[k]] += data[k]
            else:
                for k in range(lo, hi):
                    acc[n, indices[k]] -= data[k]
            ops += hi - lo
        syn_ops[n] += ops


@njit(**_OPTS)
def scatter_identity(ev_idx, ev_sign, ev_cnt, scale, acc, syn_ops):
    """Residual shortcut: each event adds +-scale to the same index in the target."""
    n_samples = ev_cnt.shape[0]
    for n in prange(n_samples):
        for e in range(ev_cnt[n]):
            if ev_sign[n, e] > 0:
                acc[n, ev_idx[n, e]] += scale
            else:
                acc[n, ev_idx[n, e]] -= scale
        syn_ops[n] += ev_cnt[n]


@njit(**_OPTS)
def fire_and_advance(model, tau, v_th, k_alpha, k_beta, k_gamma, v, h, drive,
                     ev_idx, ev_sign, ev_cnt, n_pos, n_neg):
    """Threshold every neuron, emit its events, reset, and prepare the next step.

    After the synaptic input of step t has been added to ``v``, this emits
    the spikes of step t and leaves ``v`` holding the potential of step t+1
    before its synaptic input: leak (and, for CTSN, the complemental term)
    plus ``drive`` (folded biases and the direct-encoded input current).
    All arrays are flat per sample: ``v, h, drive: (N, n)``.

    Two passes per sample: a branch-free update over all neurons (one loop
    per model, so each compiles to vector code) that writes the dense spike
    frame into ``ev_sign``, then a scan that compacts it in place into the
    event queue (the write position never passes the read position).
    """
    n_samples, n_neurons = v.shape
    zero = tau - tau  # a zero of the state's own float type
    for n in prange(n_samples):
        pos = 0
        neg = 0
        if model == LIF_BINARY:
            for i in range(n_neurons):
                u = v[n, i]
                p = u >= v_th
                ev_sign[n, i] = p
                pos += p
                v[n, i] = tau * (zero if p else u) + drive[n, i]
        elif model == CTSN_STATIC or model == CTSN_EVENT:
            static = model == CTSN_STATIC
            for i in range(n_neurons):
                u = v[n, i]
                p = u >= v_th
                m = u <= -v_th
                ev_sign[n, i] = np.int8(p) - np.int8(m)
                pos += p
                neg += m
                u = tau * (zero if (p or m) else u)
                hp = h[n, i]
                if static:
                    hn = k_alpha * max(hp, zero) + k_beta * min(hp, zero) + k_gamma * u
                else:
                    hn = k_alpha * hp + k_beta * max(u, zero) + k_gamma * min(u, zero)
                h[n, i] = hn
                v[n, i] = hn + drive[n, i]
        else:
            for i in range(n_neurons):
                u = v[n, i]
                p = u >= v_th
                m = u <= -v_th
                ev_sign[n, i] = np.int8(p) - np.int8(m)
                pos += p
                neg += m
                v[n, i] = tau * (zero if (p or m) else u) + drive[n, i]
        cnt = 0
        for i in range(n_neurons):
            sg = ev_sign[n, i]
            if sg != 0:
                ev_idx[n, cnt] = i
                ev_sign[n, cnt] = sg
                cnt += 1
        ev_cnt[n] = cnt
        n_pos[n] += pos
        n_neg[n] += neg


@njit(**_OPTS)
def collect_events(values, ev_idx, ev_sign, ev_cnt):
    """Turn a ternary input frame ``values[n, i]`` in {-1, 0, 1} into events."""
    n_samples, n_neurons = values.shape
    for n in prange(n_samples):
        cnt = 0
        for i in range(n_neurons):
            s = values[n, i]
            if s != 0:
                ev_idx[n, cnt] = i
                ev_sign[n, cnt] = 1 if s > 0 else -1
                cnt += 1
        ev_cnt[n] = cnt


@njit(**_OPTS)
def events_to_dense(ev_idx, ev_sign, ev_cnt, out):
    """Write the events of one step into a dense int8 frame ``out[n, i]`` (recording)."""
    for n in prange(ev_cnt.shape[0]):
        for i in range(out.shape[1]):
            out[n, i] = 0
        for e in range(ev_cnt[n]):
            out[n, ev_idx[n, e]] = ev_sign[n, e]

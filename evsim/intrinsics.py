"""Which vector building blocks the kernels use: the LLVM-IR intrinsics or their plain-Numba twins.

``EVSIM_INTRINSICS`` chooses, read once when :mod:`evsim.kernels` is imported:

* ``ir`` (the default): :mod:`evsim.simd`, hand-written LLVM IR. Before the
  kernels use it, a small probe compiles every intrinsic and checks it
  against :mod:`evsim.simd_plain` on a few inputs; if the IR does not build
  (an llvmlite that changed its API, a target LLVM cannot lower it for) or
  disagrees, evsim warns once and runs the plain path instead of failing.
  The probe is cached like the kernels, so it costs milliseconds after the
  first run.
* ``plain``: :mod:`evsim.simd_plain` only (slower, bit for bit the same).

:data:`SELECTED` says which one is in use; :mod:`evsim.jitcache` keeps the
kernels compiled against each in a directory of their own.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from numba import njit

from . import jitcache, simd_plain

try:                                   # llvmlite's IR builder: present wherever Numba is, but its API may move
    from . import simd
except Exception as _e:                # noqa: BLE001  (any failure means: no IR path here)
    simd, _SIMD_IMPORT_ERROR = None, _e

CHOICES = ("ir", "plain")
REQUESTED = os.environ.get("EVSIM_INTRINSICS", "ir").strip().lower() or "ir"
if REQUESTED not in CHOICES:
    warnings.warn(f"EVSIM_INTRINSICS={REQUESTED!r} is not one of {', '.join(CHOICES)}; using 'ir'", stacklevel=2)
    REQUESTED = "ir"


jitcache.install()   # the probes below are cached like the kernels


def _probe_inputs():
    rng = np.random.default_rng(0)
    frame = rng.choice(np.array([-1, 0, 0, 1], np.int8), size=64)
    w = rng.standard_normal(256).astype(np.float32)
    acc = rng.standard_normal(128).astype(np.float32)
    rows_a = np.array([0, 40, 80], np.uint64)
    rows_b = np.array([0, 9, 30], np.uint64)
    offsets = np.array([0, 17, 101], np.uint64)
    signs = np.array([1, -1, 1], np.int8)
    ev_idx = np.array([3, 5, 6, 9], np.int32)
    return frame, w, acc, rows_a, rows_b, offsets, signs, ev_idx


def _exercise(drive, drive_int):
    """Run every building block through ``drive`` (and the integer runs through ``drive_int``) on fixed
    inputs; return what each produced."""
    frame, w, acc, rows_a, rows_b, offsets, signs, ev_idx = _probe_inputs()
    idx, sgn = np.zeros(48, np.int32), np.zeros(48, np.int8)
    acc1, acc2, acc3 = acc.copy(), acc.copy(), acc.copy()
    c = drive(frame, idx, sgn, acc1, w, acc2, rows_a, rows_b, offsets, signs, acc3, ev_idx)
    ints = []
    for dt in (np.int16, np.int32):        # fixed-point networks' accumulators
        wi, ai = (w * 100).astype(dt), (acc * 100).astype(dt)
        a1, a2 = ai.copy(), ai.copy()
        drive_int(a1, wi, a2, rows_a, rows_b, offsets, signs)
        ints += [a1.view(np.uint32 if dt == np.int32 else np.uint16), a2.view(np.uint32 if dt == np.int32 else np.uint16)]
    return (c, idx, sgn, acc1.view(np.uint32), acc2.view(np.uint32), acc3.view(np.uint32), *ints)


@njit(cache=True)
def _drive_plain(frame, idx, sgn, acc1, w, acc2, rows_a, rows_b, offsets, signs, acc3, ev_idx):
    c = simd_plain.queue16(frame, 0, 1, idx, sgn, 0)
    c2 = simd_plain.queue16(frame, 1, 3, idx, sgn, c & 0xFFFFFFFF)
    simd_plain.add_run(acc1, np.uint64(5), w, np.uint64(7), np.uint64(37), np.int8(-1))
    simd_plain.add_runs(acc2, rows_a, w, rows_b, np.uint64(3), offsets, signs, np.uint64(3), np.uint64(33))
    simd_plain.add_event_runs(acc3, rows_a, w, rows_b, np.uint64(2), ev_idx, signs, np.uint64(0), np.uint64(3),
                              np.uint64(3), np.uint64(10), np.uint64(21))
    return c2


@njit(cache=True)
def _drive_plain_int(acc1, w, acc2, rows_a, rows_b, offsets, signs):
    simd_plain.add_run(acc1, np.uint64(5), w, np.uint64(7), np.uint64(37), np.int8(-1))
    simd_plain.add_runs(acc2, rows_a, w, rows_b, np.uint64(3), offsets, signs, np.uint64(3), np.uint64(33))


@njit(cache=True)
def _drive_ir_int(acc1, w, acc2, rows_a, rows_b, offsets, signs):
    simd.add_run(acc1, np.uint64(5), w, np.uint64(7), np.uint64(37), np.int8(-1))
    simd.add_runs(acc2, rows_a, w, rows_b, np.uint64(3), offsets, signs, np.uint64(3), np.uint64(33))


@njit(cache=True)
def _drive_ir(frame, idx, sgn, acc1, w, acc2, rows_a, rows_b, offsets, signs, acc3, ev_idx):
    c = simd.queue16(frame, 0, 1, idx, sgn, 0)
    c2 = simd.queue16(frame, 1, 3, idx, sgn, c & 0xFFFFFFFF)
    simd.add_run(acc1, np.uint64(5), w, np.uint64(7), np.uint64(37), np.int8(-1))
    simd.add_runs(acc2, rows_a, w, rows_b, np.uint64(3), offsets, signs, np.uint64(3), np.uint64(33))
    simd.add_event_runs(acc3, rows_a, w, rows_b, np.uint64(2), ev_idx, signs, np.uint64(0), np.uint64(3),
                        np.uint64(3), np.uint64(10), np.uint64(21))
    return c2


def _same(got, want) -> bool:
    n = int(want[0]) & 0xFFFFFFFF
    return bool(got[0] == want[0] and np.array_equal(got[1][:n], want[1][:n]) and np.array_equal(got[2][:n], want[2][:n])
                and all(np.array_equal(a, b) for a, b in zip(got[3:], want[3:])))


def _select() -> str:
    if REQUESTED == "plain":
        return "plain"
    try:
        if simd is None:
            raise _SIMD_IMPORT_ERROR
        got = _exercise(_drive_ir, _drive_ir_int)
    except Exception as e:            # the IR does not build here: run the plain loops instead
        first = str(e).splitlines()[0] if str(e) else ""
        warnings.warn(f"evsim: the LLVM-IR vector code does not build here ({type(e).__name__}: {first}); "
                      f"using the plain-Numba path (EVSIM_INTRINSICS=plain silences this)", RuntimeWarning,
                      stacklevel=3)
        return "plain"
    if not _same(got, _exercise(_drive_plain, _drive_plain_int)):
        warnings.warn("evsim: the LLVM-IR vector code disagrees with the plain loops on this machine; "
                      "using the plain-Numba path", RuntimeWarning, stacklevel=3)
        return "plain"
    return "ir"


SELECTED = _select()
jitcache.set_variant(SELECTED)

from .tuning import LANES, ROWS  # noqa: E402

from numba.core import types  # noqa: E402
from numba.extending import overload  # noqa: E402

if SELECTED == "ir":
    from .simd import add_event_runs as _ir_add_event_runs, add_run as _ir_add_run, add_runs as _ir_add_runs
    from .simd import queue16
else:
    from .simd_plain import queue16

# The synaptic runs: the IR (when selected) for float32/float64 (real networks: it flips the weight's sign
# bit) and int16/int32 (fixed-point networks, evsim.fixedpoint: (w ^ m) - m with m the sign's mask); any
# other type takes the plain loops. Resolved when a kernel is compiled: no run-time test.


def add_run(acc, a0, w, b0, n, sign):
    """``acc[a0 + j] += w[b0 + j]`` for ``j < n`` (``-=`` when ``sign`` is -1); see :mod:`evsim.simd`.
    (The Python bodies here run only under NUMBA_DISABLE_JIT: the plain loops.)"""
    return simd_plain.add_run(acc, a0, w, b0, n, sign)


def add_runs(acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n):
    """The runs of a group of events; see :func:`evsim.simd.add_runs`."""
    return simd_plain.add_runs(acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n)


def add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n):
    """:func:`add_runs` for a stretch of a queue; see :func:`evsim.simd.add_event_runs`."""
    return simd_plain.add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n)


def _ir_for(acc, w) -> bool:
    """The IR for the accumulator types it is written for (float32/64, int16/32); refuse (when compiling) anything but 1-D arrays, whose flat offsets
    both versions take: a 2-D array indexed by a flat offset would be read by rows, out of bounds."""
    from numba.core.errors import TypingError
    if not (isinstance(acc, types.Array) and acc.ndim == 1 and isinstance(w, types.Array) and w.ndim == 1):
        raise TypingError("evsim.intrinsics: the synaptic runs take 1-D accumulator and weight arrays")
    return SELECTED == "ir" and acc.dtype in simd.RUN_DTYPES and w.dtype == acc.dtype


@overload(add_run, inline="always")
def _add_run(acc, a0, w, b0, n, sign):
    if _ir_for(acc, w):
        return lambda acc, a0, w, b0, n, sign: _ir_add_run(acc, a0, w, b0, n, sign)
    return lambda acc, a0, w, b0, n, sign: simd_plain.add_run(acc, a0, w, b0, n, sign)


@overload(add_runs, inline="always")
def _add_runs(acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n):
    if _ir_for(acc, w):
        return lambda acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n: _ir_add_runs(
            acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n)
    return lambda acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n: simd_plain.add_runs(
        acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n)


@overload(add_event_runs, inline="always")
def _add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n):
    if _ir_for(acc, w):
        return lambda acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n: \
            _ir_add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n)
    return lambda acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n: \
        simd_plain.add_event_runs(acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n)


__all__ = ["LANES", "ROWS", "SELECTED", "add_event_runs", "add_run", "add_runs", "queue16"]

"""The hand-written vector building blocks of evsim.simd against plain NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from evsim.simd import add_event_runs, add_run, add_runs

# float32/64 for real networks, int16/32 for fixed-point ones (evsim.fixedpoint)
DTYPES = [np.float32, np.float64, np.int16, np.int32]


def _values(rng, size, dtype):
    """Random weights or accumulators: normal floats; integers of up to 10 bits (sums stay far from wrapping)."""
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-1000, 1001, size=size).astype(dtype)
    return rng.standard_normal(size).astype(dtype)


@njit
def _add_run(acc, a0, w, b0, n, positive):
    add_run(acc, np.uint64(a0), w, np.uint64(b0), np.uint64(n), np.int8(1 if positive else -1))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(0, 100), st.integers(0, 40), st.integers(0, 40),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_add_run_adds_or_subtracts_exactly_one_run(dtype, n, a0, b0, positive, seed):
    """Every length (whole 64-byte chunks and any tail), offset and sign; nothing outside the run changes."""
    rng = np.random.default_rng(seed)
    acc = _values(rng, a0 + n + 20, dtype)
    w = _values(rng, b0 + n + 20, dtype)
    expect = acc.copy()
    if positive:
        expect[a0:a0 + n] += w[b0:b0 + n]
    else:
        expect[a0:a0 + n] -= w[b0:b0 + n]
    w_before = w.copy()
    _add_run(acc, a0, w, b0, n, positive)
    np.testing.assert_array_equal(acc, expect)       # bit for bit: one IEEE (or integer) add per element
    np.testing.assert_array_equal(w, w_before)


def test_add_run_sees_a_two_dimensional_array_flat():
    acc = np.zeros((3, 16), np.float32)
    w = np.arange(32, dtype=np.float32).reshape(2, 16)
    _add_run(acc, 16, w, 8, 20, True)
    expect = np.zeros(48, np.float32)
    expect[16:36] = np.arange(8, 28)
    np.testing.assert_array_equal(acc.ravel(), expect)


@njit
def _add_runs(acc, a_rows, w, b_rows, offsets, signs, count, n):
    add_runs(acc, a_rows, w, b_rows, np.uint64(len(a_rows)), offsets, signs, np.uint64(count), np.uint64(n))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DTYPES), st.sampled_from([4, 8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 192]) | st.integers(0, 200),
       st.integers(1, 3), st.integers(0, 6), st.integers(0, 20), st.integers(0, 2**32 - 1))
def test_add_runs_equals_one_run_per_event_and_row_in_order(dtype, n, n_rows, count, a0, seed):
    """A group of events on 1-3 output runs (kernel rows), against the same runs added one by one, in order,
    in NumPy.

    Lengths that are whole vectors (plain loads), that end half way into a vector (a plain half-width
    access: 4, 12, ... float64; 8, 24, 40 float32 and int32; 16, 48, 80, 112 int16), that end elsewhere
    inside a block (masked), of one or several blocks of 6 vectors and a rest of 1-5. The runs of a group
    lie a few elements apart, so a store past a run's end would show."""
    rng = np.random.default_rng(seed)
    w = _values(rng, 800, dtype)
    b_rows = rng.integers(0, 100, size=n_rows).astype(np.uint64)
    offsets = rng.integers(0, 800 - 100 - n + 1, size=count + 2).astype(np.uint64)   # spare entries are ignored
    signs = rng.choice(np.array([-1, 1], np.int8), size=count + 2)
    gap = int(rng.integers(0, 5))
    a_rows = np.array([a0 + q * (n + gap) for q in range(n_rows)], np.uint64)[rng.permutation(n_rows)]
    acc = _values(rng, a0 + n_rows * (n + gap) + 20, dtype)
    expect = acc.copy()
    for k in range(count):
        for q in range(n_rows):
            a, o = int(a_rows[q]), int(b_rows[q]) + int(offsets[k])
            if signs[k] > 0:
                expect[a:a + n] += w[o:o + n]
            else:
                expect[a:a + n] -= w[o:o + n]
    _add_runs(acc, a_rows, w, b_rows, offsets, signs, count, n)
    np.testing.assert_array_equal(acc, expect)


@njit
def _add_event_runs(acc, a_rows, w, b_rows, ev_idx, ev_sign, e0, count, first, stride, n):
    add_event_runs(acc, a_rows, w, b_rows, np.uint64(len(a_rows)), ev_idx, ev_sign, np.uint64(e0), np.uint64(count),
                   np.uint64(first), np.uint64(stride), np.uint64(n))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(1, 3), st.integers(1, 40), st.integers(0, 8),
       st.integers(0, 2**32 - 1))
def test_add_event_runs_reads_the_queue_in_place(dtype, n_rows, n, count, seed):
    """Events e0 .. e0 + count - 1 of a queue: weight offset (idx - first) * stride, sign from the queue."""
    rng = np.random.default_rng(seed)
    c_in, stride, first = 9, 7 * n, int(rng.integers(0, 1000)) * 9
    e0 = int(rng.integers(0, 4))
    ev_idx = np.concatenate([rng.integers(0, 10**6, e0), first + np.sort(rng.choice(c_in, count, replace=False)),
                             rng.integers(0, 10**6, 3)]).astype(np.int32)
    ev_sign = rng.choice(np.array([-1, 1], np.int8), size=ev_idx.size)
    w = _values(rng, c_in * stride + 50, dtype)
    b_rows = rng.integers(0, 50, size=n_rows).astype(np.uint64)
    a_rows = (np.arange(n_rows) * (n + 3)).astype(np.uint64)
    acc = _values(rng, n_rows * (n + 3) + 5, dtype)
    expect = acc.copy()
    for k in range(e0, e0 + count):
        for q in range(n_rows):
            a, o = int(a_rows[q]), int(b_rows[q]) + (int(ev_idx[k]) - first) * stride
            expect[a:a + n] += w[o:o + n] if ev_sign[k] > 0 else -w[o:o + n]
    _add_event_runs(acc, a_rows, w, b_rows, ev_idx, ev_sign, e0, count, first, stride, n)
    np.testing.assert_array_equal(acc, expect)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
@pytest.mark.parametrize("block_len", [1, 2, 3, 6])
def test_add_runs_is_exact_at_every_block_length(monkeypatch, block_len, dtype):
    """The block length follows the target's registers (6 with AVX-512, 2 below): every length gives
    the same result, including runs that end in a partial block."""
    import evsim.simd as simd

    monkeypatch.setattr(simd, "_target_block", lambda: block_len)

    @njit(cache=False)
    def fresh(acc, a_rows, w, b_rows, offsets, signs, count, n):      # compiled now, with the patched length
        simd.add_runs(acc, a_rows, w, b_rows, np.uint64(len(a_rows)), offsets, signs, np.uint64(count), np.uint64(n))

    rng = np.random.default_rng(block_len)
    for n in (5, 16, 48, 100, 192, 200):
        w = _values(rng, 900, dtype)
        offsets = rng.integers(0, 600, size=4).astype(np.uint64)
        signs = rng.choice(np.array([-1, 1], np.int8), size=4)
        a_rows = np.array([0, n + 1, 2 * n + 2], np.uint64)
        b_rows = np.array([0, 7, 40], np.uint64)
        acc = _values(rng, 3 * n + 10, dtype)
        expect = acc.copy()
        for k in range(4):
            for q in range(3):
                a, o = int(a_rows[q]), int(b_rows[q]) + int(offsets[k])
                expect[a:a + n] += w[o:o + n] if signs[k] > 0 else -w[o:o + n]
        fresh(acc, a_rows, w, b_rows, offsets, signs, 4, n)
        np.testing.assert_array_equal(acc, expect, err_msg=f"n={n}")


def test_block_length_follows_the_target_features(monkeypatch):
    from numba.core import config

    import evsim.simd as simd

    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma")
    assert simd._target_block() == simd.BLOCK_NARROW
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+avx512f,+avx512bw")
    assert simd._target_block() == simd.BLOCK_WIDE


@pytest.mark.parametrize("compress", ["bytes", "dwords", None])
def test_queue16_with_and_without_the_compress_instructions(monkeypatch, compress):
    """Every code path of queue16 (AVX-512 compress of dwords and bytes; of dwords only, the values widened, for
    AVX-512 cores without VBMI2; branch-free stores elsewhere) queues exactly the spikes, in order, contiguous
    and strided, and counts the positive ones."""
    import evsim.simd as simd

    need = {"bytes": ("avx512f", "avx512vl", "avx512vbmi2"), "dwords": ("avx512f", "avx512vl"), None: ()}[compress]
    if not simd._target_has(*need):
        # the compress is an AVX-512 intrinsic (vpcompressd/b into a register): LLVM cannot lower it for code
        # generated for another CPU (NUMBA_CPU_NAME=haswell aborted here), and evsim never selects it there
        pytest.skip(f"the compress instructions need a target with {', '.join(need)}")
    if compress == "dwords":        # as on Skylake-SP / Cascade Lake: AVX-512 F/VL, no VBMI2
        monkeypatch.setattr(simd, "_target_has", lambda *names: "avx512vbmi2" not in names)
    else:
        monkeypatch.setattr(simd, "_target_has", lambda *names: compress is not None)

    @njit(cache=False)
    def scan(frame, stride, ev_idx, ev_sign):
        cnt = 0
        pos = 0
        for c in range(stride):
            for b in range(frame.shape[0] // (16 * stride)):
                r = simd.queue16(frame, b * 16 * stride + c, stride, ev_idx, ev_sign, cnt)
                cnt = r & 0xFFFFFFFF
                pos += r >> 32
        return cnt, pos

    rng = np.random.default_rng(3)
    for stride in (1, 3):
        for density in (0.0, 0.1, 0.7, 1.0):
            frame = (rng.choice(np.array([-1, 1], np.int8), 16 * stride * 5)
                     * (rng.random(16 * stride * 5) < density)).astype(np.int8)
            ev_idx = np.full(frame.size, -7, np.int32)
            ev_sign = np.zeros(frame.size, np.int8)
            cnt, pos = scan(frame, stride, ev_idx, ev_sign)
            order = np.concatenate([np.arange(c, frame.size, stride) for c in range(stride)])
            expect = order[frame[order] != 0]
            assert cnt == expect.size and pos == int((frame > 0).sum())
            np.testing.assert_array_equal(ev_idx[:cnt], expect)
            np.testing.assert_array_equal(ev_sign[:cnt], frame[expect])


def test_integer_runs_negate_by_twos_complement_without_a_multiply():
    """A -1 spike subtracts the weight exactly for every int16 value that can be negated (the quantiser keeps
    -2**15 out: its accumulator bound would need 17 bits), including the largest and the smallest."""
    w = np.array([0, 1, -1, 2**15 - 1, -(2**15 - 1), 12345, -12345] * 5, np.int16)
    acc = np.zeros(w.size, np.int16)
    _add_run(acc, 0, w, 0, w.size, False)
    np.testing.assert_array_equal(acc, -w)
    _add_run(acc, 0, w, 0, w.size, True)
    np.testing.assert_array_equal(acc, np.zeros_like(w))


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 200), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_integer_runs_are_exact_modulo_the_word_with_their_deferred_negation(dtype, n_rows, n, count, seed):
    """The integer runs add ``w ^ m`` per event and the ``- m`` of all the block's -1 events once at the end:
    with weights over the whole range and up to 64 events (partial sums far outside the word), every
    accumulator still equals the exact sum wrapped to the word, the same as one add or subtract per event
    (the quantiser's bound keeps real sums inside the word, where wrapped is exact)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    # room for the largest run: offset below 64 past event k's own n, plus a row's start below 3
    w = rng.integers(info.min + 1, info.max + 1, size=count * n + 64 + 2).astype(dtype)
    offsets = rng.integers(0, 64, size=count).astype(np.uint64) + (np.arange(count) * n).astype(np.uint64)
    signs = rng.choice(np.array([-1, 1], np.int8), size=count)
    b_rows = rng.integers(0, 3, size=n_rows).astype(np.uint64)
    a_rows = (np.arange(n_rows) * (n + 5)).astype(np.uint64)
    acc = rng.integers(info.min, info.max + 1, size=n_rows * (n + 5) + 7).astype(dtype)
    exact = acc.astype(np.int64)
    for q in range(n_rows):
        a = int(a_rows[q])
        for k in range(count):
            o = int(b_rows[q]) + int(offsets[k])
            exact[a:a + n] += int(signs[k]) * w[o:o + n].astype(np.int64)
    _add_runs(acc, a_rows, w, b_rows, offsets, signs, count, n)
    np.testing.assert_array_equal(acc, exact.astype(dtype))      # astype wraps modulo 2**bits

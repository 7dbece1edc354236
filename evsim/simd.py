"""Vector building blocks for the kernels, written as Numba intrinsics (LLVM IR).

Two jobs where the code LLVM derives from a plain loop is measurably worse
than what the hardware can do:

* Queueing a population's spikes is a *compress*: keep the non-zero entries
  of a frame, in order. Written as a scalar loop it either branches on every
  neuron (mispredicted on random spikes) or does three stores per neuron; its
  cost then depends on the density and, at firing rates of 10-20 %, exceeds
  the dense neuron update several times. LLVM's ``masked.compressstore``
  does 16 neurons in a few instructions (:func:`queue16`).
* The synaptic runs of the conv scatter are 48-400 contiguous additions
  (a kernel row's taps over the output channels). Left to the loop
  vectoriser, each run pays a run-time overlap test and scalar tails
  (:func:`add_run`); and the events of one input position, which all reach
  the same runs, would each load and store the same accumulators.
  :func:`add_runs` holds those accumulators in registers over the whole
  group of events, in blocks of whole 64-byte vectors with masked ends
  (a run that ends half way into a vector, such as 16 output channels in
  int16, ends with a plain half-width access instead: with masked loads
  and stores there, the first int16 16-channel conv of the sparse
  ResNet-8 took 88 or 134 us a sample depending on the process, and with
  the plain half-width access 75-79 us in each of eight processes).

Both use AVX-512 where the CPU has it (``vpcompressd``/``vpcompressb``,
masked loads and stores); LLVM lowers the same IR to other instructions on
CPUs without it, correct everywhere but only measured here on AVX-512.
The choice is made per CPU when the kernels are compiled (``_target_has``,
``_target_block``): the queue compresses bytes and dwords where VBMI2 exists
(Ice Lake and later, Zen 4), dwords only (the spike values widened) on
AVX-512 cores without it (Skylake-SP, Cascade Lake), and stores lane by
lane without AVX-512; the runs hold 6 chunks per row in 32 vector registers
and 2 in 16.

Numba's own staleness check of the kernel cache looks at ``evsim/kernels.py``
alone; :mod:`evsim.jitcache` keys the cache directory on this file's content
too, so an edit here compiles afresh. :mod:`evsim.simd_plain` holds the same
operations as plain loops (the fallback, bit for bit the same), and
:mod:`evsim.intrinsics` chooses between the two.
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .tuning import BLOCK_NARROW, BLOCK_WIDE, LANES, ROWS

_i1, _i8, _i16, _i32, _i64 = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
_V_I1, _V_I8, _V_I32 = (ir.VectorType(t, LANES) for t in (_i1, _i8, _i32))


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_V_I32, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V_I32, ir.Undefined), ir.Constant(_V_I32, None))


def _popcount16(builder, mask):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i16, [_i16]), "llvm.ctpop.i16")
    return builder.zext(builder.call(fn, [builder.bitcast(mask, _i16)]), _i64)


def _compress(builder, values, mask):
    """The lanes of ``values`` selected by ``mask`` moved to the front of a register (AVX-512 only:
    ``vpcompressd`` / ``vpcompressb`` with a register destination); the other lanes are zero."""
    width = values.type.element.width
    fnty = ir.FunctionType(values.type, [values.type, values.type, _V_I1])
    name = f"llvm.x86.avx512.mask.compress.v{LANES}i{width}"
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name),
                        [values, ir.Constant(values.type, None), mask])


def _store_lanes(builder, values, ptr):
    """All lanes of ``values`` stored from ``ptr`` on, unaligned."""
    builder.store(values, builder.bitcast(ptr, values.type.as_pointer()), align=1)


@intrinsic
def queue16(typingctx, frame, start, stride, ev_idx, ev_sign, cnt):
    """Queue the non-zero entries among ``frame[start + j * stride]``, ``j < 16``, in order.

    Appends their indices to ``ev_idx[cnt:]`` (int32) and their values to
    ``ev_sign[cnt:]`` (int8); ``frame`` is int8. Returns ``cnt + n_events +
    (n_positive << 32)``: one result, so the caller needs no second pass for
    the count of +1 spikes. ``stride == 1`` loads the 16 entries as one
    vector; any other stride gathers them one by one (still without a branch).
    No bounds checks: the caller keeps the 16 entries read inside ``frame``.
    From ``cnt`` on, ``n_events`` entries are written with AVX-512 and 16
    without it (then the entries past ``n_events`` are scratch). ``cnt``
    never exceeds the number of entries already scanned, so queues as long
    as the frame always have room.
    """
    arrays = (frame, types.int8), (ev_idx, types.int32), (ev_sign, types.int8)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dt for a, dt in arrays):
        return None         # typing fails: the codegen below indexes raw, contiguous data
    sig = types.int64(frame, types.int64, types.int64, ev_idx, ev_sign, types.int64)

    def codegen(context, builder, signature, args):
        fa, st, sd, ia, sa, c = args
        fty, _, _, ity, sty, _ = signature.args
        f = context.make_array(fty)(context, builder, value=fa)
        idx_arr = context.make_array(ity)(context, builder, value=ia)
        sign_arr = context.make_array(sty)(context, builder, value=sa)
        iota = ir.Constant(_V_I32, list(range(LANES)))
        start32, stride32 = builder.trunc(st, _i32), builder.trunc(sd, _i32)
        indices = builder.add(_splat(builder, start32), builder.mul(_splat(builder, stride32), iota))
        # the 16 frame entries: one vector load when contiguous, else 16 scalar loads
        vals = cgutils.alloca_once(builder, _V_I8)
        is_unit = builder.icmp_signed("==", sd, ir.Constant(_i64, 1))
        with builder.if_else(is_unit) as (unit, strided):
            with unit:
                p = builder.bitcast(builder.gep(f.data, [st]), _V_I8.as_pointer())
                builder.store(builder.load(p, align=1), vals)
            with strided:
                v = ir.Constant(_V_I8, None)
                for j in range(LANES):
                    at = builder.add(st, builder.mul(sd, ir.Constant(_i64, j)))
                    v = builder.insert_element(v, builder.load(builder.gep(f.data, [at])), ir.Constant(_i32, j))
                builder.store(v, vals)
        values = builder.load(vals)
        zero = ir.Constant(_V_I8, None)
        spike = builder.icmp_signed("!=", values, zero)
        positive = builder.icmp_signed(">", values, zero)
        if _target_has("avx512f", "avx512vl", "avx512vbmi2"):      # vpcompressd / vpcompressb
            # compress in registers, then store all 16 lanes at the queue's end (the lanes past the
            # events are scratch, as in the path below). LLVM's masked.compressstore would emit
            # vpcompressd with a memory destination, which Zen 4 runs in microcode. Measured on a
            # 2-vCPU Zen 4 (EPYC), float32, batches of 64, end to end: shipped ResNet-8 1.4x and the
            # sparse one 1.6x the samples/s of the memory form, bit for bit the same results (A/B
            # of two source trees, 3 interleaved rounds). Not measured on an Intel AVX-512 core here.
            _store_lanes(builder, _compress(builder, indices, spike), builder.gep(idx_arr.data, [c]))
            _store_lanes(builder, _compress(builder, values, spike), builder.gep(sign_arr.data, [c]))
        elif _target_has("avx512f", "avx512vl"):
            # AVX-512 without VBMI2 (Skylake-SP, Cascade Lake, Cooper Lake): no byte compress, but the dword one
            # is there; the 16 spike values, widened to dwords, take it too and are narrowed back for the store
            # (vpmovsxbd, vpcompressd, vpmovdb), instead of the per-lane stores below
            _store_lanes(builder, _compress(builder, indices, spike), builder.gep(idx_arr.data, [c]))
            wide = _compress(builder, builder.sext(values, _V_I32), spike)
            _store_lanes(builder, builder.trunc(wide, _V_I8), builder.gep(sign_arr.data, [c]))
        else:
            # Without those instructions LLVM expands a compress into a branch per lane, which
            # mispredicts on random spikes (measured with code for AVX2: 2.5x the time of the
            # neuron update). Instead: write every lane at the queue's end, advance on a spike.
            at = c
            for j in range(LANES):
                builder.store(builder.extract_element(indices, ir.Constant(_i32, j)), builder.gep(idx_arr.data, [at]))
                builder.store(builder.extract_element(values, ir.Constant(_i32, j)), builder.gep(sign_arr.data, [at]))
                at = builder.add(at, builder.zext(builder.extract_element(spike, ir.Constant(_i32, j)), _i64))
        n = _popcount16(builder, spike)
        n_pos = _popcount16(builder, positive)
        return builder.add(builder.add(c, n), builder.shl(n_pos, ir.Constant(_i64, 32)))

    return sig, codegen


HALF = object()    # as a chunk's mask: the chunk holds the first half of a vector (_Runs.load, _Runs.store)


class _Runs:
    """LLVM pieces shared by the synaptic-run intrinsics: 64-byte vectors of the weights' type (float32/64 for
    real networks, int16/int32 for fixed-point ones: 16, 8 or 32 lanes)."""

    def __init__(self, context, builder, dtype):
        self.b = builder
        self.is_int = isinstance(dtype, types.Integer)
        self.size = dtype.bitwidth // 8
        self.lanes = 64 // self.size
        self.vt = ir.VectorType(context.get_data_type(dtype), self.lanes)
        self.half_vt = ir.VectorType(context.get_data_type(dtype), self.lanes // 2)
        self.vptr = self.vt.as_pointer()
        self.int_ty = ir.IntType(self.size * 8)
        self.int_vt = ir.VectorType(self.int_ty, self.lanes)
        mask_ty = ir.VectorType(_i1, self.lanes)
        suffix = f"v{self.lanes}{'i' if self.is_int else 'f'}{self.size * 8}.p0"
        mod = builder.module
        self._mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(self.vt, [self.vptr, _i32, mask_ty, self.vt]), f"llvm.masked.load.{suffix}")
        self._mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [self.vt, self.vptr, _i32, mask_ty]), f"llvm.masked.store.{suffix}")
        self.align = ir.Constant(_i32, self.size)

    def lane_mask(self, count):
        """The first ``count`` lanes (an i64, at most ``lanes``) as a vector of i1."""
        b = self.b
        bits = b.sub(b.shl(ir.Constant(_i64, 1), count), ir.Constant(_i64, 1))
        return b.bitcast(b.trunc(bits, ir.IntType(self.lanes)), ir.VectorType(_i1, self.lanes))

    def ptr(self, base, offset):
        return self.b.bitcast(self.b.gep(base, [offset]), self.vptr)

    def load(self, p, mask=None):
        """A whole vector; with a ``mask``, only its masked lanes, the others read as zero; with
        :data:`HALF`, its first half by a plain load of half the width, the rest zero."""
        b = self.b
        if mask is None:
            return b.load(p, align=self.size)
        if mask is HALF:
            half = b.load(b.bitcast(p, self.half_vt.as_pointer()), align=self.size)
            return b.shuffle_vector(half, ir.Constant(self.half_vt, None),
                                    ir.Constant(ir.VectorType(_i32, self.lanes), list(range(self.lanes))))
        return b.call(self._mload, [p, self.align, mask, ir.Constant(self.vt, None)])

    def store(self, value, p, mask=None):
        """:meth:`load`'s counterpart: the whole vector, its masked lanes, or (:data:`HALF`) its first half."""
        b = self.b
        if mask is None:
            b.store(value, p, align=self.size)
        elif mask is HALF:
            half = b.shuffle_vector(value, ir.Constant(self.vt, ir.Undefined),
                                    ir.Constant(ir.VectorType(_i32, self.lanes // 2), list(range(self.lanes // 2))))
            b.store(half, b.bitcast(p, self.half_vt.as_pointer()), align=self.size)
        else:
            b.call(self._mstore, [value, p, self.align, mask])

    def flip(self, sign):
        """What the event's sign does to every lane of the weights, as a vector: for floats the sign
        bit set for a -1 spike and clear for +1; for integers all ones for -1 and zero for +1.

        The event's sign flips the weights' sign (exact: ``a - w`` is ``a + (-w)`` in IEEE
        arithmetic, and ``(w ^ m) - m`` is ``-w`` in two's complement when ``m`` is all ones)
        instead of choosing between an add loop and a subtract loop, whose branch mispredicts on
        half the events. The flip is taken from the sign's bits, not from a comparison, so that
        LLVM does not turn it back into a branch; the synaptic path stays additions and
        subtractions, with no multiply.
        """
        return self.splat(self.flip_bits(sign))

    def flip_bits(self, sign):
        """:meth:`flip` for one lane, as a scalar of the lanes' integer type."""
        b = self.b
        if self.is_int:      # arithmetic shift of the sign: -1 -> all ones, +1 -> 0
            return b.ashr(b.sext(sign, self.int_ty), ir.Constant(self.int_ty, self.size * 8 - 1))
        return b.shl(b.and_(b.zext(sign, self.int_ty), ir.Constant(self.int_ty, 0x80)),
                     ir.Constant(self.int_ty, self.size * 8 - 8))

    def splat(self, scalar):
        """A scalar of the lanes' integer type in every lane."""
        b = self.b
        v = b.insert_element(ir.Constant(self.int_vt, ir.Undefined), scalar, ir.Constant(_i32, 0))
        return b.shuffle_vector(v, ir.Constant(self.int_vt, ir.Undefined),
                                ir.Constant(ir.VectorType(_i32, self.lanes), None))

    def signed_add(self, a, w, flip):
        b = self.b
        if self.is_int:      # integer accumulators never wrap: the quantiser bounds them (accumulator_bits)
            return b.add(a, b.sub(b.xor(w, flip), flip))
        return b.fadd(a, b.bitcast(b.xor(b.bitcast(w, self.int_vt), flip), self.vt))

    def chunks(self, n_val, body):
        """``body(offset, mask)`` for every whole vector of a run of ``n_val`` elements (mask None),
        then once for its tail with the tail's lane mask."""
        b = self.b
        shift = ir.Constant(_i64, self.lanes.bit_length() - 1)
        n_full = b.lshr(n_val, shift)
        with cgutils.for_range(b, n_full) as loop:
            body(b.mul(loop.index, ir.Constant(_i64, self.lanes)), None)
        tail = b.and_(n_val, ir.Constant(_i64, self.lanes - 1))
        with b.if_then(b.icmp_unsigned("!=", tail, ir.Constant(_i64, 0))):
            body(b.shl(n_full, shift), self.lane_mask(tail))


def _target_has(*names) -> bool:
    """Whether the CPU that Numba compiles for (``NUMBA_CPU_FEATURES`` or the host's) has all these features."""
    from numba.core import config

    features = config.CPU_FEATURES
    if features is None:
        import llvmlite.binding as ll
        host = ll.get_host_cpu_features()
        return all(host.get(n, False) for n in names)
    have = set(features.split(","))
    return all("+" + n in have for n in names)


def _target_block() -> int:
    """Chunks per block for the CPU that Numba compiles for (``NUMBA_CPU_FEATURES`` or the host's).

    ROWS x BLOCK accumulators must stay in registers: a block that does not
    fit spills to the stack on every event. Measured with code generated for
    AVX2 (``NUMBA_CPU_NAME=haswell``) on this machine: blocks of 6 spilled
    and ran the 16-channel scatter at a third of the AVX-512 speed.
    """
    return BLOCK_WIDE if _target_has("avx512f") else BLOCK_NARROW


RUN_DTYPES = (types.float32, types.float64, types.int16, types.int32)


def _run_arrays(*arrays):
    """C-contiguous arrays of one type the runs are written for: float32/64 (real networks), int16/32
    (fixed-point networks, :mod:`evsim.fixedpoint`)."""
    return (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
            and len({a.dtype for a in arrays}) == 1 and arrays[0].dtype in RUN_DTYPES)


@intrinsic
def add_run(typingctx, acc, a0, w, b0, n, sign):
    """``acc[a0 + j] += w[b0 + j]`` for ``j < n`` (``-=`` when ``sign`` is -1): one synaptic run.

    The vector loop is written out (chunks of 64 bytes, then one masked
    chunk for the last ``n % lanes`` elements) instead of left to LLVM's
    loop vectoriser, which guards a loop of unknown length with a run-time
    overlap test between ``acc`` and ``w`` and finishes it in 4-wide and
    scalar steps: at the 48-192 additions of a 3x3 run over 16-64 output
    channels those guards cost as much as the additions. ``acc`` and ``w``
    are distinct C-contiguous arrays of one dtype (float32/64, int16/32), seen flat; offsets
    are unsigned and unchecked (the caller keeps ``[a0, a0 + n)`` and
    ``[b0, b0 + n)`` inside them). Each element is updated by one IEEE add
    or subtract, exactly as the scalar loop (integers: wrapping adds, which
    the quantiser's accumulator bound keeps from wrapping). ``sign`` is the event's int8
    sign, +1 or -1.
    """
    if not _run_arrays(acc, w):
        return None
    sig = types.void(acc, types.uint64, w, types.uint64, types.uint64, types.int8)

    def codegen(context, builder, signature, args):
        aa, a_off, wa, w_off, n_val, sign = args
        aty, _, wty, _, _, _ = signature.args
        r = _Runs(context, builder, aty.dtype)
        pa = builder.gep(context.make_array(aty)(context, builder, value=aa).data, [a_off])
        pw = builder.gep(context.make_array(wty)(context, builder, value=wa).data, [w_off])
        flip = r.flip(sign)

        def body(at, mask):
            ap = r.ptr(pa, at)
            r.store(r.signed_add(r.load(ap, mask), r.load(r.ptr(pw, at), mask), flip), ap, mask)

        r.chunks(n_val, body)
        return context.get_dummy_value()

    return sig, codegen


def _emit_runs(context, builder, aty, aa, arty, ara, wty, wa, brty, bra, n_rows, count, n_val, event):
    """The code of :func:`add_runs` and :func:`add_event_runs`; ``event(k)`` gives event k's weight offset
    (i64) and sign (i8)."""
    r = _Runs(context, builder, aty.dtype)
    acc_data = context.make_array(aty)(context, builder, value=aa).data
    w_data = context.make_array(wty)(context, builder, value=wa).data
    a_row_data = context.make_array(arty)(context, builder, value=ara).data
    b_row_data = context.make_array(brty)(context, builder, value=bra).data
    # Blocks of chunks along the run, each chunk with its lane mask: blocks of block_len (see
    # _target_block) while the run has that many chunks left, then one of the 1..block_len-1 that remain (a
    # kernel row of 3 taps over 16 channels is 3 chunks; at stride 2 or at a border, 1, 2 or
    # 4). The accumulators of a block, in every row, stay in registers while every event of
    # the group adds to them; the chains of additions in flight hide each other's latency,
    # and an event's offset and sign are read once for all its rows.
    lanes = ir.Constant(_i64, r.lanes)
    n_chunks = builder.lshr(builder.add(n_val, ir.Constant(_i64, r.lanes - 1)),
                            ir.Constant(_i64, r.lanes.bit_length() - 1))
    block_len = _target_block()
    n_big = builder.udiv(n_chunks, ir.Constant(_i64, block_len))
    rest = builder.sub(n_chunks, builder.mul(n_big, ir.Constant(_i64, block_len)))
    after_big = builder.mul(n_big, ir.Constant(_i64, block_len * r.lanes))
    held = [[cgutils.alloca_once(builder, r.vt) for _ in range(block_len)] for _ in range(ROWS)]  # -> registers
    negatives = cgutils.alloca_once(builder, r.int_ty) if r.is_int else None

    def block_with(pas, pws, base, size, tail):
        """One block of ``size`` chunks; ``tail``: None (all whole), "half" (whole but the last, which holds
        half a vector: a plain load and store of half the width) or "masked" (each chunk with its lane
        mask)."""
        ats = [builder.add(base, ir.Constant(_i64, i * r.lanes)) for i in range(size)]
        masks = [None] * size
        if tail == "masked":
            for i, at in enumerate(ats):
                left = builder.sub(n_val, builder.select(builder.icmp_unsigned("<", at, n_val), at, n_val))
                masks[i] = r.lane_mask(builder.select(builder.icmp_unsigned("<", left, lanes), left, lanes))
        elif tail == "half":
            masks[-1] = HALF
        for row, pa in enumerate(pas):
            for i in range(size):
                builder.store(r.load(r.ptr(pa, ats[i]), masks[i]), held[row][i])
        if r.is_int:         # the -1 events of the block, counted (see below)
            builder.store(ir.Constant(r.int_ty, 0), negatives)
        with cgutils.for_range(builder, count) as ev:
            off, sign = event(ev.index)
            if r.is_int:
                # -w is (w ^ m) - m with m all ones: the "- m" is the same +1 in every lane of every row,
                # so it is counted once per event here and added to the block once, after the loop: each
                # vector step is then one xor and one add, as for floats, instead of xor, subtract, add.
                # Exact: integer adds wrap modulo 2^bits, so only the final sums must fit, and the
                # quantiser's accumulator bound guarantees that they do.
                bits = r.flip_bits(sign)
                builder.store(builder.sub(builder.load(negatives), bits), negatives)
                flip = r.splat(bits)
            else:
                flip = r.flip(sign)
            for row, pw in enumerate(pws):
                pk = builder.gep(pw, [off])
                for i in range(size):
                    w_chunk = r.load(r.ptr(pk, ats[i]), masks[i])
                    held_v = builder.load(held[row][i])
                    if r.is_int:
                        total = builder.add(held_v, builder.xor(w_chunk, flip))
                    else:
                        total = r.signed_add(held_v, w_chunk, flip)
                    builder.store(total, held[row][i])
        correction = r.splat(builder.load(negatives)) if r.is_int else None
        for row, pa in enumerate(pas):
            for i in range(size):
                total = builder.load(held[row][i])
                if correction is not None:
                    total = builder.add(total, correction)
                r.store(total, r.ptr(pa, ats[i]), masks[i])

    def block(pas, pws, base, size):
        # whole vectors (the usual case: C_out a multiple of 16) take plain loads, which
        # the CPU fuses with the sign flip; a block whose last chunk holds exactly half a vector (16
        # output channels in int16, 8 in float32) takes a plain half-width access for it; only other
        # blocks that reach past the run are masked
        end = builder.add(base, ir.Constant(_i64, size * r.lanes))
        whole = builder.icmp_unsigned("<=", end, n_val)
        half = builder.icmp_unsigned("==", builder.sub(end, n_val), ir.Constant(_i64, r.lanes // 2))
        with builder.if_else(whole) as (plain, partial):
            with plain:
                block_with(pas, pws, base, size, None)
            with partial:
                with builder.if_else(half) as (halved, masked):
                    with halved:
                        block_with(pas, pws, base, size, "half")
                    with masked:
                        block_with(pas, pws, base, size, "masked")

    def rows(nr):
        pas = [builder.gep(acc_data, [builder.load(builder.gep(a_row_data, [ir.Constant(_i64, q)]))])
               for q in range(nr)]
        pws = [builder.gep(w_data, [builder.load(builder.gep(b_row_data, [ir.Constant(_i64, q)]))])
               for q in range(nr)]
        with cgutils.for_range(builder, n_big) as blk:
            block(pas, pws, builder.mul(blk.index, ir.Constant(_i64, block_len * r.lanes)), block_len)
        for size in range(1, block_len):
            with builder.if_then(builder.icmp_unsigned("==", rest, ir.Constant(_i64, size))):
                block(pas, pws, after_big, size)

    for nr in range(1, ROWS + 1):
        with builder.if_then(builder.icmp_unsigned("==", n_rows, ir.Constant(_i64, nr))):
            rows(nr)


def _u64_arrays(*arrays):
    return all(isinstance(a, types.Array) and a.dtype == types.uint64 and a.layout == "C" for a in arrays)


def _int8_array(a):
    return isinstance(a, types.Array) and a.dtype == types.int8 and a.layout == "C"


@intrinsic
def add_runs(typingctx, acc, a_rows, w, b_rows, n_rows, w_offsets, signs, count, n):
    """The runs of ``count`` events that land on the same accumulators, added in one pass.

    ``acc[a_rows[r] + j] += sign[k] * w[b_rows[r] + w_offsets[k] + j]`` for
    ``j < n``, ``r < n_rows`` (at most ROWS) and ``k < count``, in order of
    ``k``. The events of one input position (its channels, which a
    population queued in memory order emits together) reach the same output
    runs, one per kernel row, each event through its own weights. Each
    64-byte chunk of ``acc`` is loaded once, takes every event's weights in
    a register, and is stored once: the accumulator traffic and the
    store-to-load chains between consecutive events go away, and only the
    weights stream from the cache. Every element still sees the same IEEE
    additions in the same order as one :func:`add_run` per event and row, so
    the result is bit for bit the same. (Integers: each -1 event's ``+1`` of
    the two's-complement negation is added once per block, after its events;
    integer sums are exact modulo the word whatever their order, so the result
    is again the same, bit for bit.)
    """
    if not (_run_arrays(acc, w) and _u64_arrays(a_rows, b_rows, w_offsets) and _int8_array(signs)):
        return None
    sig = types.void(acc, a_rows, w, b_rows, types.uint64, w_offsets, signs, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        aa, ara, wa, bra, n_rows, oa, sa, count, n_val = args
        aty, arty, wty, brty, _, oty, sty, _, _ = signature.args
        offsets = context.make_array(oty)(context, builder, value=oa).data
        sign_data = context.make_array(sty)(context, builder, value=sa).data

        def event(k):
            return builder.load(builder.gep(offsets, [k])), builder.load(builder.gep(sign_data, [k]))

        _emit_runs(context, builder, aty, aa, arty, ara, wty, wa, brty, bra, n_rows, count, n_val, event)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_event_runs(typingctx, acc, a_rows, w, b_rows, n_rows, ev_idx, ev_sign, e0, count, first, stride, n):
    """:func:`add_runs` for the events ``e0 .. e0 + count - 1`` of a queue, read in place.

    Event k's weights start at ``(ev_idx[e0 + k] - first) * stride`` (past
    ``b_rows[r]``) and its sign is ``ev_sign[e0 + k]``: for a conv, ``first``
    is the group's first channel-0 index and ``stride`` one input channel's
    weights. Reading the queue directly spares the kernel a pass that copied
    each event's offset and sign out first (measured on a 16 -> 16 channel
    layer at 75 % firing: that pass took 30 % of the time; without it the
    layer runs 27 % faster).
    """
    if not (_run_arrays(acc, w) and _u64_arrays(a_rows, b_rows) and _int8_array(ev_sign)
            and isinstance(ev_idx, types.Array) and ev_idx.dtype == types.int32 and ev_idx.layout == "C"):
        return None
    sig = types.void(acc, a_rows, w, b_rows, types.uint64, ev_idx, ev_sign, types.uint64, types.uint64,
                     types.uint64, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        aa, ara, wa, bra, n_rows, ia, sa, e0, count, first, stride, n_val = args
        aty, arty, wty, brty, _, ity, sty = signature.args[:7]
        idx_data = builder.gep(context.make_array(ity)(context, builder, value=ia).data, [e0])
        sign_data = builder.gep(context.make_array(sty)(context, builder, value=sa).data, [e0])

        def event(k):
            idx = builder.zext(builder.load(builder.gep(idx_data, [k])), _i64)
            return builder.mul(builder.sub(idx, first), stride), builder.load(builder.gep(sign_data, [k]))

        _emit_runs(context, builder, aty, aa, arty, ara, wty, wa, brty, bra, n_rows, count, n_val, event)
        return context.get_dummy_value()

    return sig, codegen

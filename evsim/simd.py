"""Vector building blocks for the kernels, written as Numba intrinsics (LLVM IR).

Queueing a population's spikes is a *compress*: keep the non-zero entries of
a frame, in order. Written as a scalar loop it either branches on every
neuron (mispredicted on random spikes) or does three stores per neuron; its
cost then depends on the density and, at firing rates of 10-20 %, exceeds the
dense neuron update several times. LLVM's ``masked.compressstore`` does 16
neurons in a few instructions (``vpcompressd``/``vpcompressb`` with
AVX-512 VBMI2; LLVM expands it into scalar code on CPUs without them, so it
is correct everywhere and fast where the hardware has it).
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16

_i1, _i8, _i16, _i32, _i64 = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
_V_I1, _V_I8, _V_I32 = (ir.VectorType(t, LANES) for t in (_i1, _i8, _i32))


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_V_I32, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V_I32, ir.Undefined), ir.Constant(_V_I32, None))


def _popcount16(builder, mask):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i16, [_i16]), "llvm.ctpop.i16")
    return builder.zext(builder.call(fn, [builder.bitcast(mask, _i16)]), _i64)


def _compress_store(builder, values, ptr, mask):
    """Store the lanes of ``values`` selected by ``mask`` one after another from ``ptr`` on."""
    fnty = ir.FunctionType(ir.VoidType(), [values.type, ptr.type, _V_I1])
    name = f"llvm.masked.compressstore.v{LANES}i{values.type.element.width}"
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), [values, ptr, mask])


@intrinsic
def queue16(typingctx, frame, start, stride, ev_idx, ev_sign, cnt):
    """Queue the non-zero entries among ``frame[start + j * stride]``, ``j < 16``, in order.

    Appends their indices to ``ev_idx[cnt:]`` (int32) and their values to
    ``ev_sign[cnt:]`` (int8); ``frame`` is int8. Returns ``cnt + n_events +
    (n_positive << 32)``: one result, so the caller needs no second pass for
    the count of +1 spikes. ``stride == 1`` loads the 16 entries as one
    vector; any other stride gathers them one by one (still without a branch).
    No bounds checks: the caller keeps the 16 entries read inside ``frame``;
    only ``n_events`` entries are written from ``cnt`` on, so queues as long
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
        _compress_store(builder, indices, builder.gep(idx_arr.data, [c]), spike)
        _compress_store(builder, values, builder.gep(sign_arr.data, [c]), spike)
        n = _popcount16(builder, spike)
        n_pos = _popcount16(builder, positive)
        return builder.add(builder.add(c, n), builder.shl(n_pos, ir.Constant(_i64, 32)))

    return sig, codegen


@intrinsic
def add_run(typingctx, acc, a0, w, b0, n, sign):
    """``acc[a0 + j] += w[b0 + j]`` for ``j < n`` (``-=`` when ``sign`` is -1): one synaptic run.

    The vector loop is written out (chunks of 64 bytes, then one masked
    chunk for the last ``n % lanes`` elements) instead of left to LLVM's
    loop vectoriser, which guards a loop of unknown length with a run-time
    overlap test between ``acc`` and ``w`` and finishes it in 4-wide and
    scalar steps: at the 48-192 additions of a 3x3 run over 16-64 output
    channels those guards cost as much as the additions. ``acc`` and ``w``
    are distinct C-contiguous float arrays of one dtype, seen flat; offsets
    are unsigned and unchecked (the caller keeps ``[a0, a0 + n)`` and
    ``[b0, b0 + n)`` inside them). Each element is updated by one IEEE add
    or subtract, exactly as the scalar loop.
    ``sign`` is the event's int8 sign, +1 or -1.
    """
    ok = (isinstance(acc, types.Array) and isinstance(w, types.Array) and acc.layout == "C" and w.layout == "C"
          and acc.dtype == w.dtype and acc.dtype in (types.float32, types.float64))
    if not ok:
        return None
    sig = types.void(acc, types.uint64, w, types.uint64, types.uint64, types.int8)

    def codegen(context, builder, signature, args):
        aa, a_off, wa, w_off, n_val, sign = args
        aty, _, wty, _, _, _ = signature.args
        acc_arr = context.make_array(aty)(context, builder, value=aa)
        w_arr = context.make_array(wty)(context, builder, value=wa)
        ft = context.get_data_type(aty.dtype)
        size = 4 if aty.dtype == types.float32 else 8
        lanes = 64 // size
        vt = ir.VectorType(ft, lanes)
        pa = builder.gep(acc_arr.data, [a_off])
        pw = builder.gep(w_arr.data, [w_off])
        n_full = builder.lshr(n_val, ir.Constant(_i64, lanes.bit_length() - 1))
        done = builder.shl(n_full, ir.Constant(_i64, lanes.bit_length() - 1))

        tail = builder.and_(n_val, ir.Constant(_i64, lanes - 1))
        mask_int = ir.IntType(lanes)
        mask = builder.bitcast(builder.trunc(builder.sub(builder.shl(ir.Constant(_i64, 1), tail), ir.Constant(_i64, 1)),
                                             mask_int), ir.VectorType(_i1, lanes))
        vptr = vt.as_pointer()
        suffix = f"v{lanes}f{size * 8}.p0"
        load_ty = ir.FunctionType(vt, [vptr, _i32, mask.type, vt])
        masked_load = cgutils.get_or_insert_function(builder.module, load_ty, f"llvm.masked.load.{suffix}")
        store_ty = ir.FunctionType(ir.VoidType(), [vt, vptr, _i32, mask.type])
        masked_store = cgutils.get_or_insert_function(builder.module, store_ty, f"llvm.masked.store.{suffix}")
        align = ir.Constant(_i32, size)

        def loops(op):
            with cgutils.for_range(builder, n_full) as loop:
                at = builder.mul(loop.index, ir.Constant(_i64, lanes))
                ap = builder.bitcast(builder.gep(pa, [at]), vptr)
                wp = builder.bitcast(builder.gep(pw, [at]), vptr)
                builder.store(op(builder.load(ap, align=size), builder.load(wp, align=size)), ap, align=size)
            # the last n % lanes elements: one masked vector step instead of a scalar loop (whose
            # set-up, vectorised again by LLVM, cost more than the additions at 16-64 channels)
            with builder.if_then(builder.icmp_unsigned("!=", tail, ir.Constant(_i64, 0))):
                ap = builder.bitcast(builder.gep(pa, [done]), vptr)
                wp = builder.bitcast(builder.gep(pw, [done]), vptr)
                zero = ir.Constant(vt, None)
                a = builder.call(masked_load, [ap, align, mask, zero])
                b = builder.call(masked_load, [wp, align, mask, zero])
                builder.call(masked_store, [op(a, b), ap, align, mask])

        # The event's sign flips the weights' sign bit (exact: a - w is a + (-w) in IEEE
        # arithmetic) instead of choosing between an add loop and a subtract loop, whose
        # branch mispredicts on half the events. The flip is taken from the sign's bits, not
        # from a comparison, so that LLVM does not turn it back into a branch.
        int_ty = ir.IntType(size * 8)
        int_vt = ir.VectorType(int_ty, lanes)
        flip = builder.shl(builder.and_(builder.zext(sign, int_ty), ir.Constant(int_ty, 0x80)),
                           ir.Constant(int_ty, size * 8 - 8))
        flip_v = builder.insert_element(ir.Constant(int_vt, ir.Undefined), flip, ir.Constant(_i32, 0))
        flip_v = builder.shuffle_vector(flip_v, ir.Constant(int_vt, ir.Undefined),
                                        ir.Constant(ir.VectorType(_i32, lanes), None))

        def signed_add(a, w):
            return builder.fadd(a, builder.bitcast(builder.xor(builder.bitcast(w, int_vt), flip_v), vt))

        loops(signed_add)
        return context.get_dummy_value()

    return sig, codegen

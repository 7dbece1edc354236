"""A clock the Numba driver can read: the CPU's time-stamp counter, for the profiling run.

``evsim run --profile`` (and the benchmark's per-kernel timings) time every step of the fused
driver *inside* the driver, with the same code path as an ordinary run: nopython code cannot call
Python's ``time.perf_counter``, so :func:`ticks` reads the processor's constant-rate counter
(``rdtsc`` through LLVM's ``readcyclecounter`` on x86-64, Intel and AMD alike; the generic timer
``cntvct_el0`` on 64-bit Arm, readable from user space on Linux). Only ratios of ticks are used: the
engine scales them to the wall time it measures around the call, so the counter's frequency never
matters. On any other CPU :data:`AVAILABLE` is False and a profile says so instead of making
numbers up.
"""

from __future__ import annotations

import platform

import llvmlite.ir as ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_MACHINE = platform.machine().lower()
ARCH = ("x86_64" if _MACHINE in ("x86_64", "amd64") else "aarch64" if _MACHINE in ("aarch64", "arm64")
        else "other")
AVAILABLE = ARCH != "other"
_i64 = ir.IntType(64)


@intrinsic
def ticks(typingctx):
    """The CPU's time-stamp counter (int64); 0 where :data:`AVAILABLE` is False."""
    def codegen(context, builder, signature, args):
        if ARCH == "x86_64":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i64, []), "llvm.readcyclecounter")
            return builder.call(fn, [])
        if ARCH == "aarch64":
            asm = ir.InlineAsm(ir.FunctionType(_i64, []), "mrs $0, cntvct_el0", "=r", side_effect=True)
            return builder.call(asm, [])
        return ir.Constant(_i64, 0)
    return types.int64(), codegen

"""Flatten a compiled network into the plain arrays the fused Numba driver reads.

:func:`evsim.kernels.run_network` takes no Python objects, so the network
becomes a small table program: one row of integers per projection (its
kernel, source, target, geometry and offsets into shared buffers), the
weights of all projections in one float buffer, their index arrays in one
int64 buffer (int32 for CSR columns), and the schedule of one timestep as
``(kind, index)`` pairs in topological order. The compiled projections'
arrays then become views of those buffers, so the weights are held once.
The column layout of the projection table is defined next to the driver,
in :mod:`evsim.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernels as K
from . import memory
from .compiler import CompiledNetwork
from .neurons import neuron_model
from .projections import EVENT_KINDS
from .projections import table as T
from .tuning import ALIGN_BYTES, SAMPLE_STATE_CACHE_BYTES


@dataclass
class Program:
    steps: np.ndarray          # (S, 2) int64: (STEP_SCATTER, projection) or (STEP_FIRE, population)
    desc: np.ndarray           # (J, DESC_WIDTH) int64, one row per projection (direct ones unused)
    scale: np.ndarray          # (J,) identity scale per projection
    ibuf: np.ndarray           # int64 index data of all projections
    i32buf: np.ndarray         # int32 CSR column indices
    fbuf: np.ndarray           # weights of all projections, in the engine dtype
    pop_off: np.ndarray        # (P+1,) offsets of the populations in the flat state of a sample (64-byte aligned)
    pop_size: np.ndarray       # (P,) neurons of each population: it ends at pop_off[i] + pop_size[i]
    h_off: np.ndarray          # (P+1,) offsets in the complement state (CTSN populations only)
    pop_code: np.ndarray
    pop_params: np.ndarray     # (P, 5); int64 for a fixed-point network
    pop_fixed: np.ndarray      # (P, 5) int64: (shift, membrane min, membrane max, leak mult, leak shift), fixed point
    pop_channels: np.ndarray
    pop_channel_major: np.ndarray   # (P,) 1: emit events channel by channel
    state_bytes: int = 0       # state touched per sample and timestep (membranes, drive, events, frames)
    bias: np.ndarray = None    # (n_total,) every population's folded biases at its offset: a sample's drive before input
    workspaces: dict = field(default_factory=dict)   # batch size -> state arrays reused between batches
    pop_tally: np.ndarray = None   # (P,) int64 1: the driver counts this population's spikes per neuron (D_TALLY)

    @property
    def record(self):
        """The arrays the driver reads, as one named record (:class:`evsim.kernels.ProgramRecord`)."""
        from .kernels import ProgramRecord
        return ProgramRecord(self.steps, self.desc, self.scale, self.ibuf, self.i32buf, self.fbuf, self.pop_off,
                             self.pop_size, self.h_off, self.pop_code, self.pop_params, self.pop_fixed, self.pop_channels,
                             self.pop_channel_major, self.bias, self.pop_tally)

    def samples_per_pass(self, n_samples: int) -> int:
        """How many samples a thread takes through the timesteps together (the driver's ``chunk``).

        One at a time when a sample's state fits in a core's cache, so it stays
        there from step to step; otherwise all of the thread's samples, layer by
        layer, so each layer's weights are read once for all of them. Measured
        with the driver (float32, /tmp-free script in the commit message): the
        shipped ResNet-8 (0.75 MiB of state per sample) runs ~5 % faster one
        sample at a time; ResNet-19 width 128 (19 MiB per sample) 3-17 % faster
        with its 16 or 32 samples layer by layer.
        """
        return 1 if self.state_bytes <= SAMPLE_STATE_CACHE_BYTES else max(1, n_samples)




def _aligned(n: int, dtype) -> int:
    """``n`` elements rounded up to a whole number of ALIGN_BYTES.

    Every array the kernels stream through (a projection's weights, a
    population's state) starts on a cache line: a 64-byte vector that straddles
    two lines costs two accesses, and which arrays straddled varied from one
    process to the next (measured: the conv kernel at 16 or at 25 G additions/s).
    """
    step = max(1, ALIGN_BYTES // np.dtype(dtype).itemsize)
    return -(-int(n) // step) * step


class _Buffer:
    """Arrays of one dtype laid end to end; :meth:`finish` makes the sources views into it."""

    def __init__(self, dtype):
        self.parts, self.size, self.dtype = [], 0, np.dtype(dtype)
        self.owners = []            # (dict, key, offset, shape) of each array added

    def add(self, owner: dict, key: str) -> int:
        a = np.ascontiguousarray(owner[key], dtype=self.dtype)
        off = _aligned(self.size, self.dtype)
        if off > self.size:
            self.parts.append(np.zeros(off - self.size, dtype=self.dtype))
        self.parts.append(a.reshape(-1))
        self.owners.append((owner, key, off, a.shape))
        self.size = off + a.size
        return off

    def finish(self, place=np.array) -> np.ndarray:
        """The joined buffer (``place`` chooses its memory); each array added is replaced, in its
        owner, by a view of the buffer, so the compiled network and the program share one copy."""
        buf = place(np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype))
        for owner, key, off, shape in self.owners:
            owner[key] = buf[off:off + int(np.prod(shape))].reshape(shape)
        return buf


def build_program(net: CompiledNetwork) -> Program:
    """The program of ``net`` (``net.program``), built once: :func:`evsim.compile_network` calls this,
    so the compiled network it returns is the one object the engine runs."""
    if net.program is None:
        net.program = _build(net)
    return net.program


def _build(net: CompiledNetwork) -> Program:
    dt = net.dtype
    sdt = net.synaptic_dtype           # event-driven weights (int16 in a narrow int32 run)
    J = len(net.projections)
    desc = np.full((J, T.DESC_WIDTH), -1, dtype=np.int64)
    scale = np.zeros(J, dtype=sdt)
    ib, i32, fb = _Buffer(np.int64), _Buffer(np.int32), _Buffer(sdt)
    for j, cp in enumerate(net.projections):
        d = desc[j]
        d[T.D_SRC], d[T.D_DST] = cp.source, cp.target
        g = cp.geometry
        if g is not None:
            d[T.D_C_IN], d[T.D_H_IN], d[T.D_W_IN] = g.c_in, g.h_in, g.w_in
            d[T.D_C_OUT], d[T.D_H_OUT], d[T.D_W_OUT] = g.c_out, g.h_out, g.w_out
            d[T.D_KH], d[T.D_KW] = g.kernel
        kind = EVENT_KINDS.get(cp.mode)
        if kind is not None:         # "dense" (direct input) projections run before the driver (engine)
            d[T.D_MODE] = kind.CODE
            kind.pack(cp, j, desc, scale, ib, i32, fb)
    steps = []
    for i in range(len(net.populations)):
        steps += [(K.STEP_SCATTER, j) for j in net.incoming[i]]
        steps.append((K.STEP_FIRE, i))
    steps += [(K.STEP_SCATTER, j) for j in net.readout_incoming]
    pops = net.populations
    sizes = [p.size for p in pops]
    hsizes = [p.size if neuron_model(p.model).has_complement else 0 for p in pops]
    # every population starts on a cache line, in every state array (float, int32, int8): pad to
    # a multiple of 64 elements (16 for the float and int32 arrays would do; 64 suits all dtypes)
    pop_off = np.zeros(len(pops) + 1, dtype=np.int64)
    for i, n in enumerate(sizes):
        pop_off[i + 1] = pop_off[i] + _aligned(n, np.int8)
    pop_tally = np.zeros(len(pops), dtype=np.int64)
    for j in range(J):
        if desc[j, T.D_TALLY] >= 0:
            pop_tally[desc[j, T.D_SRC]] = 1       # the kinds set D_TALLY only for a population's events
    bias = np.zeros(int(pop_off[-1]), dtype=dt)
    for i, pop in enumerate(pops):
        bias[pop_off[i]:pop_off[i] + pop.size] = pop.bias
    return Program(
        bias=bias, pop_tally=pop_tally,
        steps=np.array(steps, dtype=np.int64).reshape(-1, 2),
        desc=desc, scale=scale, ibuf=ib.finish(memory.copy), i32buf=i32.finish(memory.copy), fbuf=fb.finish(memory.copy),
        pop_off=pop_off,
        pop_size=np.array(sizes, dtype=np.int64),
        h_off=np.concatenate([[0], np.cumsum(hsizes)]).astype(np.int64),
        pop_code=np.array([p.code for p in pops], dtype=np.int64),
        pop_params=np.array([p.params for p in pops], dtype=np.int64 if dt.kind == "i" else dt).reshape(len(pops), 5),
        pop_fixed=np.array([p.fixed for p in pops], dtype=np.int64).reshape(len(pops), 5),
        pop_channels=np.array([p.channels for p in pops], dtype=np.int64),
        pop_channel_major=np.array([p.channel_major for p in pops], dtype=np.int64),
        # membrane, drive (float), event index (int32), event sign and frame (int8), complement, and a
        # step's synaptic input where it is summed apart (a narrow int32 run)
        state_bytes=int(sum(sizes) * (2 * dt.itemsize + 4 + 2 + (sdt.itemsize if sdt != dt else 0))
                        + sum(hsizes) * dt.itemsize),
    )

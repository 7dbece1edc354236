"""The event-driven engine: runs a compiled network over T timesteps.

A thin Python layer that owns the state arrays and hands a whole batch to
the Numba driver (:func:`evsim.kernels.run_network`, reading the
table program of :mod:`evsim.program`); all per-event work happens in the
kernels. For each timestep and each population, in topological order:

1. the events its sources emitted this step are scattered through every
   incoming projection (``+= w`` for a +1 spike, ``-= w`` for a -1 spike);
2. ``fire`` thresholds the membrane, queues the new events, resets, and
   prepares the next step (leak, complemental term, drive).

Projections from a direct-encoded input are evaluated once per sample
(dense multiply-accumulates, counted once) and enter the membrane every
step as part of the drive, with the folded biases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba
import numpy as np

from . import kernels as K
from . import memory
from .compiler import CompiledNetwork
from .layout import from_channels_last, to_channels_last
from .projections import dense
from .errors import InputError
from .program import build_program


@dataclass
class Counters:
    """Counts measured from the events actually processed, per sample (arrays of length N)."""

    spikes_pos: dict[str, np.ndarray] = field(default_factory=dict)   # per population
    spikes_neg: dict[str, np.ndarray] = field(default_factory=dict)
    events_in: dict[str, np.ndarray] = field(default_factory=dict)    # per projection
    synaptic_ops: dict[str, np.ndarray] = field(default_factory=dict)  # AC: additions/subtractions
    macs: dict[str, np.ndarray] = field(default_factory=dict)          # MAC (direct input, once): all positions
    macs_nonzero: dict[str, np.ndarray] = field(default_factory=dict)  # the same, non-zero input values only
    input_events: np.ndarray | None = None


@dataclass
class SimulationResult:
    outputs: np.ndarray                  # (N, n_outputs): readout averaged over T, plus bias
    counters: Counters
    timesteps: int
    spikes: dict[str, np.ndarray] | None = None   # recorded: name -> (T, N, *shape) int8
    profile: Profile | None = None                # with simulate(profile=True): where the time went

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs.argmax(1)


@dataclass
class Profile:
    """Where a batch's time went, measured inside the driver (:func:`simulate` with ``profile=True``).

    ``parts``: (label, what, seconds) per step of the driver's program, in program order (what:
    the projection's kernel, or "fire <model>"), then the input events, the drive and the
    direct-input current. Driver steps are wall seconds of the driver's call shared out in
    proportion to the clock ticks each step took on all threads (summed over threads, so with
    several threads they add up to the driver's wall time, not to thread-seconds)."""

    n_samples: int
    threads: int
    total_s: float                     # the whole simulate() call
    driver_s: float                    # the run_network call
    parts: list[tuple[str, str, float]]
    available: bool = True             # False: no CPU clock here (evsim.clock.AVAILABLE); driver parts are 0

    @classmethod
    def of(cls, net, prog, ticks, n_samples, threads, driver_s, direct_s, total_s) -> "Profile":
        from .clock import AVAILABLE
        per_step = ticks.sum(axis=0).astype(np.float64)
        whole = per_step.sum()
        share = per_step / whole if whole > 0 else np.zeros_like(per_step)
        parts = []
        for s, (kind, j) in enumerate(prog.steps):
            if kind == K.STEP_SCATTER:
                cp = net.projections[j]
                parts.append((cp.name, cp.mode, driver_s * share[s]))
            else:
                p = net.populations[j]
                parts.append((p.name, f"fire {p.model}", driver_s * share[s]))
        S = len(prog.steps)
        parts.append(("input", "input events", driver_s * share[S + K.PROFILE_INPUT]))
        parts.append(("drive", "biases + direct current into the membranes", driver_s * share[S + K.PROFILE_DRIVE]))
        parts.append(("direct input", "dense MACs of the direct-encoded input (outside the driver)", direct_s))
        return cls(n_samples, threads, total_s, driver_s, [(a, b, float(c)) for a, b, c in parts],
                   bool(AVAILABLE and whole > 0))

    def to_dict(self) -> dict:
        return {"samples": self.n_samples, "threads": self.threads, "total_s": self.total_s,
                "driver_s": self.driver_s, "clock_available": self.available,
                "parts": [{"name": label, "kernel": what, "seconds": sec} for label, what, sec in self.parts],
                "by_kernel": self.by_kind()}

    def by_kind(self) -> dict[str, float]:
        """Seconds per kernel (projection kind, neuron model, input, drive), summed over layers."""
        out: dict[str, float] = {}
        for _, what, sec in self.parts:
            out[what] = out.get(what, 0.0) + sec
        return out


def check_input(net: CompiledNetwork, x: np.ndarray) -> np.ndarray:
    """Validate a batch against the network and return it in the engine dtype.

    direct: (N, *input_shape) or one sample (*input_shape), real, finite,
    inside the network's input_range when it records one.
    spikes: (N, T, *input_shape) or (T, *input_shape), values in {-1, 0, 1}.
    """
    g = net.network
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                                 or x.dtype == np.bool_):
        raise InputError(f"input dtype {x.dtype} is not numeric")
    shape = tuple(g.input_shape)
    lead = (g.timesteps,) if g.encoding == "spikes" else ()
    if x.shape == lead + shape:
        x = x[None]
    if x.shape[1:] != lead + shape:
        want = "(N, T, " if lead else "(N, "
        raise InputError(f"input shape {x.shape} does not fit the network: expected {want}"
                         f"{', '.join(map(str, shape))}) or one sample {lead + shape}"
                         + (f" with T={g.timesteps}" if lead else ""))
    if x.shape[0] == 0:
        raise InputError("input holds no samples")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise InputError("input contains NaN or inf")
    if g.encoding == "spikes":
        if not np.all((x == 0) | (x == 1) | (x == -1)):
            raise InputError("spike-encoded input must hold only -1, 0 and 1")
        return np.ascontiguousarray(x.astype(np.int8))
    if g.input_range is not None:
        lo, hi = g.input_range
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo or xmax > hi:
            raise InputError(f"input values span [{xmin:g}, {xmax:g}] but the network expects [{lo:g}, {hi:g}]"
                             f" (was the data scaled as in training?)")
    if g.fixed_point is not None:        # the chip's input: integer levels (evsim.fixedpoint)
        return np.ascontiguousarray(g.fixed_point.quantise_input(x))
    return np.ascontiguousarray(x.astype(net.dtype))


def _direct_current(net: CompiledNetwork, pi: int, x: np.ndarray) -> np.ndarray:
    """Dense current of a direct-input projection, (N, n_target) channels-last. Fixed point: the exact
    int64 sum of input levels times weight levels, rescaled to the target's units by (mult, shift)."""
    cp = net.projections[pi]
    if cp.rescale is not None:       # the levels in the accumulator's type (int32 where it holds every sum)
        x = x.astype(cp.arrays["weight_t"].dtype, copy=False)
    cur = dense.current(cp, x, net.network.input_shape)
    if cp.rescale is not None:
        mult, shift = cp.rescale
        out = np.empty(cur.shape, dtype=np.int64 if cp.target < 0 else net.dtype)
        K.rescale_current(cur, np.int64(mult), np.int64(shift), out)
        return out
    return cur


def output_dtype(net: CompiledNetwork):
    """The type of a run's outputs: the readout accumulates T steps, in int64 for a fixed-point network (never
    saturates), else in the run's float type."""
    return np.int64 if net.network.fixed_point is not None else net.dtype


def readout_dtype(net: CompiledNetwork):
    """The type the driver's readout accumulates the T steps of event-driven input in
    (:func:`evsim.fixedpoint.readout_accumulator`): the run's, unless a fixed-point network's readout could
    outgrow it (then int32 or int64)."""
    from .fixedpoint import readout_accumulator
    return readout_accumulator(net.network, net.dtype)


def _direct_currents(net: CompiledNetwork, x: np.ndarray) -> tuple[np.ndarray, list]:
    """The direct-input currents of a batch: the readout's share, summed (N, n_outputs), and
    ``(target population, current (N, size))`` for the others, in projection order."""
    direct_out = np.zeros((x.shape[0], net.n_outputs), dtype=output_dtype(net))
    to_populations = []
    for pi in net.direct:
        cp = net.projections[pi]
        cur = _direct_current(net, pi, x)
        if cp.target < 0:
            direct_out += cur
        else:
            to_populations.append((cp.target, cur))
    return direct_out, to_populations


def _result(net, x, out_acc, direct_out, n_pos, n_neg, events_in, syn_ops, input_events, spikes):
    T = net.network.timesteps
    N = x.shape[0]
    nonzero = None
    dt = net.dtype
    if net.network.fixed_point is not None:     # integer outputs: the readout's sum over T, in its units
        outputs = out_acc.astype(np.int64) + np.int64(T) * (net.readout_bias + direct_out)
    else:
        outputs = out_acc / dt.type(T) + net.readout_bias + direct_out
    counters = Counters(input_events=input_events)
    for i, p in enumerate(net.populations):
        counters.spikes_pos[p.name] = n_pos[i]
        counters.spikes_neg[p.name] = n_neg[i]
    for pi, cp in enumerate(net.projections):
        if cp.part_of is not None:      # a pooled conv's edge correction: counted as part of it (COUNTING.md)
            continue
        counters.events_in[cp.name] = events_in[pi]
        counters.synaptic_ops[cp.name] = syn_ops[pi]
        counters.macs[cp.name] = np.full(N, cp.direct_macs, dtype=np.int64)
        if cp.input_reach is None:
            counters.macs_nonzero[cp.name] = np.zeros(N, dtype=np.int64)
        else:
            if nonzero is None:
                nonzero = (x.reshape(N, -1) != 0).astype(np.int64)
            counters.macs_nonzero[cp.name] = nonzero @ cp.input_reach
    if spikes is not None:
        spikes = {p.name: from_channels_last(s, p.shape) for p, s in zip(net.populations, spikes)}
    return SimulationResult(outputs=outputs, counters=counters, timesteps=T, spikes=spikes)


def _take_workspace(prog, N, n_total, max_pop, dt, sdt):
    """The large state arrays of a batch of N: reused from the previous batch of the same size.

    A batch touches tens of MB of state; allocating it afresh every batch
    costs page faults (and, with huge pages, zeroing 2 MiB pages) on every
    call. Every array here but the synaptic input (zeroed once, below) is
    fully written before it is read. A workspace in use is taken out of the
    cache, so concurrent calls on the same network each get their own.
    """
    cache = prog.workspaces
    ws = cache.pop(N, None)
    if ws is None:
        ws = (memory.empty((N, n_total), dt), memory.empty((N, n_total), dt), memory.empty((N, max_pop), np.int8),
              memory.empty((N, n_total), np.int32), memory.empty((N, n_total), np.int8),
              memory.empty((N, n_total if prog.pop_tally.any() else 0), np.uint8),
              # a step's synaptic input, where it is summed apart from the membranes (a narrow int32 run):
              # zeroed once here; the driver leaves it zero at the end of every run (kernels.StateRecord)
              memory.empty((N, n_total if sdt != dt else 0), sdt))
        ws[-1][...] = 0
    return ws


def _give_back_workspace(prog, N, ws):
    prog.workspaces.clear()          # keep one batch size only: memory stays bounded
    prog.workspaces[N] = ws


def simulate(net: CompiledNetwork, x: np.ndarray, record: bool = False, threads: int | None = None,
             profile: bool = False) -> SimulationResult:
    """Run one batch in one call of the Numba driver :func:`evsim.kernels.run_network`. ``x`` as
    accepted by :func:`check_input`.

    ``threads``: how many of Numba's threads this call uses (default: Numba's current count for the
    calling thread), never more than samples; the calling thread's setting is restored afterwards,
    so nothing global changes.

    ``profile``: also time every step of the driver with the CPU's clock (:mod:`evsim.clock`), the
    same code path as an ordinary run; the result's :attr:`~SimulationResult.profile` says where the
    time went.
    """
    t_start = time.perf_counter()
    x = check_input(net, x)
    n_threads = numba.get_num_threads()
    want = n_threads if threads is None else max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    # fewer samples than threads: do not wake threads that would get no sample
    numba.set_num_threads(min(want, len(x)))     # Numba's thread count is per calling thread
    try:
        return _simulate(net, x, record, profile, t_start)
    finally:
        numba.set_num_threads(n_threads)


def _simulate(net: CompiledNetwork, x: np.ndarray, record: bool, profile: bool, t_start: float) -> SimulationResult:
    g = net.network
    T = g.timesteps
    N = x.shape[0]
    dt = net.dtype
    prog = build_program(net)
    n_total = int(prog.pop_off[-1])
    ws = _take_workspace(prog, N, n_total, max((p.size for p in net.populations), default=0), dt,
                         net.synaptic_dtype)
    drive, v, frame, ev_idx, ev_sign, tally, syn = ws
    # the direct-input currents; the driver adds them to the biases, sample by sample (on its threads:
    # a batch's drive, filled here in serial NumPy, capped the two-thread speed-up at ~1.8x)
    t_direct = time.perf_counter()
    direct_out, to_populations = _direct_currents(net, x)
    t_direct = time.perf_counter() - t_direct
    parts = [cur for _, cur in to_populations]
    offsets = np.cumsum([0] + [cur.shape[1] for cur in parts])
    current_map = [(prog.pop_off[t], offsets[k], cur.shape[1]) for k, (t, cur) in enumerate(to_populations)]
    current = parts[0] if len(parts) == 1 else (np.concatenate(parts, axis=1) if parts else np.zeros((N, 0), dt))
    current_map = np.array(current_map, dtype=np.int64).reshape(-1, 3)
    h = np.zeros((N, int(prog.h_off[-1])), dtype=dt)
    P, J = len(net.populations), len(net.projections)
    ev_cnt = np.zeros((N, P), dtype=np.int64)
    n_pos = np.zeros((N, P), dtype=np.int64)
    n_neg = np.zeros((N, P), dtype=np.int64)
    syn_ops = np.zeros((N, J), dtype=np.int64)
    events_in = np.zeros((N, J), dtype=np.int64)
    input_events = np.zeros(N, dtype=np.int64)
    out_acc = np.zeros((N, net.n_outputs), dtype=readout_dtype(net))
    spike_input = g.encoding == "spikes"
    n_in = int(np.prod(g.input_shape))
    if spike_input:
        xs = np.ascontiguousarray(to_channels_last(x.reshape(N * T, *g.input_shape), g.input_shape)
                                  .reshape(N, T, n_in))
        in_idx = np.empty((N, n_in), dtype=np.int32)
        in_sign = np.empty((N, n_in), dtype=np.int8)
    else:
        xs = np.zeros((N, T, 0), dtype=np.int8)
        in_idx = np.empty((N, 0), dtype=np.int32)
        in_sign = np.empty((N, 0), dtype=np.int8)
    rec = np.zeros((N, T, n_total) if record else (N, 0, 0), dtype=np.int8)
    n_groups = numba.get_num_threads()
    ticks = np.zeros((n_groups, len(prog.steps) + 2) if profile else (n_groups, 0), dtype=np.int64)
    t_driver = time.perf_counter()
    K.run_network(T, spike_input, record, profile, n_groups, prog.samples_per_pass(N), prog.record,
                  K.StateRecord(v, h, drive, frame, ev_idx, ev_sign, ev_cnt, in_idx, in_sign, np.zeros(N, dtype=np.int64),
                               tally, syn),
                  K.InputRecord(xs, current, current_map),
                  K.CounterRecord(n_pos, n_neg, syn_ops, events_in, input_events, out_acc, rec, ticks))
    t_driver = time.perf_counter() - t_driver
    _give_back_workspace(prog, N, ws)
    spikes = None
    if record:
        off = prog.pop_off
        spikes = [rec[:, :, off[i]:off[i] + prog.pop_size[i]].transpose(1, 0, 2) for i in range(P)]
    result = _result(net, x, out_acc, direct_out, list(n_pos.T), list(n_neg.T), list(events_in.T), list(syn_ops.T),
                     input_events, spikes)
    if profile:
        result.profile = Profile.of(net, prog, ticks, n_samples=N, threads=n_groups, driver_s=t_driver,
                                    direct_s=t_direct, total_s=time.perf_counter() - t_start)
    return result


def merge_results(parts: list[SimulationResult]) -> SimulationResult:
    """Concatenate the results of consecutive batches."""
    first = parts[0]
    if len(parts) == 1:
        return first
    c = Counters(input_events=np.concatenate([p.counters.input_events for p in parts]))
    for attr in ("spikes_pos", "spikes_neg", "events_in", "synaptic_ops", "macs", "macs_nonzero"):
        getattr(c, attr).update({k: np.concatenate([getattr(p.counters, attr)[k] for p in parts])
                                 for k in getattr(first.counters, attr)})
    spikes = None
    if first.spikes is not None:
        spikes = {k: np.concatenate([p.spikes[k] for p in parts], axis=1) for k in first.spikes}
    profile = None
    if first.profile is not None:
        profs = [p.profile for p in parts]
        profile = Profile(sum(q.n_samples for q in profs), first.profile.threads, sum(q.total_s for q in profs),
                          sum(q.driver_s for q in profs),
                          [(label, what, sum(q.parts[i][2] for q in profs))
                           for i, (label, what, _) in enumerate(first.profile.parts)],
                          all(q.available for q in profs))
    return SimulationResult(np.concatenate([p.outputs for p in parts]), c, first.timesteps, spikes, profile)


def run(net: CompiledNetwork, x: np.ndarray, batch_size: int = 64, record: bool = False,
        progress=None, threads: int | None = None, profile: bool = False) -> SimulationResult:
    """Run many samples in batches; ``progress(n_done)`` is called after each batch; ``threads`` and
    ``profile`` as in :func:`simulate` (a profile sums the batches')."""
    x = np.asarray(x)
    g = net.network
    single = x.shape == ((g.timesteps,) if g.encoding == "spikes" else ()) + tuple(g.input_shape)
    if single:
        x = x[None]
    parts = []
    for i in range(0, max(len(x), 1), batch_size):
        parts.append(simulate(net, x[i:i + batch_size], record=record, threads=threads, profile=profile))
        if progress is not None:
            progress(len(parts[-1].outputs))
    return merge_results(parts)

"""Spike traffic on the mapped chip: packets, synaptic operations per core, latency and energy.

Everything is counted from the spikes a run recorded (``simulate(..., record=True)``) and the
:class:`~evsim.hardware.mapping.Mapping`; nothing is estimated from firing rates. The rules
(docs/HARDWARE.md, "Traffic"):

* a spike of neuron ``j`` sends **one packet per distinct destination core** of ``j``'s outgoing
  synapses (all its projections together), at the timestep it fires. On a mirrored chip a +1 spike is
  sent by the ON copy and a -1 spike by the OFF copy; both reach the same cores. Events of a
  spike-encoded input are packets **from the host**, counted apart by the same rule;
* each packet costs one **synaptic operation** per synapse it reaches on its core; on a mirrored chip
  both copies of the target hold the synapse, so the chip's count is evsim's ``synaptic_ops`` times
  the target's copies (checked: :attr:`Traffic.matches_engine`);
* every neuron the chip holds (OFF copies and the readout included) is updated once per timestep;
* a core works through its synaptic operations and neuron updates one after another, and all cores
  work in parallel: a timestep takes as long as its busiest core, ``ops x synaptic_op_ns + neurons x
  neuron_update_ns`` (unknown unless the profile gives both times; no routing or barrier time);
* energy per sample = synaptic ops x ``energy_synaptic_op_pj`` + neuron updates x
  ``energy_neuron_update_pj`` + packets (host packets included) x ``energy_packet_pj``; a part whose
  number the profile does not publish is reported as unknown, and then so is the total.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..graph import INPUT
from .mapping import Mapping


@dataclass
class TrafficCounts:
    """Integer sums over the samples counted so far (add batches with :meth:`add`)."""

    timesteps: int
    n_cores: int
    samples: int = 0
    packets: np.ndarray = None               # (T,) core-to-core packets
    host_packets: np.ndarray = None          # (T,) packets from the host (spike-encoded input)
    core_ops: np.ndarray = None              # (T, cores) synaptic operations on each core
    packets_in: np.ndarray = None            # (cores,) packets received
    packets_out: np.ndarray = None           # (cores,) packets sent
    latency_ns_sum: np.ndarray | None = None  # (T,) the busiest core's time, summed over samples
    busiest_hist: np.ndarray = None          # (T, cores) samples in which the core was the busiest

    def __post_init__(self):
        T, C = self.timesteps, self.n_cores
        for name, shape in (("packets", (T,)), ("host_packets", (T,)), ("core_ops", (T, C)), ("packets_in", (C,)),
                            ("packets_out", (C,)), ("busiest_hist", (T, C))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype=np.int64))


def _flat(spikes: np.ndarray, T: int) -> np.ndarray:
    """(T, N, *shape) spikes as (T*N, neurons) int8, rows time-major, columns in PyTorch's flat order."""
    s = np.asarray(spikes)
    return s.reshape(T * s.shape[1], -1).astype(np.int8, copy=False)


def count_batch(mapping: Mapping, spikes: dict[str, np.ndarray], input_spikes: np.ndarray | None,
                counts: TrafficCounts) -> TrafficCounts:
    """Add one batch's traffic to ``counts``.

    ``spikes``: population -> (T, N, *shape) as :class:`~evsim.engine.SimulationResult` records them;
    ``input_spikes``: the batch of a spike-encoded input, (N, T, *input_shape), else None."""
    T = counts.timesteps
    p = mapping.profile
    sources = dict(spikes)
    if INPUT in mapping.outgoing:
        if input_spikes is None:
            raise ValueError("a spike-encoded network needs the input spikes to count the host's packets")
        sources[INPUT] = np.swapaxes(np.asarray(input_spikes), 0, 1)
    N = next(iter(sources.values())).shape[1] if sources else 0
    total = sp.csr_matrix((T * N, counts.n_cores), dtype=np.int64)
    for name, s in sources.items():
        if name not in mapping.outgoing:
            continue
        out = mapping.outgoing[name]                       # (neurons x cores) synapses onto each core
        nd = mapping.nodes[name]
        flat = _flat(s, T)
        fired = sp.csr_matrix((flat != 0).astype(np.int64))
        total = total + fired @ out
        dcount = mapping.target_cores[name]
        per_row = fired @ dcount                           # (T*N,) packets
        hit = out.copy()
        hit.data[:] = 1
        counts.packets_in += hit.T @ np.asarray(fired.sum(axis=0)).ravel()
        if name == INPUT:
            counts.host_packets += per_row.reshape(T, N).sum(axis=1)
            continue
        counts.packets += per_row.reshape(T, N).sum(axis=1)
        n = nd.size
        pos = (flat > 0).sum(axis=0) * dcount
        neg = (flat < 0).sum(axis=0) * dcount
        on = nd.core_of[:n]
        off = nd.core_of[n:] if nd.copies == 2 else on     # a -1 spike leaves from the OFF copy
        counts.packets_out += np.bincount(on, weights=pos, minlength=counts.n_cores).astype(np.int64)
        counts.packets_out += np.bincount(off, weights=neg, minlength=counts.n_cores).astype(np.int64)
    total = total.tocsr()
    total.sum_duplicates()
    rows_t = np.repeat(np.arange(T), N)
    by_t = sp.csr_matrix((np.ones(T * N, dtype=np.int64), (rows_t, np.arange(T * N))), shape=(T, T * N))
    counts.core_ops += (by_t @ total).toarray()
    # the busiest core of each (timestep, sample): the one with the most time, or the most operations
    times = p.synaptic_op_ns is not None and p.neuron_update_ns is not None
    a = p.synaptic_op_ns if times else 1.0
    b = p.neuron_update_ns if times else 0.0
    base = mapping.core_neurons * b
    idle_max, idle_arg = (float(base.max()), int(base.argmax())) if base.size else (0.0, 0)
    total.sort_indices()
    load = total.data * a + base[total.indices]
    R = T * N
    row_max = np.full(R, idle_max)
    row_arg = np.full(R, idle_arg, dtype=np.int64)
    if total.nnz:
        row_of = np.repeat(np.arange(R), np.diff(total.indptr))
        order = np.lexsort((-load, row_of))             # by row, the most loaded core first (ties: lowest)
        rows = np.flatnonzero(np.diff(total.indptr) > 0)
        top = order[total.indptr[rows]]
        take = load[top] >= idle_max
        row_max[rows[take]] = load[top][take]
        row_arg[rows[take]] = total.indices[top][take]
    np.add.at(counts.busiest_hist, (rows_t, row_arg), 1)
    if times:
        if counts.latency_ns_sum is None:
            counts.latency_ns_sum = np.zeros(T)
        counts.latency_ns_sum += row_max.reshape(T, N).sum(axis=1)
    counts.samples += N
    return counts


@dataclass
class Traffic:
    """The traffic report: means per sample (per timestep, per core) and the profile's latency and energy."""

    mapping: Mapping
    counts: TrafficCounts
    engine_ops: int                   # evsim's synaptic_ops of the event-driven projections x target copies
    host_macs: float                  # per sample: MACs of direct-input projections (computed by the host)
    arithmetic: str

    @property
    def samples(self) -> int:
        return self.counts.samples

    @property
    def matches_engine(self) -> bool:
        return int(self.counts.core_ops.sum()) == self.engine_ops

    def per_timestep(self) -> list[dict]:
        c, n = self.counts, max(self.samples, 1)
        rows = []
        for t in range(c.timesteps):
            k = int(c.busiest_hist[t].argmax())
            rows.append({"t": t, "packets": c.packets[t] / n, "host_packets": c.host_packets[t] / n,
                         "synaptic_ops": c.core_ops[t].sum() / n,
                         "busiest_core": k, "busiest_population": self.mapping.core_node[k],
                         "busiest_core_ops": c.core_ops[t, k] / n,
                         "busiest_share": c.busiest_hist[t, k] / n,
                         "latency_ns": None if c.latency_ns_sum is None else c.latency_ns_sum[t] / n})
        return rows

    def energy(self) -> dict:
        """pJ per sample by part; a part the profile has no number for is None, and so is the total."""
        p, c, n = self.mapping.profile, self.counts, max(self.samples, 1)
        ops = c.core_ops.sum() / n
        updates = float(self.mapping.core_neurons.sum()) * c.timesteps
        packets = (c.packets.sum() + c.host_packets.sum()) / n
        parts = {"synaptic_ops": (ops, p.energy_synaptic_op_pj), "neuron_updates": (updates, p.energy_neuron_update_pj),
                 "packets": (packets, p.energy_packet_pj)}
        d = {k: None if e is None else float(count * e) for k, (count, e) in parts.items()}
        known = [v for v in d.values() if v is not None]
        d["unknown"] = [k for k, v in d.items() if v is None]
        d["total_pj"] = None if d["unknown"] else float(sum(known))
        d["known_pj"] = float(sum(known))
        return d

    def per_population(self) -> list[dict]:
        c, m, n = self.counts, self.mapping, max(self.samples, 1)
        ops = c.core_ops.sum(axis=0)
        rows = []
        for name in m.order:
            cs = m.nodes[name].cores
            rows.append({"population": name, "cores": len(cs), "synaptic_ops": float(ops[cs].sum() / n),
                         "packets_sent": float(c.packets_out[cs].sum() / n),
                         "packets_received": float(c.packets_in[cs].sum() / n),
                         "max_core_ops_per_timestep": float(c.core_ops[:, cs].max() / n) if cs else 0.0})
        return rows

    def to_dict(self, per_core: bool = True) -> dict:
        c, m, n = self.counts, self.mapping, max(self.samples, 1)
        p = m.profile
        steps = self.per_timestep()
        lat = [r["latency_ns"] for r in steps]
        d = {"profile": p.name, "chip": p.chip, "arithmetic": self.arithmetic, "samples": self.samples,
             "mapping": m.to_dict(per_core=False),
             "per_timestep": steps,
             "per_sample": {"packets": float(c.packets.sum() / n), "host_packets": float(c.host_packets.sum() / n),
                            "synaptic_ops": float(c.core_ops.sum() / n),
                            "engine_synaptic_ops": self.engine_ops / n,
                            "neuron_updates": int(m.core_neurons.sum()) * c.timesteps,
                            "host_macs": self.host_macs,
                            "latency_ns": None if None in lat else float(sum(lat))},
             "matches_engine": self.matches_engine,
             "synaptic_ops_rule": "chip synaptic ops = evsim synaptic_ops x copies of the target (2 when mirrored)",
             "energy_pj": self.energy(),
             "populations": self.per_population(),
             "sources": list(p.sources)}
        if per_core:
            d["per_core"] = {"population": m.core_node, "synaptic_ops": (c.core_ops.sum(axis=0) / n).tolist(),
                             "packets_in": (c.packets_in / n).tolist(), "packets_out": (c.packets_out / n).tolist(),
                             "neurons": m.core_neurons.tolist()}
        return d


def engine_ops(mapping: Mapping, counters) -> int:
    """evsim's own synaptic-op counters of the event-driven projections, times the target's copies."""
    return int(sum(int(np.asarray(counters.synaptic_ops[name]).sum()) * f for name, f in mapping.factor.items()))


def traffic_of(mapping: Mapping, net, result, input_spikes=None) -> Traffic:
    """The traffic of one finished run that recorded its spikes (small batches, tests)."""
    counts = count_batch(mapping, result.spikes, input_spikes,
                         TrafficCounts(net.network.timesteps, len(mapping.core_node)))
    return Traffic(mapping, counts, engine_ops(mapping, result.counters), _host_macs(mapping, result.counters),
                   arithmetic_of(net.network))


def _host_macs(mapping: Mapping, counters) -> float:
    return float(sum(np.asarray(counters.macs_nonzero[name]).mean() for name in mapping.host_projections)) \
        if mapping.host_projections else 0.0


def arithmetic_of(network) -> str:
    fp = network.fixed_point
    if fp is not None:
        return f"fixed point: {fp.weight_bits}-bit weights, {fp.membrane_bits}-bit membranes (the file's integers)"
    return "floating point (the file is not quantised: the chip's integer arithmetic needs a quantised file)"


def run_on_chip(net, x: np.ndarray, mapping: Mapping, batch_size: int = 64, progress=None, threads=None,
                profile: bool = False):
    """Run ``x`` batch by batch, recording spikes only one batch at a time, and count the traffic.

    Returns ``(result, traffic)``; ``result`` is what :func:`evsim.engine.run` returns, without spikes."""
    from ..engine import merge_results, simulate
    g = net.network
    x = np.asarray(x)
    if x.shape == ((g.timesteps,) if g.encoding == "spikes" else ()) + tuple(g.input_shape):
        x = x[None]
    counts = TrafficCounts(g.timesteps, len(mapping.core_node))
    parts = []
    for i in range(0, max(len(x), 1), batch_size):
        xb = x[i:i + batch_size]
        r = simulate(net, xb, record=True, threads=threads, profile=profile)
        count_batch(mapping, r.spikes, np.sign(xb).astype(np.int8) if g.encoding == "spikes" else None, counts)
        r.spikes = None
        parts.append(r)
        if progress is not None:
            progress(len(r.outputs))
    result = merge_results(parts)
    return result, Traffic(mapping, counts, engine_ops(mapping, result.counters), _host_macs(mapping, result.counters),
                           arithmetic_of(g))


def map_and_run(net, x: np.ndarray, profile_, batch_size: int = 64, threads=None, profile: bool = False):
    """``evsim run --hardware``: map the compiled network's graph onto ``profile_``, then :func:`run_on_chip`."""
    from .mapping import map_network
    mapping = map_network(net.network, profile_)
    return run_on_chip(net, x, mapping, batch_size=batch_size, threads=threads, profile=profile)

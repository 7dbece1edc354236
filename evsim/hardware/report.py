"""Readable tables of a mapping (``evsim map``) and of the traffic on the mapped chip (``evsim run --hardware``)."""

from __future__ import annotations

from ..reports import table
from .mapping import Mapping
from .traffic import Traffic


def _num(x) -> str:
    if x is None:
        return "unknown"
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3g}"


def format_mapping(m: Mapping) -> str:
    p = m.profile
    lines = [f"hardware: {p.name} ({p.chip}), {p.cores} cores per chip"]
    if m.fits:
        lines.append(f"fits: yes, on {m.cores_used} of {p.cores} cores")
    else:
        first = m.violations[0]
        lines.append(f"fits: no. Runs out first: {first.text()}")
        lines.append(f"cores used: {m.cores_used} ({m.chips_needed} chips' worth at {p.cores} cores per chip)")
        others = [v for v in m.worst() if v.resource != first.resource]
        if others:
            lines.append("also over (worst case of each):")
            lines.extend(f"  {v.text()}" for v in others)
    if p.mirror:
        lines.append("spikes are unsigned: each ternary population is held twice (ON copy for +1, OFF copy for -1)")
    if m.host_projections:
        lines.append(f"evaluated by the host (direct input): {', '.join(m.host_projections)}")
    unchecked = [k for k, v in m.checked().items() if not v]
    if unchecked:
        lines.append(f"not checked (no published limit): {', '.join(unchecked)}")
    kernel = p.weight_storage == "shared_kernel"
    bits = ("kernel memory/core (weights)" if kernel else "memory bits/core"
            + ("" if m.weight_bits is None else f" ({m.weight_bits}-bit weights)"))
    rows = []
    for r in m.population_rows():
        mem = r["memory_weights_per_core_max"] if kernel else r["memory_bits_per_core_max"]
        rows.append([r["population"], _num(r["neurons"]) + (" x2" if r["copies"] == 2 else ""), str(r["cores"]),
                     _num(r["neurons_per_core_max"]), _num(r["synapses_per_core_max"]),
                     _num(mem) if mem is not None else "-",
                     _num(r["fan_in_per_core_max"]), _num(r["fan_out_per_core_max"])])
    lines.append("")
    lines.append(table(rows, ["population", "neurons", "cores", "neurons/core", "synapses/core",
                              bits, "fan-in/core", "fan-out/core"]))
    lim = lambda key: p.core_limit(key, 0)   # noqa: E731
    mem_lim = lim("synaptic_memory_bits_per_core")
    lines.append("")
    lines.append("per core, most on any one core (limit):")
    lines.append(f"  neurons {_num(m.core_neurons.max())} ({_limit(lim('neurons_per_core'), p)}); "
                 f"synapses {_num(m.core_synapses.max())}; "
                 + (f"memory {_num(m.core_memory_bits.max())} bits ({_limit(mem_lim, p)}); "
                    if m.core_memory_bits is not None and not kernel else "")
                 + (f"kernel memory {_num(m.core_memory_weights.max())} weights "
                    f"({_limit(lim('synaptic_memory_weights_per_core'), p)}); "
                    if p.weight_storage == "shared_kernel" else "")
                 + f"fan-in {_num(m.core_fan_in.max())} ({_limit(p.fan_in_per_core, p)}); "
                 f"fan-out {_num(m.core_fan_out.max())} ({_limit(p.fan_out_per_core, p)})")
    return "\n".join(lines)


def _limit(v, p) -> str:
    if v is None:
        return "not published"
    return f"{_num(v)}" + (" on core 0, varies" if p.heterogeneous else "")


def format_traffic(t: Traffic) -> str:
    m, d = t.mapping, t.to_dict(per_core=False)
    p = m.profile
    lines = [f"on {p.name} ({p.chip}): {m.cores_used} cores"
             + ("" if m.fits else f" (does not fit one chip: {m.violations[0].resource} runs out first; "
                                  f"`evsim map` says more)"),
             f"  arithmetic: {t.arithmetic}"]
    rows = [[str(r["t"]), _num(r["packets"]), _num(r["host_packets"]), _num(r["synaptic_ops"]),
             f"{r['busiest_core']} ({r['busiest_population']})", _num(r["busiest_core_ops"]), _num(r["latency_ns"])]
            for r in d["per_timestep"]]
    lines.append("  per timestep, mean per sample:")
    lines.append(_indent(table(rows, ["t", "packets", "from host", "synaptic ops", "busiest core", "its ops",
                                      "latency ns"])))
    s = d["per_sample"]
    lines.append(f"  per sample: {_num(s['packets'])} packets between cores, {_num(s['host_packets'])} from the host, "
                 f"{_num(s['synaptic_ops'])} synaptic ops on chip (evsim's count x target copies: "
                 f"{'equal' if t.matches_engine else 'DIFFERENT'}), {_num(s['neuron_updates'])} neuron updates, "
                 f"{_num(s['host_macs'])} MACs on the host, latency {_num(s['latency_ns'])} ns")
    e = d["energy_pj"]
    parts = ", ".join(f"{k.replace('_', ' ')} {_num(e[k])}" for k in ("synaptic_ops", "neuron_updates", "packets"))
    total = (f"total {_num(e['total_pj'])} pJ" if e["total_pj"] is not None
             else f"total unknown (the profile has no number for: {', '.join(e['unknown'])})")
    lines.append(f"  energy per sample (pJ): {parts}; {total}")
    rows = [[r["population"], str(r["cores"]), _num(r["synaptic_ops"]), _num(r["packets_sent"]),
             _num(r["packets_received"]), _num(r["max_core_ops_per_timestep"])] for r in d["populations"]]
    lines.append(_indent(table(rows, ["population", "cores", "synaptic ops", "packets sent", "packets received",
                                      "max core ops / step"])))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())

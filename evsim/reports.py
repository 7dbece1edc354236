"""What the emulated hardware did: per-layer activity, operation counts, energy.

Everything here is derived from the engine's measured counters
(:class:`evsim.engine.Counters`); nothing is estimated from firing-rate
formulas. Energy models name their source. Per-sample figures are means
over the samples run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .compiler import CompiledNetwork
from .engine import SimulationResult
from .neurons import neuron_model


@dataclass(frozen=True)
class EnergyModel:
    name: str
    e_ac_pj: float    # one accumulate (addition or subtraction)
    e_mac_pj: float   # one multiply-accumulate
    source: str


# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm CMOS, 0.9 V.
ENERGY_MODELS = {
    m.name: m for m in (
        EnergyModel("45nm-fp32", 0.9, 4.6, "Horowitz ISSCC 2014, 45 nm: fp32 add 0.9 pJ, fp32 mult 3.7 pJ"),
        EnergyModel("45nm-int32", 0.1, 3.2, "Horowitz ISSCC 2014, 45 nm: int32 add 0.1 pJ, int32 mult 3.1 pJ"),
        EnergyModel("45nm-int8", 0.03, 0.23, "Horowitz ISSCC 2014, 45 nm: int8 add 0.03 pJ, int8 mult 0.2 pJ"),
    )
}
DEFAULT_ENERGY_MODEL = "45nm-fp32"


def energy_model(name: str) -> EnergyModel:
    from .errors import EvsimError
    try:
        return ENERGY_MODELS[name]
    except KeyError:
        raise EvsimError(f"unknown energy model {name!r} (known: {', '.join(ENERGY_MODELS)})") from None


@dataclass
class PopulationStats:
    name: str
    model: str
    neurons: int
    spikes_pos: float      # per sample
    spikes_neg: float
    firing_rate: float     # spikes / (neurons * T), either sign
    sparsity: float        # 1 - firing_rate
    neuron_updates: float  # per sample: neurons * T
    update_mults: float    # multiplications by per-population constants (leak, CTSN terms)
    update_adds: float


@dataclass
class ProjectionStats:
    name: str
    kind: str
    source: str
    target: str
    events_in: float       # per sample
    synaptic_ops: float    # AC per sample: additions/subtractions actually performed
    macs: float            # MAC per sample (direct-encoded input, computed once per sample)
    dense_macs: int        # MACs of the same projection run once as an ANN


@dataclass
class Report:
    samples: int
    timesteps: int
    dtype: str
    populations: list[PopulationStats]
    projections: list[ProjectionStats]
    totals: dict
    energy: dict

    def to_dict(self) -> dict:
        return {"samples": self.samples, "timesteps": self.timesteps, "dtype": self.dtype,
                "populations": [asdict(p) for p in self.populations],
                "projections": [asdict(p) for p in self.projections],
                "totals": self.totals, "energy": self.energy}


def build_report(net: CompiledNetwork, result: SimulationResult, energy: str = DEFAULT_ENERGY_MODEL) -> Report:
    em = energy_model(energy)
    c = result.counters
    T = result.timesteps
    N = len(result.outputs)
    pops = []
    for p in net.populations:
        nm = neuron_model(p.model)
        pos = float(c.spikes_pos[p.name].sum()) / N
        neg = float(c.spikes_neg[p.name].sum()) / N
        rate = (pos + neg) / (p.size * T)
        updates = float(p.size * T)
        pops.append(PopulationStats(p.name, p.model, p.size, pos, neg, rate, 1.0 - rate, updates,
                                    updates * nm.mults_per_update, updates * nm.adds_per_update))
    names = {i: p.name for i, p in enumerate(net.populations)}
    projs = []
    for cp in net.projections:
        projs.append(ProjectionStats(
            cp.name, cp.kind, names.get(cp.source, "input"), names.get(cp.target, "readout"),
            float(c.events_in[cp.name].sum()) / N, float(c.synaptic_ops[cp.name].sum()) / N,
            float(c.macs[cp.name].sum()) / N, cp.dense_macs))
    ac = sum(p.synaptic_ops for p in projs)
    mac = sum(p.macs for p in projs)
    spikes = sum(p.spikes_pos + p.spikes_neg for p in pops)
    neurons = sum(p.neurons for p in pops)
    ann_mac = sum(p.dense_macs for p in projs)
    # an ANN's residual additions: one per target neuron of each identity projection
    ann_add = sum(net.populations[cp.target].size for cp in net.projections if cp.mode == "identity")
    totals = {
        "spikes": spikes,
        "spikes_pos": sum(p.spikes_pos for p in pops),
        "spikes_neg": sum(p.spikes_neg for p in pops),
        "neurons": neurons,
        "firing_rate": spikes / (neurons * T) if neurons else 0.0,
        "synaptic_ops": ac,
        "macs": mac,
        "neuron_updates": sum(p.neuron_updates for p in pops),
        "update_mults": sum(p.update_mults for p in pops),
        "update_adds": sum(p.update_adds for p in pops),
        "ann_macs": ann_mac,
        "ann_adds": ann_add,
        "input_events": float(c.input_events.sum()) / N if c.input_events is not None else 0.0,
    }
    snn_pj = ac * em.e_ac_pj + mac * em.e_mac_pj
    ann_pj = ann_mac * em.e_mac_pj + ann_add * em.e_ac_pj
    energy_d = {
        "model": em.name, "source": em.source, "e_ac_pj": em.e_ac_pj, "e_mac_pj": em.e_mac_pj,
        "snn_uj": snn_pj * 1e-6, "ann_uj": ann_pj * 1e-6,
        "ratio_ann_over_snn": ann_pj / snn_pj if snn_pj else float("inf"),
        "note": "synaptic path only (AC x E_AC + MAC x E_MAC), per sample; neuron updates counted apart",
    }
    return Report(N, T, str(net.dtype), pops, projs, totals, energy_d)


# ------------------------------------------------------------------ text form
def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.1f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_report(report: Report) -> str:
    out = []
    rows = [[p.name, p.model, p.neurons, _fmt(p.spikes_pos), _fmt(p.spikes_neg), f"{100 * p.firing_rate:.2f}%",
             f"{100 * p.sparsity:.2f}%", _fmt(p.neuron_updates)] for p in report.populations]
    out.append(table(rows, ["population", "model", "neurons", "+1 spikes", "-1 spikes", "rate", "sparsity", "updates"]))
    out.append("")
    rows = [[p.name, p.kind, f"{p.source} -> {p.target}", _fmt(p.events_in), _fmt(p.synaptic_ops), _fmt(p.macs),
             _fmt(p.dense_macs)] for p in report.projections]
    out.append(table(rows, ["projection", "kind", "source -> target", "events", "AC", "MAC", "ANN MAC"]))
    t, e = report.totals, report.energy
    out.append("")
    out.append(f"per sample (mean of {report.samples}, T={report.timesteps}, {report.dtype}): "
               f"{_fmt(t['spikes'])} spikes ({_fmt(t['spikes_pos'])} +1, {_fmt(t['spikes_neg'])} -1), "
               f"firing rate {100 * t['firing_rate']:.2f}%")
    out.append(f"  synaptic ops: {_fmt(t['synaptic_ops'])} AC + {_fmt(t['macs'])} MAC "
               f"(ANN of the same network: {_fmt(t['ann_macs'])} MAC)")
    out.append(f"  neuron updates: {_fmt(t['neuron_updates'])} ({_fmt(t['update_mults'])} mult, "
               f"{_fmt(t['update_adds'])} add by per-layer constants)")
    out.append(f"  energy [{e['model']}]: SNN {e['snn_uj']:.4f} uJ vs ANN {e['ann_uj']:.4f} uJ "
               f"({e['ratio_ann_over_snn']:.1f}x less); {e['source']}")
    return "\n".join(out)

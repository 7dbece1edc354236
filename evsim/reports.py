"""What the emulated hardware did: per-layer activity, operation counts, energy.

Everything here is derived from the engine's measured counters
(:class:`evsim.engine.Counters`); nothing is estimated from firing-rate
formulas. Energy models name their source. Per-sample figures are means
over the samples run; :func:`per_sample` gives every counter of every
sample. How each counter is computed: docs/COUNTING.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

# Which MACs of a direct-encoded input count: "nonzero" (each non-zero input value once, with the
# non-zero synapses it reaches: what an event processor fed the image does, and NeuroBench's
# "effective" MACs) or "all" (every input position, as a dense first layer computes it).
MAC_BASES = ("nonzero", "all")
DEFAULT_MAC_BASIS = "nonzero"


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
    kind: str              # the graph's: linear, conv2d, identity
    source: str
    target: str
    events_in: float       # per sample
    synaptic_ops: float    # AC per sample: additions/subtractions actually performed
    macs: float            # MAC per sample (direct-encoded input, computed once per sample), on the report's basis
    macs_nonzero_input: float   # MAC per sample, non-zero input values only
    macs_all_positions: float   # MAC per sample, every input position
    dense_macs: int        # MACs of the same projection run once as an ANN
    kernel: str = ""       # the projection kind it runs as (evsim.projections): conv_rows, conv_taps, csr, identity, dense


@dataclass
class Report:
    samples: int
    timesteps: int
    dtype: str
    populations: list[PopulationStats]
    projections: list[ProjectionStats]
    totals: dict
    energy: dict
    mac_basis: str = DEFAULT_MAC_BASIS

    def to_dict(self) -> dict:
        return {"samples": self.samples, "timesteps": self.timesteps, "dtype": self.dtype, "mac_basis": self.mac_basis,
                "populations": [asdict(p) for p in self.populations],
                "projections": [asdict(p) for p in self.projections],
                "totals": self.totals, "energy": self.energy}


def _check_basis(mac_basis: str) -> None:
    if mac_basis not in MAC_BASES:
        from .errors import EvsimError
        raise EvsimError(f"unknown MAC basis {mac_basis!r} (known: {', '.join(MAC_BASES)})")


def build_report(net: CompiledNetwork, result: SimulationResult, energy: str = DEFAULT_ENERGY_MODEL,
                 mac_basis: str = DEFAULT_MAC_BASIS) -> Report:
    em = energy_model(energy)
    _check_basis(mac_basis)
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
    for cp in net.reported_projections:
        nonzero = float(c.macs_nonzero[cp.name].sum()) / N
        every = float(c.macs[cp.name].sum()) / N
        projs.append(ProjectionStats(
            cp.name, cp.kind, names.get(cp.source, "input"), names.get(cp.target, "readout"),
            float(c.events_in[cp.name].sum()) / N, float(c.synaptic_ops[cp.name].sum()) / N,
            nonzero if mac_basis == "nonzero" else every, nonzero, every, cp.dense_macs, cp.mode))
    ac = sum(p.synaptic_ops for p in projs)
    mac = sum(p.macs for p in projs)
    spikes = sum(p.spikes_pos + p.spikes_neg for p in pops)
    neurons = sum(p.neurons for p in pops)
    ann_mac = sum(p.dense_macs for p in projs)
    # an ANN's residual additions: one per target neuron of each identity projection (none at scale 0)
    ann_add = sum(net.populations[cp.target].size for cp in net.reported_projections if cp.mode == "identity" and cp.scale != 0)
    totals = {
        "spikes": spikes,
        "spikes_pos": sum(p.spikes_pos for p in pops),
        "spikes_neg": sum(p.spikes_neg for p in pops),
        "neurons": neurons,
        "firing_rate": spikes / (neurons * T) if neurons else 0.0,
        "synaptic_ops": ac,
        "macs": mac,
        "macs_nonzero_input": sum(p.macs_nonzero_input for p in projs),
        "macs_all_positions": sum(p.macs_all_positions for p in projs),
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
    return Report(N, T, str(net.dtype), pops, projs, totals, energy_d, mac_basis)


def per_sample(net: CompiledNetwork, result: SimulationResult, mac_basis: str = DEFAULT_MAC_BASIS) -> list[dict]:
    """Every counter of every sample, as measured (integers), with the sample's raw outputs.

    The report's per-sample figures are the means of these over the samples."""
    _check_basis(mac_basis)
    c = result.counters
    names = {i: p.name for i, p in enumerate(net.populations)}
    ann_add = sum(net.populations[cp.target].size for cp in net.reported_projections if cp.mode == "identity" and cp.scale != 0)
    rows = []
    for i in range(len(result.outputs)):
        pops = [{"name": p.name, "spikes_pos": int(c.spikes_pos[p.name][i]), "spikes_neg": int(c.spikes_neg[p.name][i])}
                for p in net.populations]
        projs = []
        for cp in net.reported_projections:
            nonzero, every = int(c.macs_nonzero[cp.name][i]), int(c.macs[cp.name][i])
            projs.append({"name": cp.name, "source": names.get(cp.source, "input"),
                          "target": names.get(cp.target, "readout"),
                          "events_in": int(c.events_in[cp.name][i]), "synaptic_ops": int(c.synaptic_ops[cp.name][i]),
                          "macs": nonzero if mac_basis == "nonzero" else every,
                          "macs_nonzero_input": nonzero, "macs_all_positions": every})
        spikes = sum(p["spikes_pos"] + p["spikes_neg"] for p in pops)
        rows.append({
            "sample": i, "outputs": [float(v) for v in result.outputs[i]], "prediction": int(result.outputs[i].argmax()),
            "populations": pops, "projections": projs,
            "totals": {"spikes": spikes, "synaptic_ops": sum(p["synaptic_ops"] for p in projs),
                       "macs": sum(p["macs"] for p in projs),
                       "input_events": int(c.input_events[i]) if c.input_events is not None else 0,
                       "ann_macs": sum(cp.dense_macs for cp in net.reported_projections), "ann_adds": ann_add}})
    return rows


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
    rows = [[p.name, f"{p.kind} ({p.kernel})", f"{p.source} -> {p.target}", _fmt(p.events_in), _fmt(p.synaptic_ops), _fmt(p.macs),
             _fmt(p.dense_macs)] for p in report.projections]
    out.append(table(rows, ["projection", "kind", "source -> target", "events", "AC", "MAC", "ANN MAC"]))
    t, e = report.totals, report.energy
    out.append("")
    out.append(f"per sample (mean of {report.samples}, T={report.timesteps}, {report.dtype}): "
               f"{_fmt(t['spikes'])} spikes ({_fmt(t['spikes_pos'])} +1, {_fmt(t['spikes_neg'])} -1), "
               f"firing rate {100 * t['firing_rate']:.2f}%")
    other = "all input positions" if report.mac_basis == "nonzero" else "non-zero inputs only"
    other_macs = t["macs_all_positions"] if report.mac_basis == "nonzero" else t["macs_nonzero_input"]
    basis = "non-zero inputs" if report.mac_basis == "nonzero" else "all input positions"
    out.append(f"  synaptic ops: {_fmt(t['synaptic_ops'])} AC + {_fmt(t['macs'])} MAC on {basis} "
               f"({_fmt(other_macs)} MAC on {other}; ANN of the same network: {_fmt(t['ann_macs'])} MAC)")
    out.append(f"  neuron updates: {_fmt(t['neuron_updates'])} ({_fmt(t['update_mults'])} mult, "
               f"{_fmt(t['update_adds'])} add by per-layer constants)")
    out.append(f"  energy [{e['model']}]: SNN {e['snn_uj']:.4f} uJ vs ANN {e['ann_uj']:.4f} uJ "
               f"({e['ratio_ann_over_snn']:.1f}x less); {e['source']}")
    return "\n".join(out)


def format_profile(profile) -> str:
    """The text form of an :class:`evsim.engine.Profile`: per kernel, then the ten slowest steps."""
    if not profile.available:
        return ("profile: this CPU has no clock evsim's driver can read (evsim.clock); only the totals: "
                f"driver {profile.driver_s:.3f} s of {profile.total_s:.3f} s")
    total = profile.total_s
    rest = total - profile.driver_s - sum(sec for _, what, sec in profile.parts if what.startswith("dense MACs"))
    kinds = sorted(profile.by_kind().items(), key=lambda kv: -kv[1]) + [("Python around the driver", rest)]
    n = max(1, profile.n_samples)
    rows = [[k, f"{1e3 * v / n:.3f}", f"{100 * v / total:.1f}%"] for k, v in kinds]
    slow = sorted(profile.parts, key=lambda p: -p[2])[:10]
    rows2 = [[label, what, f"{1e3 * sec / n:.3f}", f"{100 * sec / total:.1f}%"] for label, what, sec in slow]
    return "\n".join([f"profile ({profile.n_samples} samples, {profile.threads} thread(s), {total:.3f} s; "
                      "driver steps timed with the CPU clock, shared out of the driver's wall time)",
                      table(rows, ["kernel", "ms/sample", "share"]), "",
                      table(rows2, ["slowest steps", "kernel", "ms/sample", "share"])])

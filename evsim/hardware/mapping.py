"""Map a network onto a chip's cores: a greedy partitioner and the report of what fits.

The rules (docs/HARDWARE.md, "Mapping"):

* The chip holds one **node** per population, plus the readout (its outputs are neurons that integrate
  and never fire). On a chip whose spikes are unsigned and whose profile says ``negative_spikes =
  "mirror"``, a population that can fire -1 is held twice: an ON copy (fires the +1 spikes) and an OFF
  copy (fires the -1 spikes, its outgoing weights negated); both copies integrate the same input, so
  each holds every incoming synapse. A spike-encoded input with -1 events is two axons per pixel.
* A projection from a direct-encoded input is evaluated off the chip (by the host, as MACs) and enters
  its target as a per-neuron current: it takes no synapses and sends no packets.
* Nodes are placed in topological order, readout last, each copy on cores of its own (neurons of two
  populations never share a core). A copy is cut into contiguous blocks of neurons, each block as large
  as the core's limits allow: neurons, synaptic memory, fan-in (distinct source axons). Blocks follow
  the placement order: position-major (all channels of a pixel together, so that neurons reading the
  same inputs share their axons) on per-synapse and crossbar chips, channel-major (a core holds the
  kernels of its channels only) on shared-kernel chips. The limits that a profile does not publish are
  not checked; with no per-core neuron limit a whole copy goes on one core. With ``split_populations =
  false`` (one layer per core, DYNAP-CNN) each copy takes the smallest free core that holds it whole.
* Synaptic memory: per synapse, one weight per synapse of ``weight_bits`` (the quantised file's width,
  else the chip's); crossbar, one bit per (input axon, neuron) of the core; shared kernel, sinabs'
  kernel-memory formula per incoming projection. A quantised file whose weight or membrane width
  exceeds the chip's breaks that limit.
* Fan-out (destination cores per neuron, and (neuron, destination core) edges per core) depends on
  where the targets went, so it is checked after placement; so are the chip totals.

When the chip's cores run out the mapping goes on over virtual cores with the last core's limits, so that
the report can say how many cores (and chips) the network would need. A block that breaks a limit even
at one neuron is placed anyway and reported. The first limit broken, walking the network in that order,
is "what runs out first"; every other broken limit is listed with its worst core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import EvsimError, NetworkError
from ..graph import INPUT, READOUT, Network
from ..limits import Limits
from ..neurons import neuron_model
from .profile import HardwareProfile


class MappingError(EvsimError):
    """A network that cannot be laid out (too large to enumerate within the memory budget)."""


# ------------------------------------------------------------------- synapses
def _conv_synapse_count(w_nz: np.ndarray, src, tgt, stride, padding) -> int:
    _, H, W = src
    _, Ho, Wo = tgt
    kh, kw = w_nz.shape[2:]
    pairs = w_nz.sum(axis=(0, 1))                       # (kh, kw): non-zero (co, ci) pairs per tap
    rows = np.array([_valid(ky, stride[0], padding[0], H, Ho).size for ky in range(kh)])
    cols = np.array([_valid(kx, stride[1], padding[1], W, Wo).size for kx in range(kw)])
    return int((pairs * rows[:, None] * cols[None, :]).sum())


def _valid(k: int, stride: int, pad: int, n_in: int, n_out: int) -> np.ndarray:
    """Output positions o that tap offset k reaches inside the input: 0 <= o*stride - pad + k < n_in."""
    o = np.arange(n_out)
    p = o * stride - pad + k
    return o[(p >= 0) & (p < n_in)]


def synapse_matrix(network: Network, pr, limits: Limits) -> sp.csr_matrix:
    """The projection's synapses, (n_source x n_target), one entry per non-zero weight (PyTorch flat order).

    The same synapses evsim counts a synaptic operation for (docs/COUNTING.md): zero weights and taps
    that fall outside the map hold none; an identity of scale 0 holds none."""
    src = network.shape_of(pr.source)
    n_src = math.prod(src)
    if pr.target == READOUT:
        n_tgt = pr.weight.shape[0]
    else:
        n_tgt = math.prod(network.shape_of(pr.target))
    if pr.kind == "identity":
        if pr.scale == 0:
            return sp.csr_matrix((n_src, n_tgt), dtype=np.int32)
        return sp.identity(n_src, dtype=np.int32, format="csr")
    if pr.kind == "linear":
        nz = pr.weight != 0
        limits.check_bytes(f"mapping projection {pr.name!r}: {int(nz.sum())} synapses", 16 * int(nz.sum()))
        return sp.csr_matrix(nz.T.astype(np.int32))
    w_nz = pr.weight != 0
    tgt = network.shape_of(pr.target)
    count = _conv_synapse_count(w_nz, src, tgt, pr.stride, pr.padding)
    limits.check_bytes(f"mapping projection {pr.name!r}: {count} synapses", 24 * count)
    C, H, W = src
    Co, Ho, Wo = tgt
    kh, kw = w_nz.shape[2:]
    srcs, tgts = [], []
    for ky in range(kh):
        oy = _valid(ky, pr.stride[0], pr.padding[0], H, Ho)
        for kx in range(kw):
            ox = _valid(kx, pr.stride[1], pr.padding[1], W, Wo)
            co, ci = np.nonzero(w_nz[:, :, ky, kx])
            if not (oy.size and ox.size and co.size):
                continue
            y = oy * pr.stride[0] - pr.padding[0] + ky
            x = ox * pr.stride[1] - pr.padding[1] + kx
            s_pos = (y[:, None] * W + x[None, :]).ravel()
            t_pos = (oy[:, None] * Wo + ox[None, :]).ravel()
            srcs.append((ci[:, None] * (H * W) + s_pos[None, :]).ravel())
            tgts.append((co[:, None] * (Ho * Wo) + t_pos[None, :]).ravel())
    if not srcs:
        return sp.csr_matrix((n_src, n_tgt), dtype=np.int32)
    s = np.concatenate(srcs)
    t = np.concatenate(tgts)
    return sp.csr_matrix((np.ones(s.size, dtype=np.int32), (s, t)), shape=(n_src, n_tgt))


# ------------------------------------------------------------------- nodes
@dataclass
class Node:
    """A population (or the readout, or a spike-encoded input) as the chip holds it."""

    name: str
    size: int                       # neurons of one copy
    copies: int                     # 2 when mirrored (ON, OFF)
    shape: tuple[int, ...]
    on_chip: bool = True            # False for the input (its events come from the host)
    core_of: np.ndarray | None = None   # (copies * size,) the core of each neuron, copy-major
    cores: list[int] = field(default_factory=list)

    @property
    def channel_size(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) == 3 else 1


@dataclass
class Violation:
    resource: str          # "cores", "neurons per core", "synaptic memory per core", ...
    needed: float
    limit: float
    where: str             # the core or population where it is worst / first

    @property
    def over(self) -> float:
        return self.needed - self.limit

    def to_dict(self) -> dict:
        return {"resource": self.resource, "needed": _plain(self.needed), "limit": _plain(self.limit),
                "over": _plain(self.over), "where": self.where}

    def text(self) -> str:
        return (f"{self.resource}: needs {_n(self.needed)}, the limit is {_n(self.limit)} "
                f"({_n(self.over)} over, {self.where})")


def _plain(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _n(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.3g}"


@dataclass
class Mapping:
    """Where every neuron went, what each core holds, and what did not fit."""

    profile: HardwareProfile
    nodes: dict[str, Node]
    order: list[str]                       # on-chip nodes in placement order
    core_node: list[str]                   # per core: "population" or "population (OFF)"
    core_neurons: np.ndarray
    core_synapses: np.ndarray
    core_memory_bits: np.ndarray | None
    core_memory_weights: np.ndarray
    core_fan_in: np.ndarray
    core_fan_out: np.ndarray
    outgoing: dict[str, sp.csr_matrix]     # source node -> (n_source x cores) synapses onto each core
    target_cores: dict[str, np.ndarray]    # source node -> distinct destination cores per source neuron
    factor: dict[str, int]                 # projection -> target copies (synaptic ops per evsim op)
    violations: list[Violation]            # in the order found; violations[0] runs out first
    host_projections: list[str]            # direct-input projections, evaluated off the chip
    weight_bits: int | None = None         # bits per synapse weight in per-synapse memory (None: unknown)

    @property
    def cores_used(self) -> int:
        return sum(1 for label in self.core_node if label)

    @property
    def fits(self) -> bool:
        return not self.violations

    @property
    def chips_needed(self) -> int:
        return max(1, -(-self.cores_used // self.profile.cores))

    def worst(self) -> list[Violation]:
        """One violation per resource, the worst, in the order the resources first ran out."""
        by: dict[str, Violation] = {}
        for v in self.violations:
            if v.resource not in by or v.needed > by[v.resource].needed:
                by[v.resource] = v
        seen = []
        for v in self.violations:
            if v.resource not in seen:
                seen.append(v.resource)
        return [by[r] for r in seen]

    def checked(self) -> dict[str, bool]:
        p = self.profile
        return {"neurons per core": p.neurons_per_core is not None,
                "synaptic memory per core": (p.synaptic_memory_bits_per_core is not None and p.weight_bits is not None)
                or p.synaptic_memory_weights_per_core is not None,
                "fan-in per core": p.fan_in_per_core is not None,
                "fan-out per core": p.fan_out_per_core is not None,
                "fan-out cores per neuron": p.fan_out_cores_per_neuron is not None,
                "weight values per neuron": p.weight_values_per_neuron is not None,
                "neurons per chip": p.neurons_per_chip is not None,
                "synapses per chip": p.synapses_per_chip is not None,
                "cores": True}

    def population_rows(self) -> list[dict]:
        rows = []
        for name in self.order:
            nd = self.nodes[name]
            cs = nd.cores
            rows.append({"population": name, "neurons": nd.size, "copies": nd.copies, "cores": len(cs),
                         "first_core": cs[0] if cs else None,
                         "neurons_per_core_max": int(self.core_neurons[cs].max()) if cs else 0,
                         "synapses_per_core_max": int(self.core_synapses[cs].max()) if cs else 0,
                         "memory_weights_per_core_max": int(self.core_memory_weights[cs].max()) if cs else 0,
                         "memory_bits_per_core_max": (int(self.core_memory_bits[cs].max())
                                                      if cs and self.core_memory_bits is not None else None),
                         "fan_in_per_core_max": int(self.core_fan_in[cs].max()) if cs else 0,
                         "fan_out_per_core_max": int(self.core_fan_out[cs].max()) if cs else 0})
        return rows

    def to_dict(self, per_core: bool = True) -> dict:
        p = self.profile
        d = {"profile": p.name, "chip": p.chip, "fits": self.fits, "cores_used": self.cores_used,
             "cores_on_chip": p.cores, "chips_needed": self.chips_needed,
             "runs_out_first": self.violations[0].to_dict() if self.violations else None,
             "violations": [v.to_dict() for v in self.worst()],
             "checked": self.checked(), "mirrored": p.mirror,
             "neurons": int(self.core_neurons.sum()), "synapses": int(self.core_synapses.sum()),
             "host_projections": self.host_projections,
             "populations": self.population_rows()}
        if per_core:
            d["cores"] = {"population": self.core_node, "neurons": self.core_neurons.tolist(),
                          "synapses": self.core_synapses.tolist(),
                          "memory_bits": None if self.core_memory_bits is None else self.core_memory_bits.tolist(),
                          "memory_weights": self.core_memory_weights.tolist(),
                          "fan_in": self.core_fan_in.tolist(), "fan_out": self.core_fan_out.tolist()}
        return d


def _copies(profile: HardwareProfile, ternary: bool) -> int:
    return 2 if profile.mirror and ternary else 1


def _kernel_entries(c: int, kernel: int, f: int) -> int:
    """sinabs' kernel memory of a conv on DYNAP-CNN: c * 2^(ceil(log2(kx*ky)) + ceil(log2(f)))."""
    return c * (1 << (math.ceil(math.log2(max(kernel, 1))) + math.ceil(math.log2(max(f, 1)))))


# ------------------------------------------------------------------- the partitioner
def placement_order(shape: tuple[int, ...], storage: str) -> np.ndarray:
    """The order neurons are cut into blocks (flat PyTorch indices).

    Per-synapse and crossbar chips: position-major (all channels of one pixel together), so that the
    neurons that read the same input pixels share a core and its input axons (fan-in). Shared-kernel
    chips: channel-major (PyTorch's order), so that a core holds the kernels of few channels."""
    n = math.prod(shape)
    if len(shape) != 3 or storage == "shared_kernel":
        return np.arange(n)
    return np.arange(n).reshape(shape[0], -1).T.ravel()


def _previous_same(indices: np.ndarray) -> np.ndarray:
    """For each entry, the position of the previous entry with the same value, or -1."""
    prev = np.full(indices.size, -1, dtype=np.int64)
    if indices.size:
        order = np.argsort(indices, kind="stable")
        same = indices[order[1:]] == indices[order[:-1]]
        prev[order[1:][same]] = order[:-1][same]
    return prev


def map_network(network: Network, profile: HardwareProfile, weight_bits: int | None = None,
                limits: Limits | None = None) -> Mapping:
    """Partition ``network`` over ``profile``'s cores (rules in the module docstring).

    ``weight_bits``: the width a synapse's weight takes in per-synapse memory; by default the
    quantised file's own width, else the chip's (docs/HARDWARE.md)."""
    limits = limits or Limits.from_env()
    network.validate()
    pooled = [pr.name for pr in network.projections if pr.pool is not None]
    if pooled:
        raise NetworkError(f"projection {pooled[0]!r} is a pooled conv (format v3): evsim does not map average "
                           f"pooling before a conv onto a chip yet")
    fixed = network.fixed_point
    if weight_bits is None:
        weight_bits = fixed.weight_bits if fixed is not None else profile.weight_bits
    if profile.weight_storage == "crossbar":
        weight_bits = 1
    spikes_in = network.encoding == "spikes"
    nodes: dict[str, Node] = {}
    order = network.topological_order()
    pops = {p.name: p for p in network.populations}
    for name in order:
        p = pops[name]
        nodes[name] = Node(name, p.size, _copies(profile, neuron_model(p.model).ternary), p.shape)
    nodes[READOUT] = Node(READOUT, network.n_classes, 1, (network.n_classes,))
    if spikes_in:
        nodes[INPUT] = Node(INPUT, math.prod(network.input_shape), _copies(profile, True), network.input_shape,
                            on_chip=False)
    placed = order + [READOUT]
    host = [pr.name for pr in network.projections if pr.source == INPUT and not spikes_in]
    spiking = [pr for pr in network.projections if pr.name not in host]

    # synapses of every event-driven projection, and each target's incoming axons (global axon ids),
    # rows in placement order
    S = {pr.name: synapse_matrix(network, pr, limits) for pr in spiking}
    axon_base, n_axons = {}, 0
    for name in ([INPUT] if spikes_in else []) + order:
        axon_base[name] = n_axons
        n_axons += nodes[name].size * nodes[name].copies
    incoming: dict[str, list] = {n: [] for n in placed}
    for pr in spiking:
        incoming[pr.target].append(pr)
    perm: dict[str, np.ndarray] = {}
    axons_in: dict[str, sp.csr_matrix] = {}
    syn_in: dict[str, np.ndarray] = {}
    for name in placed:
        nd = nodes[name]
        perm[name] = placement_order(nd.shape, profile.weight_storage)
        blocks, counts = [], np.zeros(nd.size, dtype=np.int64)
        for pr in incoming[name]:
            src = nodes[pr.source]
            m = S[pr.name].T.tocoo()                  # (n_target x n_source)
            counts += np.bincount(m.row, minlength=nd.size) * src.copies
            for c in range(src.copies):
                blocks.append(sp.csr_matrix((m.data, (m.row, m.col + axon_base[pr.source] + c * src.size)),
                                            shape=(nd.size, n_axons)))
        a = sum(blocks[1:], blocks[0]) if blocks else sp.csr_matrix((nd.size, n_axons), dtype=np.int32)
        a = a.tocsr()[perm[name]]
        a.sum_duplicates()
        axons_in[name] = a
        syn_in[name] = counts[perm[name]]

    violations: list[Violation] = []
    if fixed is not None:
        for key, have, what in (("weight_bits", fixed.weight_bits, "weight bits"),
                                ("membrane_bits", fixed.membrane_bits, "membrane bits")):
            lim = getattr(profile, key)
            if lim is not None and have > lim:
                violations.append(Violation(what, have, lim, "the quantised file"))
    core_node: list[str] = []
    core_mem_w: list[int] = []
    free_unsplit = list(range(profile.cores))

    def limit(key: str, core: int):
        return profile.core_limit(key, core)

    def channels(name: str, lo: int, hi: int) -> int:
        """Output channels (features) that neurons [lo, hi) (channel-major placement order) span."""
        nd = nodes[name]
        return (hi - 1) // nd.channel_size - lo // nd.channel_size + 1 if len(nd.shape) == 3 else hi - lo

    def kernel_weights(name: str, f: int, n: int) -> int:
        """Shared-kernel memory (weights) of a block of ``n`` neurons over ``f`` channels of ``name``."""
        total = 0
        for pr in incoming[name]:
            src = nodes[pr.source]
            if pr.kind == "conv2d":
                c, k, ff = pr.weight.shape[1], pr.weight.shape[2] * pr.weight.shape[3], f
            elif pr.kind == "identity":
                c, k, ff = src.shape[0], 1, f
            else:                                   # a linear layer is a conv whose kernel covers its input
                c, k = (src.shape[0], src.channel_size) if len(src.shape) == 3 else (src.size, 1)
                ff = n
            total += _kernel_entries(c * src.copies, k, ff)
        return total

    def fan_in(name: str, lo: int, hi: int) -> int:
        a = axons_in[name]
        ids = a.indices[a.indptr[lo]:a.indptr[hi]]
        return int(np.count_nonzero(np.bincount(ids, minlength=1))) if ids.size > 4096 else int(np.unique(ids).size)

    def memory(name: str, lo: int, hi: int, prefix: np.ndarray, fi: int | None = None) -> int:
        """Weights held by neurons [lo, hi) of one copy of ``name`` (bits = weights x weight_bits)."""
        if profile.weight_storage == "shared_kernel":
            return kernel_weights(name, channels(name, lo, hi), hi - lo)
        if profile.weight_storage == "crossbar":       # one bit per (axon, neuron) of the core
            return (fan_in(name, lo, hi) if fi is None else fi) * (hi - lo)
        return int(prefix[hi] - prefix[lo])

    def breaks(name: str, label: str, core: int, lo: int, hi: int, prefix, where: str | None = None) -> list[Violation]:
        """Every per-core limit that neurons [lo, hi) of ``name`` break on core ``core``."""
        fi = fan_in(name, lo, hi)
        return breaks_given(core, hi - lo, fi, memory(name, lo, hi, prefix, fi), where or f"{label}, core {core}")

    def breaks_given(core: int, n: int, fi: int, w: int, where: str) -> list[Violation]:
        found = []
        n_lim = limit("neurons_per_core", core)
        if n_lim is not None and n > n_lim:
            found.append(Violation("neurons per core", n, n_lim, where))
        m_lim = limit("synaptic_memory_weights_per_core", core)
        if m_lim is not None and w > m_lim:
            found.append(Violation("synaptic memory per core (weights)", w, m_lim, where))
        b_lim = limit("synaptic_memory_bits_per_core", core)
        if b_lim is not None and weight_bits and w * weight_bits > b_lim:
            found.append(Violation("synaptic memory per core (bits)", w * weight_bits, b_lim, where))
        if profile.fan_in_per_core is not None and fi > profile.fan_in_per_core:
            found.append(Violation("fan-in per core", fi, profile.fan_in_per_core, where))
        return found

    def largest_block(name: str, core: int, lo: int, prefix: np.ndarray, prev: np.ndarray) -> int:
        """The largest hi such that neurons [lo, hi) keep every per-core limit of ``core`` (lo if none).

        Every resource grows with hi, so one pass over the candidate block's synapses gives them all."""
        nd = nodes[name]
        n_lim = limit("neurons_per_core", core)
        hi_max = nd.size if n_lim is None else min(nd.size, lo + n_lim)
        a = axons_in[name]
        s0, s1 = a.indptr[lo], a.indptr[hi_max]
        new = np.concatenate([[0], np.cumsum(prev[s0:s1] < s0)])
        his = np.arange(lo + 1, hi_max + 1)
        fi = new[a.indptr[lo + 1:hi_max + 1] - s0]
        ok = np.ones(his.size, dtype=bool)
        if profile.fan_in_per_core is not None:
            ok &= fi <= profile.fan_in_per_core
        if profile.weight_storage == "shared_kernel":
            if len(nd.shape) == 3 and not any(pr.kind == "linear" for pr in incoming[name]):
                fs = (his - 1) // nd.channel_size - lo // nd.channel_size + 1   # depends on the channels only
                table = {int(f): kernel_weights(name, int(f), 0) for f in np.unique(fs)}
                w = np.array([table[int(f)] for f in fs], dtype=np.int64)
            else:
                w = np.array([kernel_weights(name, channels(name, lo, h), h - lo) for h in his], dtype=np.int64)
        elif profile.weight_storage == "crossbar":
            w = fi * (his - lo)
        else:
            w = prefix[lo + 1:hi_max + 1] - prefix[lo]
        m_lim = limit("synaptic_memory_weights_per_core", core)
        if m_lim is not None:
            ok &= w <= m_lim
        b_lim = limit("synaptic_memory_bits_per_core", core)
        if b_lim is not None and weight_bits:
            ok &= w * weight_bits <= b_lim
        return lo + (int(ok.argmin()) if not ok.all() else his.size)

    def lonely(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per neuron (placement order) on a core of its own: (breaks a limit?, fan-in, weights held)."""
        nd = nodes[name]
        fi = np.diff(axons_in[name].indptr).astype(np.int64)     # rows hold distinct axons
        if profile.weight_storage == "shared_kernel":
            w = np.full(nd.size, kernel_weights(name, 1, 1), dtype=np.int64)
        elif profile.weight_storage == "crossbar":
            w = fi
        else:
            w = syn_in[name]
        bad = np.zeros(nd.size, dtype=bool)
        if profile.fan_in_per_core is not None:
            bad |= fi > profile.fan_in_per_core
        m_lim = limit("synaptic_memory_weights_per_core", 0)
        if m_lim is not None:
            bad |= w > m_lim
        b_lim = limit("synaptic_memory_bits_per_core", 0)
        if b_lim is not None and weight_bits:
            bad |= w * weight_bits > b_lim
        return bad, fi, w

    def run_alone(name: str, label: str, lo: int, hi: int, alone, owner: np.ndarray, base: int) -> None:
        """Neurons [lo, hi) each alone on a core, each breaking a limit: one violation per resource."""
        _, fi, w = alone
        first, n = len(core_node), hi - lo
        where = (f"{n} neurons of {label} break it even alone (cores {first}-{first + n - 1})" if n > 1
                 else f"one neuron of {label} (core {first})")
        checks = (("synaptic memory per core (weights)", w, limit("synaptic_memory_weights_per_core", 0)),
                  ("synaptic memory per core (bits)", w * (weight_bits or 0),
                   limit("synaptic_memory_bits_per_core", 0) if weight_bits else None),
                  ("fan-in per core", fi, profile.fan_in_per_core))
        for resource, need, lim in checks:
            if lim is not None and need[lo:hi].max() > lim:
                violations.append(Violation(resource, int(need[lo:hi].max()), lim, where))
        core_node.extend([label] * n)
        core_mem_w.extend(w[lo:hi].tolist())
        owner[base + perm[name][lo:hi]] = np.arange(first, first + n)
        nodes[name].cores.extend(range(first, first + n))

    def new_core(label: str, weights: int) -> int:
        core_node.append(label)
        core_mem_w.append(weights)
        return len(core_node) - 1

    overflow_at = None
    for name in placed:
        nd = nodes[name]
        prefix = np.concatenate([[0], np.cumsum(syn_in[name])])
        prev = _previous_same(axons_in[name].indices) if profile.split_populations else None
        owner = np.empty(nd.size * nd.copies, dtype=np.int64)
        pm = perm[name]
        for c in range(nd.copies):
            label = name + (" (OFF)" if c == 1 else "")
            if not profile.split_populations:
                fi = fan_in(name, 0, nd.size)
                w = memory(name, 0, nd.size, prefix, fi)
                found = {k: breaks_given(k, nd.size, fi, w, f"{label}, core {k}") for k in free_unsplit}
                fitting = [k for k in free_unsplit if not found[k]]
                if fitting:
                    k = min(fitting, key=lambda k: (limit("neurons_per_core", k) or 0, k))
                elif free_unsplit:
                    k = min(free_unsplit, key=lambda k: (len(found[k]), -(limit("neurons_per_core", k) or 0), k))
                    violations.extend(found[k])
                else:                                  # the chip's cores are spent: a virtual core
                    k = len(core_node)
                    violations.extend(breaks_given(k, nd.size, fi, w, f"{label}, core {k}"))
                if k in free_unsplit:
                    free_unsplit.remove(k)
                while len(core_node) <= k:
                    new_core("", 0)
                core_node[k] = label
                core_mem_w[k] = w
                owner[c * nd.size + pm] = k
                nd.cores.append(k)
                continue
            alone = None if profile.heterogeneous else lonely(name)
            lo = 0
            while lo < nd.size:
                k = len(core_node)
                if alone is not None and alone[0][lo]:   # a run of neurons that break a limit even alone
                    rest = alone[0][lo:]
                    hi = lo + int(np.argmin(rest)) if not rest.all() else nd.size
                    run_alone(name, label, lo, hi, alone, owner, c * nd.size)
                    lo = hi
                    continue
                hi = largest_block(name, k, lo, prefix, prev)
                if hi == lo:                           # not even one neuron fits: place it, report it
                    hi = lo + 1
                    violations.extend(breaks(name, label, k, lo, hi, prefix, f"one neuron of {label} (core {k})"))
                new_core(label, memory(name, lo, hi, prefix))
                owner[c * nd.size + pm[lo:hi]] = k
                nd.cores.append(k)
                lo = hi
                if overflow_at is None and len(core_node) > profile.cores:
                    overflow_at = len(violations)      # the chip's cores ran out here, in placement order
        nd.core_of = owner
        if overflow_at is None and sum(1 for label in core_node if label) > profile.cores:
            overflow_at = len(violations)
    core_of = {name: nodes[name].core_of for name in placed}
    used = [k for k, label in enumerate(core_node) if label]
    n_cores = len(core_node)
    if len(used) > profile.cores:
        violations.insert(overflow_at if overflow_at is not None else len(violations),
                          Violation("cores", len(used), profile.cores,
                                    f"{-(-len(used) // profile.cores)} chips' worth; ran out placing "
                                    f"{core_node[profile.cores] if profile.split_populations else 'the network'}"))

    # what each core holds, and the fan-out now that every target has its cores
    core_neurons = np.zeros(n_cores, dtype=np.int64)
    for name in placed:
        np.add.at(core_neurons, core_of[name], 1)
    place = {}
    for name in placed:
        nd = nodes[name]
        rows = np.tile(np.arange(nd.size), nd.copies)
        place[name] = sp.csr_matrix((np.ones(rows.size, dtype=np.int64), (rows, core_of[name])),
                                    shape=(nd.size, n_cores))
    sources = ([INPUT] if spikes_in else []) + order
    outgoing, target_cores = {}, {}
    core_syn = np.zeros(n_cores, dtype=np.int64)
    core_fan_in = np.zeros(n_cores, dtype=np.int64)
    core_fan_out = np.zeros(n_cores, dtype=np.int64)
    for name in sources:
        nd = nodes[name]
        m = sp.csr_matrix((nd.size, n_cores), dtype=np.int64)
        for pr in spiking:
            if pr.source == name:
                m = m + S[pr.name].astype(np.int64) @ place[pr.target]
        m = m.tocsr()
        m.eliminate_zeros()
        m.sort_indices()
        outgoing[name] = m
        dcount = np.diff(m.indptr).astype(np.int64)
        target_cores[name] = dcount
        core_syn += np.asarray(m.sum(axis=0)).ravel().astype(np.int64) * nd.copies
        core_fan_in += np.bincount(m.indices, minlength=n_cores).astype(np.int64) * nd.copies
        if nd.on_chip:
            np.add.at(core_fan_out, core_of[name], np.tile(dcount, nd.copies))
            lim = profile.fan_out_cores_per_neuron
            if lim is not None and dcount.size and dcount.max() > lim:
                violations.append(Violation("fan-out cores per neuron", int(dcount.max()), lim,
                                            f"a neuron of {name}"))
    if profile.fan_out_per_core is not None and n_cores and core_fan_out.max() > profile.fan_out_per_core:
        k = int(core_fan_out.argmax())
        violations.append(Violation("fan-out per core", int(core_fan_out[k]), profile.fan_out_per_core,
                                    f"{core_node[k]}, core {k}"))
    if profile.weight_values_per_neuron is not None:
        worst = _weight_values(incoming, nodes)
        if worst and worst[0] > profile.weight_values_per_neuron:
            violations.append(Violation("weight values per neuron", worst[0], profile.weight_values_per_neuron,
                                        f"a neuron of {worst[1]}"))
    if profile.neurons_per_chip is not None and core_neurons.sum() > profile.neurons_per_chip:
        violations.append(Violation("neurons per chip", int(core_neurons.sum()), profile.neurons_per_chip,
                                    "whole network"))
    if profile.synapses_per_chip is not None and core_syn.sum() > profile.synapses_per_chip:
        violations.append(Violation("synapses per chip", int(core_syn.sum()), profile.synapses_per_chip,
                                    "whole network"))
    mem_w = np.array(core_mem_w, dtype=np.int64)
    mem_bits = mem_w * weight_bits if weight_bits else None
    factor = {pr.name: nodes[pr.target].copies for pr in spiking}
    return Mapping(profile, nodes, placed, core_node, core_neurons, core_syn, mem_bits, mem_w, core_fan_in,
                   core_fan_out, outgoing, target_cores, factor, violations, host, weight_bits)


def _weight_values(incoming: dict, nodes: dict) -> tuple[int, str] | None:
    """The most distinct non-zero weight values any one neuron receives, and its population.

    A mirrored source's OFF copy reaches the same neuron with the negated weights, which count too.
    Conv targets are checked per output channel (all its neurons see the same kernel values)."""
    best = None
    for name, projs in incoming.items():
        if not projs:
            continue
        nd = nodes[name]
        per_neuron = any(pr.kind == "linear" for pr in projs) or len(nd.shape) != 3
        n_groups = nd.size if per_neuron else nd.shape[0]
        sets = [set() for _ in range(n_groups)]

        def add(groups, vals, mirrored):
            vals = set(vals.tolist())
            if mirrored:
                vals |= {-v for v in vals}
            for g in groups:
                sets[g].update(vals)

        for pr in projs:
            mirrored = nodes[pr.source].copies == 2
            if pr.kind == "identity":
                if pr.scale != 0:
                    add(range(n_groups), np.array([pr.scale]), mirrored)
            elif pr.kind == "conv2d":
                per_channel = nd.size // pr.weight.shape[0]
                for co in range(pr.weight.shape[0]):
                    vals = np.unique(pr.weight[co][pr.weight[co] != 0])
                    add(range(co * per_channel, (co + 1) * per_channel) if per_neuron else (co,), vals, mirrored)
            else:
                for i in range(pr.weight.shape[0]):
                    add((i,), np.unique(pr.weight[i][pr.weight[i] != 0]), mirrored)
        worst = max(len(s) for s in sets)
        if best is None or worst > best[0]:
            best = (worst, name)
    return best

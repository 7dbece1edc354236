"""Fixed-point networks: what a chip's integer arithmetic makes of a folded network.

A fixed-point network is an ordinary :class:`~evsim.graph.Network` whose ``fixed_point`` is a
:class:`FixedPoint`. Every number in it is then an integer in the units this record states
(docs/FIXED_POINT.md gives the equations and the error bounds):

* each population ``p`` (and the readout) has a membrane unit ``q_p``: the real value of one LSB;
* an event-driven projection's weight holds the integers it adds to its target's membrane, in
  ``q_target`` units: ``level * step`` with ``|level| <= 2**(B-1) - 1`` (B = ``weight_bits``;
  B = 2 makes every weight one of -step, 0, +step: one constant per layer) and ``step >= 1``;
  an identity projection's scale is its integer step;
* a projection from a direct-encoded input holds its integer levels; its current is
  ``(sum(x_int * level) * mult) >> shift`` with ``x_int`` the input quantised to ``input_unit``;
* biases are integers in the target's units; a population's constants are integers too:
  ``v_threshold`` in membrane units, ``tau`` and the CTSN/CUBA ``k_*`` as numerators over
  ``2**frac_bits`` (tau = 0.25 is exactly a right shift by 2);
* membranes saturate at ``membrane_bits``; ``>>`` is an arithmetic shift (floor).

:func:`quantize` turns a real-valued network into one (post-training, symmetric per-projection
scales, round half to even). The engine runs it in int32 or, where :attr:`FixedPoint.accumulator_bits`
allows, int16 (:mod:`evsim.kernels`, ``fire_fixed``); :mod:`evsim.bridge.dense` holds the integer
PyTorch reference it is checked against bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import NetworkError
from .graph import INPUT, READOUT, Network
from .neurons import neuron_model

WEIGHT_BITS = (2, 16)        # allowed range of weight_bits
MEMBRANE_BITS = (4, 32)
FRAC_BITS = (1, 24)
HEADROOM_BITS = 3            # the membrane saturates at +- 2**3 thresholds (default membrane unit rule)
RESCALE_BITS = 62            # |acc * mult| of a direct-input current stays below 2**62
CONSTANTS = ("tau", "k_alpha", "k_beta", "k_gamma", "k_syn")      # multipliers over 2**frac_bits


def round_half_even(x) -> np.ndarray:
    """Round to the nearest integer, ties to even (NumPy's rule: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2)."""
    return np.round(np.asarray(x, dtype=np.float64))


def saturate(x, bits: int):
    """Clamp to the signed ``bits``-bit range [-2**(bits-1), 2**(bits-1) - 1]."""
    return np.clip(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def membrane_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass
class FixedPoint:
    """The units and widths of a fixed-point network (see the module docstring)."""

    weight_bits: int
    membrane_bits: int
    frac_bits: int
    membrane_unit: dict[str, float]                  # population name or "readout" -> real value of one LSB
    steps: dict[str, int] = field(default_factory=dict)       # event-driven projection -> membrane units per level
    weight_scale: dict[str, float] = field(default_factory=dict)   # projection -> real value of one level
    rescale: dict[str, tuple[int, int]] = field(default_factory=dict)   # direct-input projection -> (mult, shift)
    input_unit: float = 1.0                           # direct encoding: real value of one input level
    input_levels: tuple[int, int] = (0, 0)            # clamp range of the quantised input
    accumulator_bits: int = 32                        # widest signed worst case of one step's accumulator

    @property
    def levels(self) -> int:
        """The largest weight level, 2**(B-1) - 1."""
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def input_max(self) -> int:
        """The largest |input level| of a direct-encoded input."""
        return max(abs(self.input_levels[0]), abs(self.input_levels[1]))

    def quantise_input(self, x: np.ndarray) -> np.ndarray:
        """A direct-encoded batch as integer levels (int64): round half to even, clamped."""
        lo, hi = self.input_levels
        return np.clip(round_half_even(np.asarray(x, dtype=np.float64) / self.input_unit), lo, hi).astype(np.int64)

    # ------------------------------------------------------------------ file form
    def to_json(self) -> str:
        return json.dumps({"weight_bits": self.weight_bits, "membrane_bits": self.membrane_bits,
                           "frac_bits": self.frac_bits, "membrane_unit": self.membrane_unit, "steps": self.steps,
                           "weight_scale": self.weight_scale,
                           "rescale": {k: list(v) for k, v in self.rescale.items()},
                           "input_unit": self.input_unit, "input_levels": list(self.input_levels),
                           "accumulator_bits": self.accumulator_bits}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FixedPoint":
        """Parse and type-check (the values are checked against the network by :func:`check`)."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise NetworkError(f"fixed_point is not valid JSON ({str(e)[:80]})") from None
        keys = {"weight_bits", "membrane_bits", "frac_bits", "membrane_unit", "steps", "weight_scale", "rescale",
                "input_unit", "input_levels", "accumulator_bits"}
        if not isinstance(d, dict) or set(d) != keys:
            raise NetworkError(f"fixed_point must be an object with exactly the keys {', '.join(sorted(keys))}")

        def integer(v, what, lo, hi):
            if not (isinstance(v, int) and not isinstance(v, bool)) or not lo <= v <= hi:
                raise NetworkError(f"fixed_point {what} must be an integer in [{lo}, {hi}], got {v!r}")
            return v

        def real(v, what):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise NetworkError(f"fixed_point {what} must be a positive finite number, got {v!r}")
            return float(v)

        def table(v, what, check):
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise NetworkError(f"fixed_point {what} must be an object keyed by name")
            return {k: check(x, f"{what}[{k!r}]") for k, x in v.items()}

        def pair(v, what, lo, hi):
            if not isinstance(v, list) or len(v) != 2:
                raise NetworkError(f"fixed_point {what} must be a pair of integers")
            return integer(v[0], what, lo, hi), integer(v[1], what, lo, hi)

        return cls(weight_bits=integer(d["weight_bits"], "weight_bits", *WEIGHT_BITS),
                   membrane_bits=integer(d["membrane_bits"], "membrane_bits", *MEMBRANE_BITS),
                   frac_bits=integer(d["frac_bits"], "frac_bits", *FRAC_BITS),
                   membrane_unit=table(d["membrane_unit"], "membrane_unit", real),
                   steps=table(d["steps"], "steps", lambda v, w: integer(v, w, 1, (1 << 31) - 1)),
                   weight_scale=table(d["weight_scale"], "weight_scale", real),
                   rescale=table(d["rescale"], "rescale", lambda v, w: pair(v, w, 0, (1 << 62))),
                   input_unit=real(d["input_unit"], "input_unit"),
                   input_levels=pair(d["input_levels"], "input_levels", -(1 << 31), (1 << 31) - 1),
                   accumulator_bits=integer(d["accumulator_bits"], "accumulator_bits", 2, 32))


def _is_integer(a) -> bool:
    a = np.asarray(a, dtype=np.float64)
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))


def check(network: Network) -> None:
    """Refuse a fixed-point network whose numbers are not what its :class:`FixedPoint` says (a file
    edited by hand, or a hostile one): integers everywhere, levels within the weight bits, every
    name known, the accumulator within 32 bits. One :class:`NetworkError` line."""
    fx = network.fixed_point
    pops = {p.name: p for p in network.populations}
    if set(fx.membrane_unit) != set(pops) | {READOUT}:
        raise NetworkError("fixed_point: membrane_unit must name every population and the readout")
    names = {pr.name for pr in network.projections}
    for what, tab in (("steps", fx.steps), ("weight_scale", fx.weight_scale), ("rescale", fx.rescale)):
        unknown = sorted(set(tab) - names)
        if unknown:
            raise NetworkError(f"fixed_point {what} names {unknown[0]!r}, which is not a projection")
    direct = network.encoding == "direct"
    for pr in network.projections:
        where = f"fixed-point projection {pr.name!r}"
        from_input = direct and pr.source == INPUT
        if from_input != (pr.name in fx.rescale):
            raise NetworkError(f"{where}: a rescale (mult, shift) is given exactly for projections from a "
                               f"direct-encoded input")
        if not from_input and pr.name not in fx.steps:
            raise NetworkError(f"{where}: no step")
        if pr.kind == "identity":
            if not _is_integer(pr.scale) or abs(pr.scale) > (1 << 31):
                raise NetworkError(f"{where}: an identity's scale must be an integer (target units)")
            continue
        if not _is_integer(pr.weight) or (pr.bias is not None and not _is_integer(pr.bias)):
            raise NetworkError(f"{where}: weights and biases must be integers")
        unit = 1 if from_input else fx.steps[pr.name]
        levels = np.abs(pr.weight)
        if levels.size and (float(levels.max()) > fx.levels * unit or np.any(np.fmod(pr.weight, unit) != 0)):
            raise NetworkError(f"{where}: weights must be multiples of the step {unit} with levels within "
                               f"+-{fx.levels} ({fx.weight_bits} bits)")
        if from_input:      # acc * mult is an int64 product (engine and reference): it must not wrap
            mult, shift = fx.rescale[pr.name]
            if shift > 62 or direct_level_bound(network, pr) * mult >= 2.0 ** RESCALE_BITS:
                raise NetworkError(f"{where}: rescale ({mult}, {shift}) can overflow 64 bits (|acc * mult| must "
                                   f"stay below 2**{RESCALE_BITS}, shift at most 62)")
    for p in network.populations:
        missing = [k for k in neuron_model(p.model).params if k not in p.params]
        if missing:
            raise NetworkError(f"fixed-point population {p.name!r}: constants {', '.join(missing)} must be given "
                               f"(a default is real-valued)")
        for k, v in p.params.items():
            if not _is_integer(v) or abs(v) > (1 << 31):
                raise NetworkError(f"fixed-point population {p.name!r}: constant {k} = {v!r} must be an integer")
        if p.params.get("v_threshold", 1) < 1:
            raise NetworkError(f"fixed-point population {p.name!r}: v_threshold must be >= 1")
        for k in CONSTANTS:         # |multiplier| <= 1 is what accumulator_bits' bound assumes
            if k in p.params and abs(p.params[k]) > (1 << fx.frac_bits):
                raise NetworkError(f"fixed-point population {p.name!r}: constant {k} = {p.params[k]:g} is more "
                                   f"than 1 (2**{fx.frac_bits} over 2**frac_bits)")
    lo, hi = fx.input_levels
    if lo > hi:
        raise NetworkError("fixed_point input_levels must have lo <= hi")
    need = accumulator_bits(network)
    if need > 32:
        raise NetworkError(f"fixed-point network: one step's accumulator can need {need} bits, more than 32")
    if fx.accumulator_bits != need:         # the compiler trusts it to allow int16
        raise NetworkError(f"fixed_point accumulator_bits is {fx.accumulator_bits} but the network needs {need}")


def fan_in(weight) -> float:
    """The largest sum of |weight| over one target neuron's synapses (axis 0: the targets), 0 if empty."""
    w = np.abs(np.asarray(weight))
    return float(w.reshape(w.shape[0], -1).sum(axis=1).max()) if w.size else 0.0


def fan_in_bound(pr) -> float:
    """The largest sum of |weight| that one target neuron can receive through ``pr`` in one step."""
    return abs(pr.scale) if pr.kind == "identity" else fan_in(pr.weight)


def direct_level_bound(network: Network, pr) -> float:
    """The largest |sum of input level x weight level| a direct-input projection gives one neuron (before
    its rescale): what its accumulator must hold."""
    return fan_in_bound(pr) * network.fixed_point.input_max


def direct_bound(network: Network, pr) -> float:
    """The largest |current| a direct-input projection can give one neuron (in its target's units)."""
    mult, shift = network.fixed_point.rescale[pr.name]
    return math.floor(direct_level_bound(network, pr) * mult / 2.0 ** shift) + 1


def readout_event_bound(network: Network) -> float:
    """The largest |sum over T steps| of what the event-driven projections into the readout add (direct-input
    ones and biases are added outside the driver, in int64)."""
    fx = network.fixed_point
    direct = network.encoding == "direct"
    per_step = sum(fan_in_bound(pr) for pr in network.incoming(READOUT)
                   if not (direct and pr.source == INPUT and pr.name in fx.rescale))
    return network.timesteps * per_step


def readout_accumulator(network: Network, dtype) -> np.dtype:
    """The type the engine's driver sums the readout's T steps of events in: the run's (``dtype``) for a
    real network, or a fixed-point one whose readout sum fits it (:func:`readout_event_bound`); else int32
    where the sum fits that (an int16 run then holds the readout's weights as int32 too: the vector runs
    take one type), else int64, which never saturates (the synaptic runs then take the plain loops)."""
    dtype = np.dtype(dtype)
    if network.fixed_point is None:
        return dtype
    bound = readout_event_bound(network)
    for t in (dtype, np.dtype(np.int32)):
        if bound < np.iinfo(t).max:
            return t
    return np.dtype(np.int64)


def readout_weight_dtype(network: Network, dtype) -> np.dtype:
    """The type of the weights of a readout projection compiled for ``dtype``: the readout accumulator's
    where it is int32 (:func:`readout_accumulator`), else ``dtype``."""
    acc = readout_accumulator(network, dtype)
    return acc if acc == np.int32 else np.dtype(dtype)


def accumulator_bits(network: Network) -> int:
    """Signed bits one step's accumulator of the widest population can need: the membrane's own part
    (up to three membrane ranges for CUBA, plus a threshold for reset by subtraction), the biases and
    direct currents, and every incoming projection's largest sum of |weight| at once."""
    fx = network.fixed_point
    top = 1 << (fx.membrane_bits - 1)
    worst = 0.0
    for p in network.populations:
        incoming = network.incoming(p.name)
        bound = 3 * top + p.params.get("v_threshold", 0)
        for pr in incoming:
            if pr.name in fx.rescale:
                bound += direct_bound(network, pr)
            else:
                bound += fan_in_bound(pr)
            if pr.bias is not None and pr.bias.size:
                bound += float(np.abs(pr.bias).max())
        worst = max(worst, bound)
    return int(math.ceil(math.log2(worst + 1))) + 1


def synaptic_input_bits(network: Network) -> int:
    """Signed bits the event-driven synaptic input of one step into one neuron can need, over every
    population: the sum of its incoming event-driven projections' largest sums of |weight| (what the
    spikes of one step, each +-1, can add at most). Biases and direct-input currents are not part of
    it (the driver adds them to the membrane), nor is the membrane itself.

    Where it is at most 16, an int32 run accumulates each step's synaptic input apart from the
    membranes, in int16 (32 lanes per AVX-512 vector instead of 16), and adds it to them when the
    population fires: the same integers, since adds wrap modulo 2**16 and the step's final sum
    fits (:func:`evsim.compiler.compile_network`, ``narrow_synaptic``)."""
    direct = network.encoding == "direct"       # a direct-encoded input's projections feed the drive
    worst = 0.0
    for p in network.populations:
        worst = max(worst, sum(fan_in_bound(pr) for pr in network.incoming(p.name)
                               if not (direct and pr.source == INPUT)))
    return int(math.ceil(math.log2(worst + 1))) + 1


# ---------------------------------------------------------------------- quantiser
SCALE_RULES = ("mse", "max")
SCALE_CANDIDATES = 96       # clipping points tried by the "mse" rule, evenly over (0, max|W|]


def weight_scale(w: np.ndarray, weight_bits: int, rule: str = "mse") -> float:
    """The real value of one weight level of a projection (symmetric, no zero point).

    ``"max"``: ``max|W| / L`` (L = 2**(B-1) - 1): no weight clips, but at 2 bits (L = 1) every weight
    under half the largest rounds to zero. ``"mse"``: the scale among ``k/96 * max|W| / L`` (k = 1..96)
    whose round-half-even, clamped levels are nearest the weights in squared error (ties: the larger
    scale); the usual post-training choice of a clipping range, and at 2 bits a ternary-weight
    threshold chosen from the data. 0 for an all-zero weight.
    """
    a = np.abs(np.asarray(w, dtype=np.float64)).reshape(-1)
    top = float(a.max()) if a.size else 0.0
    if top == 0.0:
        return 0.0
    L = (1 << (weight_bits - 1)) - 1
    if rule == "max":
        return top / L
    if rule != "mse":
        raise NetworkError(f"unknown scale rule {rule!r} (known: {', '.join(SCALE_RULES)})")
    best, best_err = top / L, None
    for k in range(SCALE_CANDIDATES, 0, -1):
        s = top / L * k / SCALE_CANDIDATES
        err = float(np.square(np.minimum(np.round(a / s), L) * s - a).sum())
        if best_err is None or err < best_err:
            best, best_err = s, err
    return best


def membrane_unit(scales, v_threshold: float, membrane_bits: int, headroom_bits: int = HEADROOM_BITS) -> float:
    """A population's membrane unit: ``max(min s over its incoming event projections (s > 0),
    v_threshold / 2**(M-1-headroom))``: as fine as its finest weights, never so fine that the M-bit
    membrane saturates below ``2**headroom`` thresholds."""
    floor = v_threshold / 2.0 ** (membrane_bits - 1 - headroom_bits)
    scales = [s for s in scales if s > 0]
    return max(min(scales), floor) if scales else floor


def readout_unit(scales) -> float:
    """The readout's unit: its finest projection's scale (its int64 sum needs no headroom), 1 if none."""
    scales = [s for s in scales if s > 0]
    return min(scales) if scales else 1.0


def step_of(scale: float, unit: float) -> int:
    """Target units one weight level is worth: ``max(1, round(s / q))`` (1 for an all-zero weight)."""
    return max(1, int(round_half_even(scale / unit))) if scale > 0 else 1


def input_quantisation(input_range, input_bits: int) -> tuple[float, tuple[int, int]]:
    """The unit and the (lo, hi) levels of a direct-encoded input over ``input_range`` ((-1, 1) if None):
    unsigned levels 0 .. 2**I - 1 for a range from 0 up (no zero point: 0 stays exactly 0), signed and
    symmetric levels within +-(2**(I-1) - 1) otherwise."""
    lo, hi = input_range if input_range is not None else (-1.0, 1.0)
    if lo >= 0:
        unit = hi / ((1 << input_bits) - 1)
    else:
        unit = max(-lo, abs(hi)) / ((1 << (input_bits - 1)) - 1)
    if unit <= 0:
        unit = 1.0
    return unit, (int(round_half_even(lo / unit)), int(round_half_even(hi / unit)))


def leak(tau: int, frac_bits: int) -> tuple[int, int]:
    """The leak ``(tau * u) >> F`` as ``(mult, shift)`` for the engine: ``(1, F - k)`` when tau = 2**k
    (k <= F: tau = 0.25 is a shift by 2, as on a chip; ``(2**k * u) >> F`` equals ``u >> (F - k)`` for
    every integer u), else ``(tau, F)``."""
    tau = int(tau)
    if tau > 0 and tau & (tau - 1) == 0 and tau.bit_length() - 1 <= frac_bits:
        return 1, frac_bits - (tau.bit_length() - 1)
    return tau, frac_bits


def quantize(network: Network, weight_bits: int, membrane_bits: int = 16, frac_bits: int = 12,
             input_bits: int = 8, headroom_bits: int = HEADROOM_BITS, scale_rule: str = "mse") -> Network:
    """A real-valued network made fixed point, post training (docs/FIXED_POINT.md, "The quantiser").

    Per projection a symmetric scale ``s`` (:func:`weight_scale`, rule ``scale_rule``). A population's membrane unit is
    ``q = max(min s over its incoming event projections, v_threshold / 2**(M-1-headroom))``: as fine as
    its finest weights need, but never so fine that the M-bit membrane saturates below
    ``2**headroom`` thresholds. Each projection then adds ``level * step`` with ``step = max(1,
    round(s / q))`` and ``level = round(W / (step * q))`` clamped to B bits; biases and thresholds are
    rounded to ``q``; every rounding is half to even. The readout's unit is its finest scale (its
    int64 accumulator never saturates). A direct-encoded input is quantised to ``input_bits`` over the
    network's ``input_range`` and its current rescaled by ``(mult, shift)``.
    """
    if network.fixed_point is not None:
        raise NetworkError("the network is already fixed point")
    if scale_rule not in SCALE_RULES:
        raise NetworkError(f"unknown scale rule {scale_rule!r} (known: {', '.join(SCALE_RULES)})")
    for name, v, (lo, hi) in (("weight bits", weight_bits, WEIGHT_BITS), ("membrane bits", membrane_bits,
                                                                        MEMBRANE_BITS),
                              ("fraction bits", frac_bits, FRAC_BITS), ("input bits", input_bits, (2, 16))):
        if not lo <= int(v) <= hi:
            raise NetworkError(f"{name} must be in [{lo}, {hi}], got {v}")
    network.validate()
    net = copy.deepcopy(network)
    L = (1 << (weight_bits - 1)) - 1
    direct = net.encoding == "direct"

    def scale_of(pr) -> float:
        if pr.kind == "identity":
            return abs(pr.scale)
        return weight_scale(pr.weight, weight_bits, scale_rule)

    units: dict[str, float] = {}
    for p in net.populations:
        units[p.name] = membrane_unit([scale_of(pr) for pr in net.incoming(p.name)
                                       if not (direct and pr.source == INPUT)],
                                      p.params["v_threshold"], membrane_bits, headroom_bits)
    units[READOUT] = readout_unit([scale_of(pr) for pr in net.incoming(READOUT)])

    if direct:
        input_unit, input_levels = input_quantisation(net.input_range, input_bits)
    else:
        input_unit, input_levels = 1.0, (0, 0)

    fx = FixedPoint(weight_bits, membrane_bits, frac_bits, units, input_unit=input_unit, input_levels=input_levels)
    for pr in net.projections:
        q = units[pr.target]
        if pr.kind == "identity":      # adds +-scale: an integer number of target units (0: a pruned shortcut)
            value = int(round_half_even(pr.scale / q))
            pr.scale = float(value)
            fx.steps[pr.name] = max(1, abs(value))
            fx.weight_scale[pr.name] = max(1, abs(value)) * q
            continue
        s = scale_of(pr)
        if direct and pr.source == INPUT:
            levels = np.clip(round_half_even(pr.weight / s), -L, L) if s > 0 else np.zeros_like(pr.weight)
            ratio = (input_unit * s / q) if s > 0 else 0.0
            acc_max = max(1.0, fan_in(levels) * max(abs(input_levels[0]), abs(input_levels[1]), 1))
            shift = 0
            while shift < 62 and acc_max * ratio * 2.0 ** (shift + 1) < 2.0 ** RESCALE_BITS and shift < 48:
                shift += 1
            mult = int(round_half_even(ratio * 2.0 ** shift))
            fx.rescale[pr.name] = (mult, shift)
            fx.weight_scale[pr.name] = s if s > 0 else 1.0
            pr.weight = levels
        else:
            step = step_of(s, q)
            levels = np.clip(round_half_even(pr.weight / (step * q)), -L, L) if s > 0 else np.zeros_like(pr.weight)
            fx.steps[pr.name] = step
            fx.weight_scale[pr.name] = step * q
            pr.weight = levels * step
        if pr.bias is not None:
            pr.bias = round_half_even(pr.bias / q)
    for p in net.populations:
        q = units[p.name]
        prm = dict(neuron_model(p.model).defaults)     # every constant explicit: a default is real-valued
        prm.update(p.params)
        prm["v_threshold"] = max(1.0, float(round_half_even(prm["v_threshold"] / q)))
        for k in CONSTANTS:
            if k in prm:
                prm[k] = float(round_half_even(prm[k] * 2.0 ** frac_bits))
        p.params = prm
    net.fixed_point = fx
    fx.accumulator_bits = accumulator_bits(net)
    if fx.accumulator_bits > 32:
        raise NetworkError(f"with {weight_bits}-bit weights and {membrane_bits}-bit membranes one step's "
                           f"accumulator can need {fx.accumulator_bits} bits (more than 32): use fewer membrane bits")
    net.provenance = dict(net.provenance, quantized={"weight_bits": weight_bits, "membrane_bits": membrane_bits,
                                                     "frac_bits": frac_bits, "input_bits": input_bits,
                                                     "scale_rule": scale_rule})
    check(net)
    return net


def real_outputs(network: Network, outputs: np.ndarray) -> np.ndarray:
    """Integer outputs of a fixed-point run as real logits: ``q_readout * output / T``."""
    return np.asarray(outputs, dtype=np.float64) * network.fixed_point.membrane_unit[READOUT] / network.timesteps


# ---------------------------------------------------------------------- description
INT16_BITS = 16


def summary(network: Network) -> dict:
    """What ``evsim quantize`` and ``evsim info`` report about a fixed-point network (JSON-ready)."""
    fx = network.fixed_point
    rows = []
    for pr in network.projections:
        row = {"name": pr.name, "kind": pr.kind, "target": pr.target,
               "target_unit": fx.membrane_unit[pr.target], "level_scale": fx.weight_scale.get(pr.name)}
        if pr.name in fx.rescale:
            row["rescale"] = list(fx.rescale[pr.name])
        else:
            row["step"] = fx.steps[pr.name]
        rows.append(row)
    return {"weight_bits": fx.weight_bits, "membrane_bits": fx.membrane_bits, "frac_bits": fx.frac_bits,
            "accumulator_bits": fx.accumulator_bits, "int16": fx.accumulator_bits <= INT16_BITS,
            "synaptic_input_bits": synaptic_input_bits(network),
            "input_unit": fx.input_unit if network.encoding == "direct" else None,
            "input_levels": list(fx.input_levels) if network.encoding == "direct" else None,
            "membrane_unit": dict(fx.membrane_unit), "projections": rows}


def format_summary(network: Network) -> str:
    """:func:`summary` as a few lines and one table, one row per projection."""
    from .reports import table
    s = summary(network)
    lines = [f"fixed point: {s['weight_bits']}-bit weights, {s['membrane_bits']}-bit membranes, constants over "
             f"2**{s['frac_bits']}; accumulators need {s['accumulator_bits']} bits: "
             + ("runs in int32 or int16" if s["int16"] else "runs in int32 (int16 needs at most 16)")
             + f"; a step's synaptic input needs {s['synaptic_input_bits']} bits"
             + (" (an int32 run sums it in int16)" if s["synaptic_input_bits"] <= INT16_BITS else "")]
    if s["input_unit"] is not None:
        lines.append(f"  input: levels {s['input_levels'][0]}..{s['input_levels'][1]} of {s['input_unit']:.6g}")
    rows = []
    for r in s["projections"]:
        how = f"x{r['rescale'][0]} >> {r['rescale'][1]}" if "rescale" in r else f"step {r['step']}"
        rows.append([r["name"], r["kind"], how, f"{r['level_scale']:.6g}" if r["level_scale"] else "-",
                     f"{r['target_unit']:.6g}"])
    lines += ["", table(rows, ["projection", "kind", "step / rescale", "real per level", "target unit (real)"])]
    return "\n".join(lines)

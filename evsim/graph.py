"""In-memory network graph: populations of neurons joined by projections.

This module knows nothing of HDF5, Numba or PyTorch. It is the one
description of a folded network that the file format (:mod:`evsim.format`)
reads and writes, the compiler (:mod:`evsim.compiler`) lowers to CSR, and
the PyTorch bridge produces. Every array shape is stated in the docstrings
and checked once, in :meth:`Network.validate`, never in the hot path.

Conventions
-----------
* A population's ``shape`` is ``(C, H, W)`` for a feature map or ``(n,)`` for
  a flat layer, exactly as PyTorch would index it.
* Sources are ``"input"`` or a population name; targets are a population
  name or ``"readout"``.
* Fan-in is a sum: every projection into a population adds to its membrane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import NetworkError
from .neurons import NEURON_MODELS, NeuronModel, neuron_model
from .pooling import AvgPool, check_pooled

INPUT = "input"
READOUT = "readout"
RESERVED = (INPUT, READOUT)

PROJECTION_KINDS = ("linear", "conv2d", "identity")
ENCODINGS = ("direct", "spikes")
READOUT_RULES = ("mean",)


def conv_output_hw(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> tuple[int, int]:
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)


@dataclass
class Population:
    """A group of neurons sharing one neuron model.

    shape:  (C, H, W) or (n,)
    model:  a name from :data:`evsim.neurons.NEURON_MODELS`
    params: the model's constants, e.g. ``{"tau": 0.25, "v_threshold": 0.5}``
    """

    name: str
    shape: tuple[int, ...]
    model: str = "ternary_lif"
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.params = {k: float(v) for k, v in self.params.items()}

    @property
    def size(self) -> int:
        return math.prod(self.shape)        # Python ints: no int64 overflow on a hostile shape

    @property
    def neuron(self) -> NeuronModel:
        return neuron_model(self.model)

    @property
    def channels_positions(self) -> tuple[int, int]:
        """(C, P): the channels-last layout the engine uses, P = H*W (1 for flat)."""
        if len(self.shape) == 3:
            return self.shape[0], self.shape[1] * self.shape[2]
        return self.shape[0], 1


@dataclass
class Projection:
    """Weighted connections from a source to a target.

    kind "linear":   weight (n_target, n_source) over the flattened source
                     (PyTorch's C*H*W order); bias (n_target,) or None.
    kind "conv2d":   weight (C_out, C_in, kH, kW); bias (C_out,) or None;
                     stride, padding as (y, x) pairs.
    kind "identity": no weight; each source spike adds ``scale`` times its
                     sign to the neuron at the same index in the target
                     (residual shortcut). Source and target shapes match.

    pool:            conv2d only, optional (format v3): the source is first
                     average-pooled (:class:`evsim.pooling.AvgPool`, as
                     PyTorch's AvgPool2d), then the conv applies to the
                     pooled map. Otherwise average pooling never appears
                     here: the bridge folds it into the projection that
                     follows it wherever that is exact.
    """

    name: str
    source: str
    target: str
    kind: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    scale: float = 1.0
    pool: AvgPool | None = None

    def __post_init__(self):
        self.stride = tuple(int(s) for s in self.stride)
        self.padding = tuple(int(p) for p in self.padding)
        self.scale = float(self.scale)
        if self.weight is not None:
            self.weight = np.asarray(self.weight, dtype=np.float64)
        if self.bias is not None:
            self.bias = np.asarray(self.bias, dtype=np.float64)

    @property
    def n_params(self) -> int:
        return sum(a.size for a in (self.weight, self.bias) if a is not None)


@dataclass
class Network:
    """A folded ternary spiking network, ready to compile.

    input_shape: shape of one sample at one timestep, (C, H, W) or (n,)
    encoding:    "direct" (real values fed to the first projections every
                 step) or "spikes" (a ternary tensor per step, (T, *input_shape))
    readout:     "mean": the readout accumulates its input every step and the
                 output is the average over T (plus the readout bias)
    input_range: (lo, hi) the values a direct-encoded input is expected in;
                 inputs outside are refused rather than answered wrongly
    """

    populations: list[Population]
    projections: list[Projection]
    timesteps: int
    input_shape: tuple[int, ...]
    encoding: str = "direct"
    readout: str = "mean"
    class_names: list[str] | None = None
    input_range: tuple[float, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # a fixed-point network (evsim.fixedpoint.FixedPoint): every number an integer in its units; None: real
    fixed_point: Any = None

    def __post_init__(self):
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.timesteps = int(self.timesteps)
        if self.input_range is not None:
            self.input_range = (float(self.input_range[0]), float(self.input_range[1]))

    # ------------------------------------------------------------------ lookup
    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise NetworkError(f"no population named {name!r}")

    def shape_of(self, node: str) -> tuple[int, ...]:
        if node == INPUT:
            return self.input_shape
        return self.population(node).shape

    def incoming(self, target: str) -> list[Projection]:
        return [p for p in self.projections if p.target == target]

    @property
    def n_classes(self) -> int:
        readers = self.incoming(READOUT)
        return readers[0].weight.shape[0] if readers else 0

    @property
    def n_params(self) -> int:
        return sum(p.n_params for p in self.projections)

    # -------------------------------------------------------------- validation
    def topological_order(self) -> list[str]:
        """Population names so that every source comes before its targets.

        Kahn's algorithm, one wave at a time, each wave in the populations' own
        order: O(V + E) and no recursion, so a 20 000-deep chain is as quick as a
        wide graph. A cycle names the populations left over.
        """
        names = [p.name for p in self.populations]
        rank = {n: i for i, n in enumerate(names)}
        targets: dict[str, set[str]] = {n: set() for n in names}
        for pr in self.projections:
            if pr.target in rank and pr.source in rank:
                targets[pr.source].add(pr.target)
        waiting = {n: 0 for n in names}
        for ts in targets.values():
            for t in ts:
                waiting[t] += 1
        order: list[str] = []
        wave = [n for n in names if waiting[n] == 0]
        while wave:
            order.extend(wave)
            following = []
            for n in wave:
                for t in targets[n]:
                    waiting[t] -= 1
                    if waiting[t] == 0:
                        following.append(t)
            wave = sorted(following, key=rank.__getitem__)
        if len(order) < len(names):
            done = set(order)
            left = sorted(n for n in names if n not in done)
            shown = ", ".join(left[:10]) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
            raise NetworkError(f"the projections form a cycle through populations {shown}")
        return order

    def validate(self, values: bool = True) -> "Network":
        """Check the whole graph once, in O(V + E + weights); raise :class:`NetworkError` naming the problem.

        ``values=False`` checks names, shapes, geometry and connections but not the
        numbers inside the weights: what a reader can check from the shapes a file
        declares, before it loads a single array.
        """
        if self.timesteps < 1:
            raise NetworkError(f"timesteps must be >= 1, got {self.timesteps}")
        if self.encoding not in ENCODINGS:
            raise NetworkError(f"unknown input encoding {self.encoding!r} (known: {', '.join(ENCODINGS)})")
        if self.readout not in READOUT_RULES:
            raise NetworkError(f"unknown readout rule {self.readout!r} (known: {', '.join(READOUT_RULES)})")
        if len(self.input_shape) not in (1, 3) or min(self.input_shape) < 1:
            raise NetworkError(f"input shape must be (C, H, W) or (n,), got {self.input_shape}")
        if self.input_range is not None:
            lo, hi = self.input_range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise NetworkError(f"input_range must be finite with lo <= hi, got {self.input_range}")
        shapes: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        for pop in self.populations:
            if pop.name in RESERVED or not pop.name or "/" in pop.name:
                raise NetworkError(f"invalid population name {pop.name!r}")
            if pop.name in shapes:
                raise NetworkError(f"duplicate population name {pop.name!r}")
            if pop.model not in NEURON_MODELS:
                raise NetworkError(f"population {pop.name!r}: unknown neuron model {pop.model!r} "
                                   f"(known: {', '.join(NEURON_MODELS)})")
            if len(pop.shape) not in (1, 3) or min(pop.shape) < 1:
                raise NetworkError(f"population {pop.name!r}: shape must be (C, H, W) or (n,), got {pop.shape}")
            shapes[pop.name] = pop.shape
            try:
                pop.neuron.check_params(pop.params)
            except ValueError as e:
                raise NetworkError(f"population {pop.name!r}: {e}") from None
        names = set()
        for pr in self.projections:
            if pr.name in names:
                raise NetworkError(f"duplicate projection name {pr.name!r}")
            names.add(pr.name)
            self._validate_projection(pr, shapes, values)
        readers = [pr for pr in self.projections if pr.target == READOUT]
        if not readers:
            raise NetworkError("no projection reaches the readout")
        n_out = {p.weight.shape[0] for p in readers}
        if len(n_out) != 1:
            raise NetworkError(f"projections into the readout disagree on the number of outputs: {sorted(n_out)}")
        n_out = n_out.pop()
        if n_out < 1:
            raise NetworkError("the readout has no outputs (its weight has 0 rows)")
        if self.class_names is not None and len(self.class_names) != n_out:
            raise NetworkError(f"{len(self.class_names)} class names for {n_out} outputs")
        fed = {pr.target for pr in self.projections}
        for pop in self.populations:
            if pop.name not in fed:
                raise NetworkError(f"population {pop.name!r} receives no projection")
        self.topological_order()
        if self.fixed_point is not None and values:
            from .fixedpoint import check
            check(self)
        return self

    def _validate_projection(self, pr: Projection, shapes: dict[str, tuple[int, ...]], values: bool) -> None:
        where = f"projection {pr.name!r}"
        if pr.source not in shapes:
            raise NetworkError(f"{where}: source {pr.source!r} is not the input or a population (dangling)")
        if pr.target != READOUT and (pr.target == INPUT or pr.target not in shapes):
            raise NetworkError(f"{where}: target {pr.target!r} is not a population or the readout (dangling)")
        if pr.source == pr.target:
            raise NetworkError(f"{where}: connects {pr.source!r} to itself (a cycle)")
        if pr.kind not in PROJECTION_KINDS:
            raise NetworkError(f"{where}: unknown kind {pr.kind!r} (known: {', '.join(PROJECTION_KINDS)})")
        if len(pr.stride) != 2 or len(pr.padding) != 2:
            raise NetworkError(f"{where}: stride and padding must be (y, x) pairs, got {pr.stride} and {pr.padding}")
        src = shapes[pr.source]
        n_src = math.prod(src)
        if pr.pool is not None and pr.kind != "conv2d":
            raise NetworkError(f"{where}: only a conv2d projection can pool its source, this one is {pr.kind}")
        if pr.kind == "identity":
            if pr.target == READOUT:
                raise NetworkError(f"{where}: an identity projection cannot feed the readout")
            if pr.weight is not None or pr.bias is not None:
                raise NetworkError(f"{where}: an identity projection takes no weight or bias")
            tgt = shapes[pr.target]
            if tuple(src) != tuple(tgt):
                raise NetworkError(f"{where}: identity needs equal shapes, source {src} vs target {tgt}")
            if not math.isfinite(pr.scale):
                raise NetworkError(f"{where}: scale is not finite")
            if pr.source == INPUT and self.encoding == "direct":
                raise NetworkError(f"{where}: identity from a direct-encoded (real-valued) input is not supported")
            return
        if pr.weight is None:
            raise NetworkError(f"{where}: {pr.kind} projection has no weight")
        if values and not np.all(np.isfinite(pr.weight)):
            raise NetworkError(f"{where}: weight contains NaN or inf")
        if values and pr.bias is not None and not np.all(np.isfinite(pr.bias)):
            raise NetworkError(f"{where}: bias contains NaN or inf")
        if pr.kind == "linear":
            if pr.weight.ndim != 2:
                raise NetworkError(f"{where}: linear weight must be 2-D (n_target, n_source), got shape {pr.weight.shape}")
            n_out, n_in = pr.weight.shape
            if n_in != n_src:
                raise NetworkError(f"{where}: weight shape {pr.weight.shape} expects {n_in} source neurons, "
                                   f"source {pr.source!r} has {n_src}")
            if pr.target != READOUT:
                n_tgt = math.prod(shapes[pr.target])
                if n_out != n_tgt:
                    raise NetworkError(f"{where}: weight shape {pr.weight.shape} gives {n_out} outputs, "
                                       f"target {pr.target!r} has {n_tgt} neurons")
            if pr.bias is not None and pr.bias.shape != (n_out,):
                raise NetworkError(f"{where}: bias shape {pr.bias.shape}, expected ({n_out},)")
            return
        # conv2d
        if pr.target == READOUT:
            raise NetworkError(f"{where}: a conv2d projection cannot feed the readout")
        if pr.pool is not None:
            src = self._pooled_source(pr, src, where)
        if pr.weight.ndim != 4:
            raise NetworkError(f"{where}: conv2d weight must be 4-D (C_out, C_in, kH, kW), got shape {pr.weight.shape}")
        if len(src) != 3:
            raise NetworkError(f"{where}: conv2d needs a (C, H, W) source, {pr.source!r} has shape {src}")
        if min(pr.stride) < 1 or min(pr.padding) < 0:
            raise NetworkError(f"{where}: invalid stride {pr.stride} or padding {pr.padding}")
        c_out, c_in, kh, kw = pr.weight.shape
        if kh < 1 or kw < 1:
            raise NetworkError(f"{where}: kernel must be at least 1x1, got {kh}x{kw}")
        if c_in != src[0]:
            raise NetworkError(f"{where}: weight shape {pr.weight.shape} expects {c_in} input channels, "
                               f"source {pr.source!r} has {src[0]}")
        # bounded by the input, so that no loop over strides or offsets can outgrow the maps
        if pr.padding[0] > src[1] or pr.padding[1] > src[2]:
            raise NetworkError(f"{where}: padding {pr.padding} is larger than the input {src[1]}x{src[2]}")
        padded = (src[1] + 2 * pr.padding[0], src[2] + 2 * pr.padding[1])
        if pr.stride[0] > padded[0] or pr.stride[1] > padded[1]:
            raise NetworkError(f"{where}: stride {pr.stride} is longer than the padded input {padded[0]}x{padded[1]}")
        if kh > padded[0] or kw > padded[1]:
            raise NetworkError(f"{where}: kernel {kh}x{kw} is larger than the padded input {padded[0]}x{padded[1]}")
        ho, wo = conv_output_hw(src[1], src[2], (kh, kw), pr.stride, pr.padding)
        tgt = shapes[pr.target]
        if tuple(tgt) != (c_out, ho, wo):
            raise NetworkError(f"{where}: conv2d output would be {(c_out, ho, wo)}, target {pr.target!r} has shape {tgt}")
        if pr.bias is not None and pr.bias.shape != (c_out,):
            raise NetworkError(f"{where}: bias shape {pr.bias.shape}, expected ({c_out},)")

    def _pooled_source(self, pr: Projection, src: tuple[int, ...], where: str) -> tuple[int, ...]:
        """The shape the conv of a pooled conv sees: the pooled source (checks of docs/FORMAT.md, "Pooled conv")."""
        if not isinstance(pr.pool, AvgPool):
            raise NetworkError(f"{where}: pool must be an evsim.pooling.AvgPool, got {type(pr.pool).__name__}")
        if len(src) != 3:
            raise NetworkError(f"{where}: a pooled conv needs a (C, H, W) source, {pr.source!r} has shape {src}")
        if pr.source == INPUT and self.encoding == "direct":
            raise NetworkError(f"{where}: a pooled conv from a direct-encoded (real-valued) input is not supported "
                               f"(pool the input before it is fed)")
        if self.fixed_point is not None:
            raise NetworkError(f"{where}: a fixed-point network cannot hold a pooled conv (evsim quantize does not "
                               f"quantise average pooling before a conv)")
        hp, wp = check_pooled(where, pr.pool, src)
        return (src[0], hp, wp)

"""Spiking neuron layers for training in PyTorch (multi-step).

Every layer between neurons runs on tensors whose first axis is T*B (the
timesteps folded into the batch, so BatchNorm statistics are taken over
T, B, H, W as in the reference code). A neuron layer unfolds that axis to
(T, B, ...), steps through time, and folds it back.

The forward pass computes the very spikes the engine computes: the same
comparisons (``>=`` / ``<=`` against the effective threshold) in the same
order of operations, so a float64 model and the float64 engine agree spike
for spike. Gradients flow through a straight-through estimator of
``clamp(u / (2 v_th), -1, 1)`` (binary: ``clamp(., 0, 1)``), as in the
authors' code where V_th = 1 and spikes fire at half of it.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class SpikingNeuron(nn.Module, abc.ABC):
    """Base class: holds T, the amplitude ``a`` and optional recordings.

    ``model_name`` is the name of the same neuron model in the file format.
    The amplitude multiplies the emitted spikes during training
    (``o = a * b``); folding moves it into every projection that receives
    them, so the exported network emits pure spikes ``b``.
    """

    model_name = ""

    def __init__(self, tau: float = 0.25, v_threshold: float = 0.5, learn_amplitude: bool = False):
        super().__init__()
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.learn_amplitude = bool(learn_amplitude)
        if learn_amplitude:
            self.amplitude = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("amplitude", torch.ones(1))
        self.timesteps = 1
        self.record_spikes = False      # keep the pure spikes b, (T, B, ...)
        self.record_membrane = False    # keep u~ per step in the graph (TMPR)
        self.track_rate = False         # keep the mean |spike| in the graph (activity regulariser)
        self.rate: torch.Tensor | None = None
        self.spikes_numel = 0
        self.spikes: torch.Tensor | None = None
        self.membranes: list[torch.Tensor] = []

    def neuron_params(self) -> dict:
        return {"tau": self.tau, "v_threshold": self.v_threshold}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, learn_amplitude={self.learn_amplitude}"

    def spike_fn(self, u: torch.Tensor) -> torch.Tensor:
        th = self.v_threshold
        pos = (u >= th).to(u.dtype)
        neg = (u <= -th).to(u.dtype)
        hard = pos - neg
        soft = torch.clamp(u / (2 * th), -1.0, 1.0)
        return soft + (hard - soft).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.timesteps
        xs = x.reshape(T, x.shape[0] // T, *x.shape[1:])
        self.membranes = []
        spikes = self.run(xs)
        if self.record_spikes:
            self.spikes = spikes.detach()
        if self.track_rate:
            self.rate = spikes.abs().mean()
            self.spikes_numel = spikes.numel()
        out = spikes * self.amplitude.to(spikes.dtype)
        return out.reshape(x.shape)

    @abc.abstractmethod
    def run(self, xs: torch.Tensor) -> torch.Tensor:
        """Step the dynamics over xs (T, B, ...) and return the pure spikes b (T, B, ...)."""


class TernaryLIF(SpikingNeuron):
    """Ternary LIF (Guo et al. 2024, Eq. 7-8 and 13-14): hard reset on either sign."""

    model_name = "ternary_lif"

    def run(self, xs):
        u = torch.zeros_like(xs[0])
        b = torch.zeros_like(xs[0])
        out = []
        for t in range(xs.shape[0]):
            u = self.tau * u * (1.0 - b.abs()) + xs[t]
            if self.record_membrane:
                self.membranes.append(u)
            b = self.spike_fn(u)
            out.append(b)
        return torch.stack(out)


class BinaryLIF(TernaryLIF):
    """The {0, 1} LIF baseline, hard reset. Its spikes are never negative,
    so TernaryLIF's reset factor (1 - |b|) is the binary (1 - b)."""

    model_name = "binary_lif"

    def spike_fn(self, u):
        th = self.v_threshold
        hard = (u >= th).to(u.dtype)
        soft = torch.clamp(u / (2 * th), 0.0, 1.0)
        return soft + (hard - soft).detach()


class CTSN(SpikingNeuron):
    """Complemented Ternary Spiking Neuron (Zhang et al. 2026).

    ``form="static"`` for images, ``"event"`` for event data. alpha, beta,
    gamma are learnable scalars initialised to 0 (sigmoid 0.5). The
    complemental term h carries history past the reset and is never reset.
    """

    def __init__(self, tau=0.25, v_threshold=0.5, learn_amplitude=False, form: str = "static"):
        super().__init__(tau, v_threshold, learn_amplitude)
        if form not in ("static", "event"):
            raise ValueError(f"CTSN form must be 'static' or 'event', got {form!r}")
        self.form = form
        self.alpha = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))
        self.gamma = nn.Parameter(torch.zeros(1))

    @property
    def model_name(self):
        return "ctsn_static" if self.form == "static" else "ctsn_event"

    def coefficients(self):
        return torch.sigmoid(self.alpha), torch.sigmoid(self.beta), torch.sigmoid(self.gamma)

    def neuron_params(self) -> dict:
        # the sigmoid in float64, as the float64 reference (model.double()) evaluates it
        ka, kb, kg = (float(torch.sigmoid(p.detach().double()).item()) for p in (self.alpha, self.beta, self.gamma))
        return {"tau": self.tau, "v_threshold": self.v_threshold, "k_alpha": ka, "k_beta": kb, "k_gamma": kg}

    def extra_repr(self):
        return super().extra_repr() + f", form={self.form!r}"

    def run(self, xs):
        ka, kb, kg = (k.to(xs.dtype) for k in self.coefficients())
        v = torch.zeros_like(xs[0])   # u~ after the previous step's reset
        h = torch.zeros_like(xs[0])
        b = torch.zeros_like(xs[0])
        out = []
        for t in range(xs.shape[0]):
            u = self.tau * v * (1.0 - b.abs())
            if self.form == "static":
                h = ka * torch.clamp(h, min=0) + kb * torch.clamp(h, max=0) + kg * u
            else:
                h = ka * h + kb * torch.clamp(u, min=0) + kg * torch.clamp(u, max=0)
            v = h + xs[t]
            if self.record_membrane:
                self.membranes.append(v)
            b = self.spike_fn(v)
            out.append(b)
        return torch.stack(out)


NEURONS = {
    "ternary": lambda **kw: TernaryLIF(learn_amplitude=True, **kw),
    "ternary-fixed": lambda **kw: TernaryLIF(learn_amplitude=False, **kw),
    "binary": lambda **kw: BinaryLIF(learn_amplitude=False, **kw),
    "ctsn": lambda **kw: CTSN(learn_amplitude=True, form="static", **kw),
    "ctsn-event": lambda **kw: CTSN(learn_amplitude=True, form="event", **kw),
}


def make_neuron(kind: str, **kwargs) -> SpikingNeuron:
    try:
        return NEURONS[kind](**kwargs)
    except KeyError:
        raise ValueError(f"unknown neuron {kind!r} (known: {', '.join(NEURONS)})") from None

"""Untrained networks with the firing rates of trained ones.

A randomly initialised spiking ResNet fires almost nothing or almost
everything, depending on the scale of its weights. Trained ternary networks
fire 5-25 % of the time. To benchmark at a realistic rate, every BatchNorm is
set so that its output, over a few calibration samples, has a chosen standard
deviation ``std`` and mean ``shift`` per channel: its running mean and
variance are taken from the input it actually receives (layer by layer, in
one forward pass, so each layer sees the spikes of the already-set layers
before it), its affine weight is ``std`` and its bias ``shift``. A negative
shift pushes membranes below ``-v_th`` (-1 spikes) and a larger |shift|
raises the firing rate monotonically; ``calibrate`` bisects on the shift to
hit a target overall rate (spikes / (neurons x T), the definition the
engine's report uses).

``shift_network`` changes the shift of an already folded network without
folding again: folding puts BN into the conv as ``w * s`` and
``b = beta - mean * s``, so a new BN bias only adds to the folded bias of
every conv projection that carries one (amplitudes scale weights, not
biases). The rates of the shifted network are measured by the engine
itself.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from evsim.bridge.layers import SpikingNeuron


def batchnorms(model) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]


@torch.inference_mode()
def set_bn_and_measure(model, x: torch.Tensor, std: float, shift: float) -> tuple[float, dict]:
    """Set every BN from the input it receives on ``x``; return (overall rate, per-layer rates)."""
    model.eval()

    def pre(mod, inp):
        z = inp[0]
        red = (0, 2, 3) if z.ndim == 4 else (0,)
        mod.running_mean.copy_(z.mean(red))
        mod.running_var.copy_(z.var(red, unbiased=False))
        mod.weight.fill_(std)
        mod.bias.fill_(shift)

    hooks = [bn.register_forward_pre_hook(pre) for bn in batchnorms(model)]
    neurons = model.neurons()
    for _, n in neurons:
        n.record_spikes = True
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    rates, spikes, total = {}, 0.0, 0
    for name, n in neurons:
        s = n.spikes                      # (T, B, ...)
        per_sample_step = s[0, 0].numel()
        rates[name] = float(s.abs().mean())
        spikes += float(s.abs().sum()) / (s.shape[0] * s.shape[1])
        total += per_sample_step
        n.record_spikes = False
        n.spikes = None
    return spikes / total, rates


def calibrate(model, x: torch.Tensor, target: float, std: float, lo: float = -0.6, hi: float = 0.0,
              tol: float = 0.01, max_iter: int = 12) -> dict:
    """Bisect the BN shift in [lo, hi] (rate decreasing in the shift) to reach ``target`` +- ``tol``."""
    history = []
    rate, rates = set_bn_and_measure(model, x, std, hi)
    history.append((hi, rate))
    shift = hi
    if rate < target:
        for _ in range(max_iter):
            shift = 0.5 * (lo + hi)
            rate, rates = set_bn_and_measure(model, x, std, shift)
            history.append((shift, rate))
            if abs(rate - target) <= tol:
                break
            if rate > target:
                lo = shift
            else:
                hi = shift
    return {"std": std, "shift": shift, "rate": rate, "layer_rates": rates, "history": history,
            "samples": int(x.shape[0])}


def shift_network(network, delta: float):
    """A copy of a folded network whose BatchNorm biases are all moved by ``delta``.

    Only valid for networks folded from a model in which every projection with a
    bias is a conv (or linear) followed by BatchNorm -- true for the bridge's ResNets,
    whose convs have no bias of their own. The readout keeps its bias.
    """
    from evsim.graph import READOUT
    net = copy.deepcopy(network)
    for pr in net.projections:
        if pr.target != READOUT and pr.bias is not None and pr.kind == "conv2d":
            pr.bias = pr.bias + delta
    return net


def shift_model(model, delta: float):
    """The PyTorch counterpart of :func:`shift_network` (for a consistency check)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for bn in batchnorms(m):
            if isinstance(bn, nn.BatchNorm2d):
                bn.bias += delta
    return m


def check_model_shape(model) -> None:
    """shift_network's precondition: no conv carries a bias of its own, amplitudes are plain numbers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            raise ValueError("shift_network needs bias-free convs")
        if isinstance(m, SpikingNeuron) and not np.isfinite(float(m.amplitude.detach().double())):
            raise ValueError("non-finite amplitude")

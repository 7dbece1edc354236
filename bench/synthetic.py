"""Untrained networks with the firing rates of trained ones.

A randomly initialised spiking ResNet fires almost nothing or almost
everything, depending on the scale of its weights. Trained ternary networks
fire 5-25 % of the time. To benchmark at a realistic rate, every BatchNorm is
set so that its output, over a few calibration samples, has a chosen standard
deviation ``std`` and mean ``shift`` per channel: its running mean and
variance are taken from the input it actually receives, its affine weight is
``std`` and its bias ``shift``. A negative shift pushes membranes below
``-v_th`` (-1 spikes), and a larger |shift| raises the firing rate
monotonically. ``calibrate_layers`` bisects each spiking layer's own shift,
layer after layer in execution order (so each layer sees the spikes of the
already-set layers before it), until *every* layer fires at the target rate
(spikes / (neurons x T), the definition the engine's report uses): the
mix of events over layers then stays the same whatever the target.

An earlier version bisected one shift shared by all BatchNorms for the
overall rate; that left the layers far apart (2-4 % in some, 35-40 % in
others), outside what trained networks show, and made the layer mix change
with the rate.

``shift_network`` changes the shift of an already folded network without
folding again: folding puts BN into the conv as ``w * s`` and
``b = beta - mean * s``, so a new BN bias only adds to the folded bias of
every conv projection that carries one (amplitudes scale weights, not
biases). The rates of the shifted network are measured by the engine
itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evsim.bridge.layers import SpikingNeuron


def batchnorms(model) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]


class _Stop(Exception):
    pass


def _layer_groups(model, x) -> list[tuple[str, SpikingNeuron, list]]:
    """Spiking layers in execution order, each with the BatchNorms run since the previous one
    (for a residual block's output neuron: its second BN and the shortcut's)."""
    order = []
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (SpikingNeuron, nn.BatchNorm2d, nn.BatchNorm1d))]
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=n: order.append((name, mod))) for n, m in mods]
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    groups, pending = [], []
    for name, m in order:
        if isinstance(m, SpikingNeuron):
            groups.append((name, m, pending))
            pending = []
        elif all(m is not b for b in pending):
            pending.append(m)
    return groups


@torch.inference_mode()
def calibrate_layers(model, x: torch.Tensor, target: float, std: float, lo: float = -0.8, hi: float = 0.0,
                     tol: float = 0.005, max_iter: int = 14) -> dict:
    """Give every spiking layer the firing rate ``target`` (+- ``tol``) on ``x``.

    Layer by layer in execution order: the BatchNorms that feed a layer get
    statistics from the input they receive,
    weight ``std`` and a bias (shift) bisected in [lo, hi] for that layer's
    rate; the forward pass stops at the layer being set, and the layers
    before it keep their shifts.
    """
    model.eval()
    groups = _layer_groups(model, x)
    shift = {id(bn): hi for _, _, bns in groups for bn in bns}

    def pre(mod, inp):
        z = inp[0]
        red = (0, 2, 3) if z.ndim == 4 else (0,)
        mod.running_mean.copy_(z.mean(red))
        mod.running_var.copy_(z.var(red, unbiased=False))
        mod.weight.fill_(std)
        mod.bias.fill_(shift[id(mod)])

    def rate_of(neuron) -> float:
        def stop(mod, inp, out):
            raise _Stop
        neuron.record_spikes = True
        h = neuron.register_forward_hook(stop)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            h.remove()
            neuron.record_spikes = False
        r = float(neuron.spikes.abs().mean())
        neuron.spikes = None
        return r

    hooks = [bn.register_forward_pre_hook(pre) for _, _, bns in groups for bn in bns]
    passes = 0
    try:
        for name, neuron, bns in groups:
            a, b = lo, hi          # rate falls as the shift rises towards 0
            for _ in range(max_iter):
                s = 0.5 * (a + b)
                for bn in bns:
                    shift[id(bn)] = s
                r = rate_of(neuron)
                passes += 1
                if abs(r - target) <= tol:
                    break
                if r > target:
                    a = s
                else:
                    b = s
        overall, rates = set_bn_and_measure_with(model, x)
    finally:
        for h in hooks:
            h.remove()
    return {"std": std, "target": target, "rate": overall, "layer_rates": rates, "passes": passes,
            "shifts": {name: shift[id(bns[0])] for name, _, bns in groups if bns}, "samples": int(x.shape[0])}


def set_bn_and_measure_with(model, x) -> tuple[float, dict]:
    """One full forward (BN pre-hooks already installed by the caller); overall and per-layer rates."""
    neurons = model.neurons()
    for _, n in neurons:
        n.record_spikes = True
    try:
        model(x)
    finally:
        for _, n in neurons:
            n.record_spikes = False
    rates, spikes, total = {}, 0.0, 0
    for name, n in neurons:
        s = n.spikes
        rates[name] = float(s.abs().mean())
        spikes += float(s.abs().sum()) / (s.shape[0] * s.shape[1])
        total += s[0, 0].numel()
        n.spikes = None
    return spikes / total, rates

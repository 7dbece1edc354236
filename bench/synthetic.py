"""Untrained networks with the firing rates of trained ones.

A randomly initialised spiking ResNet fires almost nothing or almost
everything, depending on the scale of its weights. The project's trained
ternary ResNet-8 models fire 58-75 % of the time (68-87 % per layer for the
shipped one), the one trained with the rate regulariser 10.6 %. To benchmark at
a chosen rate -- one for every layer, or per layer (``target`` a dict; e.g.
a trained model's rates carried over stage by stage, ``stage_layer_rates``) --
every BatchNorm is
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
def calibrate_layers(model, x: torch.Tensor, target, std: float, lo: float = -0.8, hi: float = 0.0,
                     tol: float = 0.005, max_iter: int = 14) -> dict:
    """Give every spiking layer the firing rate ``target`` (+- ``tol``) on ``x``; ``target`` is one
    rate for every layer, or a dict layer name -> rate (a layer it omits gets the mean of the others).

    Layer by layer in execution order: the BatchNorms that feed a layer get
    statistics from the input they receive,
    weight ``std`` and a bias (shift) bisected in [lo, hi] for that layer's
    rate; the forward pass stops at the layer being set, and the layers
    before it keep their shifts.
    """
    model.eval()
    groups = _layer_groups(model, x)
    if isinstance(target, dict):
        mean = float(np.mean(list(target.values())))

        def target_of(name):
            return float(target.get(name, mean))
    else:
        def target_of(name):
            return float(target)
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
            tgt = target_of(name)
            a, b = lo, hi          # rate falls as the shift rises towards 0
            for _ in range(max_iter):
                s = 0.5 * (a + b)
                for bn in bns:
                    shift[id(bn)] = s
                r = rate_of(neuron)
                passes += 1
                if abs(r - tgt) <= tol:
                    break
                if r > tgt:
                    a = s
                else:
                    b = s
        overall, rates = set_bn_and_measure_with(model, x)
    finally:
        for h in hooks:
            h.remove()
    return {"std": std, "target": dict(target) if isinstance(target, dict) else target, "rate": overall, "layer_rates": rates, "passes": passes,
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


def stage_layer_rates(src_rates: dict, src_stages, dst_names, dst_stages) -> dict:
    """Per-layer firing rates of one CIFAR-layout ResNet (``bridge.models.resnet``) carried over to
    another: the stem (``layers.2``) to the stem, and the ``sn1`` / ``sn2`` neuron of a block in
    stage s to the same neuron of the source's block at the same relative position in stage s.
    Blocks are ``layers.3``, ``layers.4``, ... stage after stage (``stages``: blocks per stage).
    A name outside that layout gets the mean of the source rates."""
    def block_pos(k, stages):              # block number k (0-based) -> (stage, position in stage 0..1)
        for s, n in enumerate(stages):
            if k < n:
                return s, (k / (n - 1) if n > 1 else 0.0)
            k -= n
        return None

    mean = float(np.mean(list(src_rates.values())))
    src_blocks = {}                       # stage -> [block number k] of the source
    k0 = 0
    for s, n in enumerate(src_stages):
        src_blocks[s] = list(range(k0, k0 + n))
        k0 += n
    out = {}
    for name in dst_names:
        parts = name.split(".")
        if name == "layers.2":
            out[name] = float(src_rates.get("layers.2", mean))
            continue
        try:
            k = int(parts[1]) - 3
            pos = block_pos(k, dst_stages) if parts[0] == "layers" and len(parts) == 3 and k >= 0 else None
        except (IndexError, ValueError):
            pos = None
        if pos is None or pos[0] not in src_blocks:
            out[name] = mean
            continue
        ks = src_blocks[pos[0]]
        ks_k = ks[int(round(pos[1] * (len(ks) - 1)))]
        out[name] = float(src_rates.get(f"layers.{ks_k + 3}.{parts[2]}", mean))
    return out

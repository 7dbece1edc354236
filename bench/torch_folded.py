"""A dense PyTorch runner for a *folded* evsim :class:`~evsim.graph.Network`.

The baseline the event-driven engine is compared with: the very network evsim
runs (BatchNorm, amplitudes and pooling already folded into the weights, pure
{-1, 0, 1} spikes), executed densely with PyTorch's CPU kernels.

It is built for speed rather than as a reference (the reference is
``evsim.bridge.fold.run_folded_torch``, float64, step by step): the network is
feed-forward in time, so each population is processed for all T steps at once
-- its incoming projections run on a (T*B, ...) batch, then the neuron
recurrence loops over T -- exactly like the trained model's multi-step layers.
A projection from a direct-encoded input is evaluated once and reused for
every step (the engine does the same). The equations are those of
:mod:`evsim.neurons`.

``memory_format=torch.channels_last`` keeps every 4-d tensor (weights, inputs, currents, spikes)
channels-last, for PyTorch's channels-last conv kernels; the default is contiguous (NCHW).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evsim.graph import INPUT, READOUT, Network
from evsim.neurons import neuron_model


class FoldedTorch:
    def __init__(self, network: Network, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.network = network
        self.dtype = dtype
        self.channels_last = memory_format == torch.channels_last
        self.T = network.timesteps
        self.order = network.topological_order()
        pops = {p.name: p for p in network.populations}
        self.params = {}
        for n in self.order:
            p = pops[n]
            prm = dict(neuron_model(p.model).defaults)
            prm.update(p.params)
            self.params[n] = (p.model, prm)
        self.incoming = {n: [self._prep(pr) for pr in network.incoming(n)] for n in self.order}
        self.readout = [self._prep(pr) for pr in network.incoming(READOUT)]

    def _prep(self, pr):
        w = None if pr.weight is None else torch.from_numpy(pr.weight).to(self.dtype).contiguous()
        if w is not None and w.dim() == 4 and self.channels_last:
            w = w.contiguous(memory_format=torch.channels_last)
        b = None if pr.bias is None else torch.from_numpy(pr.bias).to(self.dtype).contiguous()
        return (pr.source, pr.kind, w, b, tuple(pr.stride), tuple(pr.padding), float(pr.scale))

    @staticmethod
    def _apply(proj, x):
        _, kind, w, b, stride, padding, scale = proj
        if kind == "identity":
            return x * scale
        if kind == "linear":
            return F.linear(x.reshape(x.shape[0], -1), w, b)
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    def _neuron(self, name, cur):
        """cur: (T, B, ...) input current -> (T, B, ...) spikes."""
        model, p = self.params[name]
        tau, th = p["tau"], p["v_threshold"]
        T = cur.shape[0]
        if self.channels_last and cur.dim() == 5:
            # (T, B, C, H, W) over one channels-last (T*B, C, H, W) block: every out[t] is channels-last
            out = torch.empty((T * cur.shape[1], *cur.shape[2:]), dtype=cur.dtype,
                              memory_format=torch.channels_last).view(cur.shape)
        else:
            cur = cur.contiguous()
            out = torch.empty_like(cur)
        u = torch.zeros_like(cur[0])
        h = torch.zeros_like(cur[0])
        o = None
        for t in range(T):
            if o is None:
                uu = torch.zeros_like(u)
            elif model == "binary_lif":
                uu = tau * u * (1 - o)
            else:
                uu = tau * u * (1 - o.abs())
            if model == "ctsn_static":
                h = p["k_alpha"] * h.clamp(min=0) + p["k_beta"] * h.clamp(max=0) + p["k_gamma"] * uu
                u = h + cur[t]
            elif model == "ctsn_event":
                h = p["k_alpha"] * h + p["k_beta"] * uu.clamp(min=0) + p["k_gamma"] * uu.clamp(max=0)
                u = h + cur[t]
            else:
                u = uu + cur[t]
            o = (u >= th).to(u.dtype)
            if model != "binary_lif":
                o = o - (u <= -th).to(u.dtype)
            out[t] = o
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, return_spikes: bool = False):
        """x: (B, *input_shape) for direct encoding, (B, T, *input_shape) for spikes."""
        T = self.T
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        B = x.shape[0]
        direct = self.network.encoding == "direct"
        xin = x if direct else x.transpose(0, 1).reshape(T * B, *x.shape[2:])
        spikes = {}   # name -> (T*B, ...)

        def contribution(proj):
            src = proj[0]
            if src == INPUT and direct:          # same every step: once, then broadcast over T
                y = self._apply(proj, xin)
                return y.unsqueeze(0).expand(T, *y.shape)
            y = self._apply(proj, xin if src == INPUT else spikes[src])
            return y.reshape(T, B, *y.shape[1:])

        for n in self.order:
            cur = None
            for proj in self.incoming[n]:
                c = contribution(proj)
                cur = c if cur is None else cur + c
            s = self._neuron(n, cur)
            spikes[n] = s.reshape(T * B, *s.shape[2:])
        out = None
        for proj in self.readout:
            c = contribution(proj).mean(0)
            out = c if out is None else out + c
        if return_spikes:
            return out, {n: s.reshape(T, B, *s.shape[1:]) for n, s in spikes.items()}
        return out

"""The one dense PyTorch runner of a *folded* :class:`~evsim.graph.Network`.

Independent of the engine, it runs the very network evsim runs (BatchNorm, amplitudes and pooling
already folded into the weights, pure {-1, 0, 1} spikes) densely with PyTorch's kernels. It serves
three uses with one set of equations: the float64 reference that shows folding and importing
preserve a trained model (``run_folded_torch``, tests, ``evsim verify``), and, in float32 with
``memory_format=torch.channels_last`` and optionally ``torch.compile``, the dense competitor the
benchmarks time (bench/worker.py).

A fixed-point network (``network.fixed_point``, :mod:`evsim.fixedpoint`) runs as the integer
reference the integer engine is checked against bit for bit: its convolutions and linear maps are
evaluated in float64, which is exact because every operand and partial sum is an integer below 2**53
(checked), and everything else (the direct-input rescale, the neuron updates with their shifts and
saturation, the readout's sum over T) in int64, in :func:`neuron_step_fixed`.

The network is feed-forward in time (a population at step t sees its sources' spikes of step t),
so each population is processed for all T steps at once: its incoming projections run on one
(T*B, ...) batch, then the neuron recurrence loops over T. A projection from a direct-encoded input
is evaluated once and reused for every step, as the engine does. The neuron equations are those of
:mod:`evsim.neurons`, written here once (:func:`neuron_step`) for every model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fixedpoint import direct_level_bound, fan_in, membrane_range
from ..graph import INPUT, READOUT, Network
from ..neurons import neuron_model


def neuron_step(model: str, p: dict, u, h, o, x):
    """One timestep of a population: state (u, h, o) of step t-1 and input ``x`` of step t -> (u, h, o).

    ``u`` is the membrane after step t-1's input (before its reset), ``o`` its spikes, ``h`` the
    complement (CTSN) or the membrane's own part (CUBA); all zero before the first step.
    """
    tau, th = p["tau"], p["v_threshold"]
    if model in ("binary_lif", "cuba_lif"):
        m = tau * u * (1 - o)
    elif model in ("binary_lif_sub", "cuba_lif_sub"):
        m = tau * u - th * o
    else:
        m = tau * u * (1 - o.abs())
    if model == "ctsn_static":
        h = p["k_alpha"] * h.clamp(min=0) + p["k_beta"] * h.clamp(max=0) + p["k_gamma"] * m
        u = h + x
    elif model == "ctsn_event":
        h = p["k_alpha"] * h + p["k_beta"] * m.clamp(min=0) + p["k_gamma"] * m.clamp(max=0)
        u = h + x
    elif model in ("cuba_lif", "cuba_lif_sub"):
        # synaptic current i[t] = k_syn * i[t-1] + x[t], with i[t-1] = u - h (h: the membrane's own part)
        u_new = m + p["k_syn"] * (u - h) + x
        h = m
        u = u_new
    else:
        u = m + x
    o = (u >= th).to(u.dtype)
    if neuron_model(model).ternary:
        o = o - (u <= -th).to(u.dtype)
    return u, h, o


def _floor_shift(a, f: int):
    """``a >> f`` for int64 tensors: floor division by 2**f (an arithmetic shift, as the engine's)."""
    return torch.div(a, 1 << f, rounding_mode="floor")


def neuron_step_fixed(model: str, p: dict, frac: int, lo: int, hi: int, u, h, o, x):
    """:func:`neuron_step` in the chip's integer arithmetic (int64 tensors; docs/FIXED_POINT.md).

    ``p`` holds integers: ``v_threshold`` in membrane units, the other constants numerators over
    ``2**frac``. Every product by a constant is followed by an arithmetic right shift by ``frac``; the
    membrane saturates to [lo, hi] before it is compared with the threshold, as does the CTSN
    complement ``h``. ``u`` is kept saturated.
    """
    tau, th = p["tau"], p["v_threshold"]
    if model in ("binary_lif", "cuba_lif"):
        m = _floor_shift(tau * u * (1 - o), frac)
    elif model in ("binary_lif_sub", "cuba_lif_sub"):
        m = _floor_shift(tau * u, frac) - th * o
    else:
        m = _floor_shift(tau * u * (1 - o.abs()), frac)
    if model == "ctsn_static":
        h = _floor_shift(p["k_alpha"] * h.clamp(min=0) + p["k_beta"] * h.clamp(max=0) + p["k_gamma"] * m, frac)
        h = h.clamp(lo, hi)
        u = h + x
    elif model == "ctsn_event":
        h = _floor_shift(p["k_alpha"] * h + p["k_beta"] * m.clamp(min=0) + p["k_gamma"] * m.clamp(max=0), frac)
        h = h.clamp(lo, hi)
        u = h + x
    elif model in ("cuba_lif", "cuba_lif_sub"):
        u_new = m + _floor_shift(p["k_syn"] * (u - h), frac) + x
        h = m
        u = u_new
    else:
        u = m + x
    u = u.clamp(lo, hi)
    o = (u >= th).to(u.dtype)
    if neuron_model(model).ternary:
        o = o - (u <= -th).to(u.dtype)
    return u, h, o


EXACT = 2.0 ** 53        # float64 holds every integer below this exactly


class DenseRunner:
    """``DenseRunner(network, dtype, memory_format)(x, return_spikes=False)`` -> outputs [, spikes].

    ``x``: (B, *input_shape) for direct encoding, (B, T, *input_shape) for spike input. Outputs are
    the readout's mean over the timesteps, (B, n_outputs); spikes, ``{population: (T, B, ...)}``.
    A fixed-point network's outputs are int64, the readout's sum over the timesteps (as the engine's).
    """

    def __init__(self, network: Network, dtype: torch.dtype = torch.float64,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.network = network
        self.fixed = network.fixed_point
        if self.fixed is not None and dtype != torch.float64:
            raise ValueError("a fixed-point network's reference runs in float64 (exact integers) and int64")
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
        rescale = None
        if self.fixed is not None:
            rescale = self.fixed.rescale.get(pr.name)
            if pr.kind != "identity":      # exactness: the largest partial sum of |input| * |weight|
                bound = direct_level_bound(self.network, pr) if rescale is not None else fan_in(pr.weight)
                if bound >= EXACT:
                    raise ValueError(f"projection {pr.name!r}: sums reach 2**53, beyond float64's exact integers")
        return (pr.source, pr.kind, w, b, tuple(pr.stride), tuple(pr.padding), float(pr.scale), rescale, pr.pool)

    @staticmethod
    def _apply(proj, x, bias=True):
        _, kind, w, b, stride, padding, scale, _, pool = proj
        b = b if bias else None
        if kind == "identity":
            return x * scale
        if kind == "linear":
            return F.linear(x.reshape(x.shape[0], -1), w, b)
        if pool is not None:        # a pooled conv (format v3): PyTorch's AvgPool2d, then the conv
            x = F.avg_pool2d(x, pool.kernel, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad)
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    def _apply_fixed(self, proj, x):
        """A projection of a fixed-point network: exact integers, as int64. From a direct-encoded input
        the sum of levels is rescaled to the target's units, ``(acc * mult) >> shift``, then the bias added."""
        rescale = proj[7]
        if rescale is None:
            return self._apply(proj, x).round().to(torch.int64)
        mult, shift = rescale
        acc = self._apply(proj, x, bias=False).round().to(torch.int64)
        cur = _floor_shift(acc * mult, shift)
        b = proj[3]
        if b is not None:
            cur = cur + b.to(torch.int64).reshape((1, -1) + (1,) * (cur.dim() - 2))
        return cur

    def _neurons(self, name, cur):
        """cur: (T, B, ...) input current -> (T, B, ...) spikes."""
        model, p = self.params[name]
        T = cur.shape[0]
        if self.channels_last and cur.dim() == 5:
            # (T, B, C, H, W) over one channels-last (T*B, C, H, W) block: every out[t] is channels-last
            out = torch.empty((T * cur.shape[1], *cur.shape[2:]), dtype=cur.dtype,
                              memory_format=torch.channels_last).view(cur.shape)
        else:
            cur = cur.contiguous()
            out = torch.empty_like(cur)
        u = torch.zeros_like(cur[0])
        h = torch.zeros_like(u)
        o = torch.zeros_like(u)
        if self.fixed is not None:
            fx = self.fixed
            lo, hi = membrane_range(fx.membrane_bits)
            p = {k: int(v) for k, v in p.items()}
            for t in range(T):
                u, h, o = neuron_step_fixed(model, p, fx.frac_bits, lo, hi, u, h, o, cur[t])
                out[t] = o
            return out
        for t in range(T):
            u, h, o = neuron_step(model, p, u, h, o, cur[t])
            out[t] = o
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, return_spikes: bool = False):
        T = self.T
        fixed = self.fixed is not None
        if fixed and self.network.encoding == "direct":      # the chip's input: integer levels
            x = torch.from_numpy(self.fixed.quantise_input(x.numpy()))
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        B = x.shape[0]
        direct = self.network.encoding == "direct"
        xin = x if direct else x.transpose(0, 1).reshape(T * B, *x.shape[2:])
        spikes = {}   # name -> (T*B, ...)

        apply = self._apply_fixed if fixed else self._apply

        def contribution(proj):
            src = proj[0]
            if src == INPUT and direct:          # same every step: once, then broadcast over T
                y = apply(proj, xin)
                return y.unsqueeze(0).expand(T, *y.shape)
            y = apply(proj, xin if src == INPUT else spikes[src].to(self.dtype))
            return y.reshape(T, B, *y.shape[1:])

        for n in self.order:
            cur = None
            for proj in self.incoming[n]:
                c = contribution(proj)
                cur = c if cur is None else cur + c
            s = self._neurons(n, cur)
            spikes[n] = s.reshape(T * B, *s.shape[2:])
        out = None
        for proj in self.readout:
            c = contribution(proj)
            c = c.sum(0) if fixed else c.mean(0)
            out = c if out is None else out + c
        if return_spikes:
            return out, {n: s.reshape(T, B, *s.shape[1:]) for n, s in spikes.items()}
        return out


def run_folded_torch(network: Network, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The float64 reference: (outputs (B, n_outputs), {population: spikes (T, B, ...)})."""
    return DenseRunner(network, torch.float64)(x, return_spikes=True)

"""Quantisation-aware fine-tuning (QAT): train against the fixed-point network ``evsim quantize`` will make.

:func:`evsim.fixedpoint.quantize` acts on the *folded* network (:mod:`evsim.bridge.fold`: BatchNorm in
eval form folded into the conv or linear layer before it, each population's amplitude into every
projection that receives its spikes, average pooling into the projection after it). So the fine-tune
does not fake-quantise the raw ``conv.weight``: :class:`QATNet` runs the folded network itself, in
PyTorch, with every number as ``quantize(folded, weight_bits)`` would make it:

* each projection's folded weight is computed in the graph at every forward, from the live parameters
  (``W * gamma / sqrt(running_var + eps) * a_source``, pooling expanded, linear chains composed) by the
  same rules, in the same order of operations, as ``fold_model`` (so a float64 model gives the very
  numbers ``fold_model`` writes);
* its scale ``s`` is :func:`evsim.fixedpoint.weight_scale` (symmetric, levels within 2**(B-1) - 1,
  the "mse" rule) of that folded weight, recomputed at every step (a NumPy search over 96 clipping
  points outside the autograd graph: about 70 ms of a ~0.8 s training step for resnet8 at width 16);
* membrane units, steps, levels, the rounding of identity-shortcut scales, biases and thresholds follow
  ``quantize`` exactly: unit ``q_p = max(min s over p's incoming event projections, v_th / 2**(M-1-3))``,
  ``step = max(1, round(s / q))``, weight ``clip(round(W / (step q)), -L, L) * step * q`` (round half to
  even throughout); the dequantised weight is what the fixed-point file holds times its target's unit;
* the neurons run in the target's integer units as the chip does (evsim.bridge.dense,
  ``neuron_step_fixed``): input quantised to ``input_bits`` levels, the direct-input current floored,
  the leak ``(tau_num * u) >> frac_bits`` floored, the membrane saturated at ``membrane_bits``; so the
  PyTorch accuracy of a QATNet is (up to float32 rounding near thresholds) the fixed-point engine's.

Gradients pass every rounding straight through (identity STE: ``round(x) + (x - x.detach())``, exact forward, also for
weights clamped at +-L); scales, units, steps and thresholds are constants of each step. Spikes use the
neurons' own surrogate (``clamp(u / (2 v_th), -1, 1)``, in membrane units), amplitudes learn through the
weights they are folded into, and BatchNorm is frozen: QATNet never runs the BatchNorm modules, so
their running statistics stay those of the checkpoint; gamma and beta still learn through the fold.

Supported: the TernaryLIF and BinaryLIF neurons (``ternary``, ``ternary-fixed``, ``binary``) in any
network ``fold_model`` folds. The QAT model *is* the float model (a view of its parameters): after
training, the checkpoint is an ordinary one; fold it and quantise it with the same bit width.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EvsimError
from ..fixedpoint import (input_quantisation, membrane_range, membrane_unit, readout_unit, round_half_even,
                          step_of, weight_scale)
from ..graph import INPUT, READOUT
from .fold import fold_model
from .layers import BinaryLIF, SpikingNeuron, TernaryLIF
from .models import BasicBlock, SpikingNet

QAT_NEURONS = ("ternary", "ternary-fixed", "binary")
MEMBRANE_BITS, FRAC_BITS, INPUT_BITS, SCALE_RULE = 16, 12, 8, "mse"    # evsim quantize's defaults


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward (exactly), identity backward."""
    return torch.round(x.detach()) + (x - x.detach())


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x.detach()) + (x - x.detach())


class _Proj:
    """One projection of the folded network: where its weight comes from in the model."""

    def __init__(self, name, source, target, kind, ops, amp, stride=(1, 1), padding=(0, 0)):
        self.name, self.source, self.target, self.kind = name, source, target, kind
        self.ops = [(n, m) for n, m in ops if not isinstance(m, (nn.Identity, nn.Dropout))]
        self.amp = amp                      # the source population's neuron (its amplitude), None for the input
        self.stride, self.padding = tuple(stride), tuple(padding)


def _walk(model: SpikingNet):
    """fold_model's walk, keeping the modules: [(projection)], [(population name, neuron)] in its order."""
    projs, pops = [], []
    source, amp, pending = INPUT, None, []

    def close(name, neuron, src, a, ops):
        projs.append(_Proj(None, src, name, None, ops, a))
        pops.append((name, neuron))

    for idx, m in model.layers.named_children():
        name = f"layers.{idx}"
        if isinstance(m, SpikingNeuron):
            close(name, m, source, amp, pending)
            source, amp, pending = name, m, []
        elif isinstance(m, BasicBlock):
            close(f"{name}.sn1", m.sn1, source, amp, [(f"{name}.conv1", m.conv1), (f"{name}.bn1", m.bn1)])
            projs.append(_Proj(None, f"{name}.sn1", f"{name}.sn2", None,
                               [(f"{name}.conv2", m.conv2), (f"{name}.bn2", m.bn2)], m.sn1))
            projs.append(_Proj(f"{name}.shortcut", source, f"{name}.sn2", None,
                               [(f"{name}.shortcut.{i}", mm) for i, mm in m.shortcut.named_children()], amp))
            pops.append((f"{name}.sn2", m.sn2))
            source, amp, pending = f"{name}.sn2", m.sn2, []
        else:
            pending.append((name, m))
    projs.append(_Proj(None, source, READOUT, None, pending, amp))
    return projs, pops


def _amplitude(p: _Proj, ref: torch.Tensor) -> torch.Tensor:
    if p.amp is None:
        return torch.ones((), dtype=ref.dtype, device=ref.device)
    return p.amp.amplitude.to(ref.dtype).reshape(())


def _conv_weight(p: _Proj):
    """fold._compose_conv in torch: [AvgPool2d]* Conv2d [BatchNorm2d] -> (w, b or None), amplitude applied."""
    pools, i = [], 0
    while isinstance(p.ops[i][1], nn.AvgPool2d):
        k = p.ops[i][1].kernel_size
        pools.append(k if isinstance(k, int) else k[0])
        i += 1
    conv = p.ops[i][1]
    rest = p.ops[i + 1:]
    w = conv.weight
    b = conv.bias if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for f in reversed(pools):
        w = w.repeat_interleave(f, 2).repeat_interleave(f, 3) / (f * f)
    for _, bn in rest:
        var, mean = bn.running_var.to(w.dtype), bn.running_mean.to(w.dtype)
        gamma = bn.weight if bn.affine else torch.ones_like(var)
        beta = bn.bias if bn.affine else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + bn.eps)
        c = beta - mean * s
        w = w * s[:, None, None, None]
        b = b * s + c
    has_bias = conv.bias is not None or bool(rest)
    return w * _amplitude(p, w), (b if has_bias else None)


def _affine_weight(p: _Proj, shape, dtype, device):
    """fold._compose_affine in torch, differentiable: the chain's matrix read off by autograd (create_graph)."""
    mods = [m for _, m in p.ops]

    def chain(x):
        for m in mods:
            x = m(x)
        return x

    zero = chain(torch.zeros((1,) + tuple(shape), dtype=dtype, device=device))
    n_out = zero.shape[1]
    graph = torch.is_grad_enabled()     # keep the graph to the Linear's weights when training
    with torch.enable_grad():       # also under no_grad (evaluation): the matrix is a gradient
        x = torch.zeros((n_out,) + tuple(shape), dtype=dtype, device=device, requires_grad=True)
        (g,) = torch.autograd.grad(chain(x).diagonal().sum(), x, create_graph=graph)
    w = g.reshape(n_out, -1)
    return w * _amplitude(p, w), zero[0]


class QATNet(nn.Module):
    """The folded, fake-quantised view of ``model`` (see the module docstring); ``forward(x)`` -> logits
    (B, classes), the real values of the fixed-point network's outputs."""

    def __init__(self, model: SpikingNet, weight_bits: int, input_range=(0.0, 1.0), membrane_bits: int = MEMBRANE_BITS,
                 frac_bits: int = FRAC_BITS, input_bits: int = INPUT_BITS, scale_rule: str = SCALE_RULE):
        super().__init__()
        check_qat(model, weight_bits)
        self.model = model
        self.weight_bits, self.membrane_bits, self.frac_bits = int(weight_bits), membrane_bits, frac_bits
        self.scale_rule = scale_rule
        self.L = (1 << (self.weight_bits - 1)) - 1
        with torch.enable_grad():       # fold_model reads linear chains off by autograd
            net = fold_model(model, input_range=input_range)     # structure, names, strides (and a validity check)
        projs, pops = _walk(model)
        if len(projs) != len(net.projections):
            raise EvsimError("QAT: the network's projections do not match the folder's")
        for p, pr in zip(projs, net.projections):
            if p.target != pr.target or p.source != pr.source:
                raise EvsimError(f"QAT: projection {pr.name!r} does not match the folder's walk")
            p.name, p.kind, p.stride, p.padding = pr.name, pr.kind, tuple(pr.stride), tuple(pr.padding)
        self.projs = projs
        self.pops = pops
        self.shapes = {p.name: tuple(p.shape) for p in net.populations}
        self.shapes[INPUT] = tuple(net.input_shape)
        self.direct = net.encoding == "direct"
        model.eval()
        if self.direct:     # evsim.fixedpoint.quantize's input unit for this range
            self.input_unit, levels = input_quantisation(input_range, input_bits)
            self.input_levels = (float(levels[0]), float(levels[1]))

    def train(self, mode: bool = True):
        """Training mode for the neurons' bookkeeping only: BatchNorm never runs here (frozen)."""
        self.training = mode
        self.model.train(False)
        return self

    def neurons(self):
        return self.model.neurons()

    # ---------------------------------------------------------------- the folded, quantised numbers
    def folded(self, dtype=None, device=None):
        """{projection name: (folded weight, bias or None)} in the graph; identity shortcuts: (amplitude, None)."""
        ref = next(self.model.parameters())
        dtype, device = dtype or ref.dtype, device or ref.device
        out = {}
        for p in self.projs:
            if p.kind == "identity":
                out[p.name] = (_amplitude(p, ref.to(dtype)), None)
            elif p.kind == "conv2d":
                out[p.name] = _conv_weight(p)
            else:
                out[p.name] = _affine_weight(p, self.shapes[p.source], dtype, device)
        return out

    def plan(self, folded) -> dict:
        """What quantize decides from the folded weights (no gradient): per population (and readout) its
        unit q; per projection (real value of one level, step, unit): ``(step * q, step, q)``, or ``(s, 1, s)`` from
        a direct input;
        per population its integer threshold."""
        scale = {}
        for p in self.projs:
            w = folded[p.name][0].detach().double().cpu().numpy()
            scale[p.name] = abs(float(w)) if p.kind == "identity" else weight_scale(w, self.weight_bits,
                                                                                    self.scale_rule)
        units = {}
        for name, neuron in self.pops:
            units[name] = membrane_unit([scale[p.name] for p in self.projs
                                         if p.target == name and not (self.direct and p.source == INPUT)],
                                        neuron.v_threshold, self.membrane_bits)
        units[READOUT] = readout_unit([scale[p.name] for p in self.projs if p.target == READOUT])
        level, identity = {}, {}
        for p in self.projs:
            q, s = units[p.target], scale[p.name]
            if p.kind == "identity":
                identity[p.name] = float(round_half_even(s_signed(folded[p.name][0]) / q)) * q
            elif self.direct and p.source == INPUT:
                level[p.name] = (s, 1, s)
            else:
                step = step_of(s, q)
                level[p.name] = (step * q if s > 0 else 0.0, step, q)
        thresholds = {name: max(1.0, float(round_half_even(n.v_threshold / units[name]))) for name, n in self.pops}
        tau = {name: float(round_half_even(n.tau * 2.0 ** self.frac_bits)) for name, n in self.pops}
        return {"scale": scale, "units": units, "level": level, "identity": identity, "thresholds": thresholds,
                "tau": tau}

    def fake_quant(self, folded, plan) -> dict:
        """{projection: (dequantised weight, dequantised bias or None)}: ``levels * step * q`` with a
        straight-through gradient; identity shortcuts: their rounded scale."""
        out = {}
        for p in self.projs:
            w, b = folded[p.name]
            q = plan["units"][p.target]
            if p.kind == "identity":
                out[p.name] = (w.new_tensor(plan["identity"][p.name]) + (w - w.detach()), None)
                continue
            unit, step, lsb = plan["level"][p.name]
            if unit > 0:       # (levels * step) * q: the fixed-point file's integers times its unit, bit for bit
                levels = torch.clamp(torch.round(w.detach() / unit), -self.L, self.L)
                wq = levels * step * lsb + (w - w.detach())
            else:
                wq = w * 0.0
            bq = None if b is None else round_ste(b / q) * q
            out[p.name] = (wq, bq)
        return out

    def quantized_weights(self) -> dict:
        """The dequantised folded weights the forward uses now (float64 numpy), for tests and inspection."""
        with torch.no_grad():
            f = self.folded()
            qw = self.fake_quant(f, self.plan(f))
        return {k: (w.double().cpu().numpy(), None if b is None else b.double().cpu().numpy())
                for k, (w, b) in qw.items()}

    # ---------------------------------------------------------------- the run
    def _neuron(self, name, neuron, cur_int, thr, tau):
        """cur_int: (T, B, ...) input in membrane units -> pure spikes (T, B, ...), as neuron_step_fixed."""
        lo, hi = (float(v) for v in membrane_range(self.membrane_bits))
        ternary = not isinstance(neuron, BinaryLIF)
        u = torch.zeros_like(cur_int[0])
        o = torch.zeros_like(u)
        out = []
        for t in range(cur_int.shape[0]):
            keep = (1.0 - o.abs()) if ternary else (1.0 - o)
            m = floor_ste(tau * u * keep / 2.0 ** self.frac_bits)
            u = torch.clamp(m + cur_int[t], lo, hi)
            hard = (u >= thr).to(u.dtype)
            if ternary:
                hard = hard - (u <= -thr).to(u.dtype)
                soft = torch.clamp(u / (2 * thr), -1.0, 1.0)
            else:
                soft = torch.clamp(u / (2 * thr), 0.0, 1.0)
            o = hard + (soft - soft.detach())
            out.append(o)
        spikes = torch.stack(out)
        if neuron.track_rate:
            neuron.rate = spikes.abs().mean()
            neuron.spikes_numel = spikes.numel()
        if neuron.record_spikes:
            neuron.spikes = spikes.detach()
        return spikes

    @staticmethod
    def _apply(p, x, w, b):
        if p.kind == "identity":
            return x * w
        if p.kind == "linear":
            return torch.nn.functional.linear(x.reshape(x.shape[0], -1), w, b)
        return torch.nn.functional.conv2d(x, w, b, stride=p.stride, padding=p.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.folded(dtype=x.dtype, device=x.device)
        plan = self.plan(f)
        qw = self.fake_quant(f, plan)
        T = self.model.timesteps
        B = x.shape[0]
        if self.direct:      # the chip's input: integer levels (no gradient to the data)
            xin = torch.clamp(torch.round(x / self.input_unit), *self.input_levels) * self.input_unit
        else:
            xin = x.transpose(0, 1).reshape(T * B, *x.shape[2:])
        spikes = {}

        def contribution(p, q):
            """(T, B, ...) current of one projection in its target's units."""
            w, b = qw[p.name]
            if p.source == INPUT and self.direct:       # (acc * mult) >> shift: floored, then the integer bias
                y = floor_ste(self._apply(p, xin, w, None) / q)
                if b is not None:
                    y = y + (b / q).reshape((1, -1) + (1,) * (y.dim() - 2))
                return y.unsqueeze(0).expand(T, *y.shape)
            y = self._apply(p, xin if p.source == INPUT else spikes[p.source], w, b) / q
            y = round_ste(y)            # an exact integer on the chip; removes float rounding here
            return y.reshape(T, B, *y.shape[1:])

        for name, neuron in self.pops:
            q = plan["units"][name]
            cur = None
            for p in self.projs:
                if p.target == name:
                    c = contribution(p, q)
                    cur = c if cur is None else cur + c
            s = self._neuron(name, neuron, cur, plan["thresholds"][name], plan["tau"][name])
            spikes[name] = s.reshape(T * B, *s.shape[2:])
        q = plan["units"][READOUT]
        out = None
        for p in self.projs:
            if p.target == READOUT:
                c = contribution(p, q).mean(0) * q
                out = c if out is None else out + c
        return out


def s_signed(a: torch.Tensor) -> float:
    return float(a.detach().double().cpu())


def check_qat(model: SpikingNet, weight_bits) -> None:
    """Refuse what QAT does not model, with one line."""
    from ..fixedpoint import WEIGHT_BITS
    lo, hi = WEIGHT_BITS
    if not (isinstance(weight_bits, int) and not isinstance(weight_bits, bool)) or not lo <= weight_bits <= hi:
        raise EvsimError(f"qat_bits must be an integer in [{lo}, {hi}], got {weight_bits!r}")
    for name, m in model.neurons():
        if not isinstance(m, TernaryLIF):
            raise EvsimError(f"QAT models the LIF neurons ({', '.join(QAT_NEURONS)}); {name} is "
                             f"{type(m).__name__}")

"""Fold a trained :class:`~evsim.bridge.models.SpikingNet` into an evsim network.

What folds where:

* BatchNorm (eval statistics) into the conv or linear layer before it;
* each population's amplitude ``a`` into *every* projection that receives
  its spikes: conv and linear weights are multiplied by ``a`` and identity
  shortcuts get ``scale = a`` (Ternary Spike Eq. 15-17), so the exported
  network emits pure {-1, 0, 1} spikes;
* average pooling into the projection that follows it: pool-then-conv
  becomes one strided conv with a larger kernel, anything ending in a
  Linear is composed numerically into one linear map.

The walker accepts any ``SpikingNet`` whose ``layers`` are built from the
supported modules; anything else is refused with the module's name.
Population names are the neuron modules' paths (``layers.3.sn1``), so
:mod:`evsim.bridge.verify` can pair them with the PyTorch model.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import NetworkError
from ..graph import INPUT, READOUT, Network, Population, Projection
from .layers import SpikingNeuron
from .models import BasicBlock, SpikingNet

LINEAR_OPS = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.BatchNorm1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
              nn.Flatten, nn.Identity, nn.Dropout)


@dataclass
class _Cursor:
    source: str
    shape: tuple[int, ...]
    amplitude: float
    pending: list[tuple[str, nn.Module]] = field(default_factory=list)


def _t(a) -> np.ndarray:
    return a.detach().double().cpu().numpy()


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = s * x + b per channel."""
    var = _t(bn.running_var)
    mean = _t(bn.running_mean)
    gamma = _t(bn.weight) if bn.affine else np.ones_like(var)
    beta = _t(bn.bias) if bn.affine else np.zeros_like(var)
    s = gamma / np.sqrt(var + bn.eps)
    return s, beta - mean * s


def _pool_factor(name, m: nn.AvgPool2d, shape) -> int:
    k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
    kk = m.kernel_size if isinstance(m.kernel_size, tuple) else (k, k)
    st = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
    pd = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
    if kk[0] != kk[1] or st != kk or pd != (0, 0) or m.ceil_mode or m.divisor_override:
        raise NetworkError(f"{name}: only non-overlapping square average pooling (stride = kernel, no padding, "
                           "no divisor_override) folds into a following conv")
    if shape[1] % k or shape[2] % k:
        raise NetworkError(f"{name}: average pooling {k}x{k} of a {shape[1]}x{shape[2]} map drops rows; "
                           "it cannot fold into the following conv")
    return k


def _compose_conv(ops, shape):
    """[AvgPool2d]* Conv2d [BatchNorm2d]: one conv on the unpooled map."""
    pools, i = [], 0
    cur = shape
    while isinstance(ops[i][1], nn.AvgPool2d):
        f = _pool_factor(ops[i][0], ops[i][1], cur)
        pools.append(f)
        cur = (cur[0], cur[1] // f, cur[2] // f)
        i += 1
    name, conv = ops[i]
    if not isinstance(conv, nn.Conv2d):
        raise NetworkError(f"{name}: {type(conv).__name__} before a conv cannot fold into it; "
                           "only AvgPool2d may come between a neuron layer and a conv")
    rest = ops[i + 1:]
    if conv.groups != 1 or conv.dilation not in ((1, 1), 1) or conv.padding_mode != "zeros":
        raise NetworkError(f"{name}: grouped, dilated or non-zero-padded convs are not supported")
    if isinstance(conv.padding, str):
        raise NetworkError(f"{name}: string padding {conv.padding!r} is not supported; give it as numbers")
    w = _t(conv.weight)
    b = _t(conv.bias) if conv.bias is not None else np.zeros(w.shape[0])
    stride, padding = tuple(conv.stride), tuple(conv.padding)
    for f in reversed(pools):   # innermost pool first: expand the kernel by f
        w = np.repeat(np.repeat(w, f, axis=2), f, axis=3) / (f * f)
        stride = (stride[0] * f, stride[1] * f)
        padding = (padding[0] * f, padding[1] * f)
    for bname, bn in rest:
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != w.shape[0]:
            raise NetworkError(f"{bname}: after a conv only a BatchNorm2d of its channels can fold")
        s, c = bn_affine(bn)
        w = w * s[:, None, None, None]
        b = b * s + c
    has_bias = conv.bias is not None or bool(rest)
    return w, (b if has_bias else None), stride, padding


def _compose_affine(ops, shape):
    """Any chain of linear ops ending flat: its matrix, read off by autograd.

    The chain is affine, f(x) = W x + b, so one backward pass over a batch of
    n_out copies gives W row by row (row i = d f_i / d x): memory n_out x n_in,
    never n_in x n_in.
    """
    mods = nn.Sequential(*[copy.deepcopy(m) for _, m in ops]).double().eval()
    with torch.no_grad():
        zero = mods(torch.zeros((1,) + tuple(shape), dtype=torch.float64))
    if zero.ndim != 2:
        names = ", ".join(nm for nm, _ in ops)
        raise NetworkError(f"{names}: a chain ending in a Linear must produce a flat output")
    n_out = zero.shape[1]
    x = torch.zeros((n_out,) + tuple(shape), dtype=torch.float64, requires_grad=True)
    mods(x).diagonal().sum().backward()
    w = x.grad.reshape(n_out, -1).numpy().copy()   # (n_out, n_in)
    b = zero[0].detach().numpy().copy()
    return w, b


def _projection(name, cur: _Cursor, target: str):
    """Turn the cursor's pending ops into one projection into ``target``."""
    ops = [(n, m) for n, m in cur.pending if not isinstance(m, (nn.Identity, nn.Dropout))]
    if not ops:
        raise NetworkError(f"{name}: a neuron layer must be preceded by a conv or linear layer")
    kinds = [type(m) for _, m in ops]
    if nn.Linear in kinds:
        last_linear = max(i for i, k in enumerate(kinds) if k is nn.Linear)
        if any(k not in (nn.BatchNorm1d, nn.Identity) for k in kinds[last_linear + 1:]):
            raise NetworkError(f"{ops[-1][0]}: only BatchNorm1d may follow a Linear before a neuron")
        if any(k is nn.Conv2d for k in kinds):
            raise NetworkError(f"{ops[0][0]}: a conv and a linear layer need a neuron layer between them")
        w, b = _compose_affine(ops, cur.shape)
        kind, stride, padding, out_shape = "linear", (1, 1), (0, 0), (w.shape[0],)
        if not np.any(b):
            b = None
    elif nn.Conv2d in kinds:
        if kinds.count(nn.Conv2d) > 1:
            raise NetworkError(f"{ops[0][0]}: two convs need a neuron layer between them")
        w, b, stride, padding = _compose_conv(ops, cur.shape)
        kind = "conv2d"
        h = (cur.shape[1] + 2 * padding[0] - w.shape[2]) // stride[0] + 1
        wd = (cur.shape[2] + 2 * padding[1] - w.shape[3]) // stride[1] + 1
        out_shape = (w.shape[0], h, wd)
    else:
        raise NetworkError(f"{ops[0][0]}: pooling or normalisation without a conv or linear layer to fold into")
    w = w * cur.amplitude
    proj_name = ops[0][0]
    return Projection(proj_name, cur.source, target, kind, w, b, stride, padding), out_shape


def _neuron_population(name, neuron: SpikingNeuron, shape) -> Population:
    return Population(name, shape, neuron.model_name, neuron.neuron_params())


def fold_model(model: SpikingNet, class_names=None, input_range=None, provenance=None) -> Network:
    """Fold and return a validated :class:`~evsim.graph.Network` (float64 weights)."""
    if not isinstance(model, SpikingNet):
        raise NetworkError("fold_model needs a SpikingNet (see evsim.bridge.models)")
    model = model.eval()
    pops: list[Population] = []
    projs: list[Projection] = []
    cur = _Cursor(INPUT, tuple(model.input_shape), 1.0)

    def close(neuron_name, neuron, cursor):
        pr, shape = _projection(neuron_name, cursor, neuron_name)
        projs.append(pr)
        pops.append(_neuron_population(neuron_name, neuron, shape))
        return _Cursor(neuron_name, shape, float(neuron.amplitude.detach().double().item()))

    for idx, m in model.layers.named_children():
        name = f"layers.{idx}"
        if isinstance(m, SpikingNeuron):
            cur = close(name, m, cur)
        elif isinstance(m, BasicBlock):
            if cur.pending:
                raise NetworkError(f"{name}: a residual block must follow a neuron layer "
                                   f"(pending: {', '.join(n for n, _ in cur.pending)})")
            block_in = cur
            mid = close(f"{name}.sn1", m.sn1, _Cursor(block_in.source, block_in.shape, block_in.amplitude,
                                                      [(f"{name}.conv1", m.conv1), (f"{name}.bn1", m.bn1)]))
            out = f"{name}.sn2"
            cur = close(out, m.sn2, _Cursor(mid.source, mid.shape, mid.amplitude,
                                            [(f"{name}.conv2", m.conv2), (f"{name}.bn2", m.bn2)]))
            if len(m.shortcut) == 0:
                if block_in.source == INPUT and model.encoding == "direct":
                    raise NetworkError(f"{name}: an identity shortcut from a real-valued input is not supported")
                projs.append(Projection(f"{name}.shortcut", block_in.source, out, "identity",
                                        scale=block_in.amplitude))
            else:
                sc = [(f"{name}.shortcut.{i}", mm) for i, mm in m.shortcut.named_children()]
                pr, shape = _projection(f"{name}.shortcut", _Cursor(block_in.source, block_in.shape,
                                                                    block_in.amplitude, sc), out)
                pr.name = f"{name}.shortcut"
                if shape != cur.shape:
                    raise NetworkError(f"{name}: shortcut output {shape} does not match the block output {cur.shape}")
                projs.append(pr)
        elif isinstance(m, LINEAR_OPS):
            cur.pending.append((name, m))
        else:
            raise NetworkError(f"{name}: layer type {type(m).__name__} cannot be exported")
    if not cur.pending:
        raise NetworkError("the network must end in a Linear readout after its last neuron layer")
    pr, _ = _projection("readout", cur, READOUT)
    if pr.kind != "linear":
        raise NetworkError("the readout must be a Linear layer")
    projs.append(pr)
    prov = {"made_by": "evsim.bridge.fold", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__, "model_config": model.config}
    prov.update(provenance or {})
    net = Network(pops, projs, model.timesteps, model.input_shape, encoding=model.encoding, readout="mean",
                  class_names=class_names, input_range=input_range, provenance=prov)
    return net.validate()

"""Fold a re-expressed paper network (:mod:`.nets`) into an evsim :class:`~evsim.graph.Network`.

What folds where, all exactly (float64, no approximation):

* eval-mode BatchNorm (2d per step, or the blocks' 3d) into the conv before it;
* AvgPool2d(k) with stride k on a map that k divides, into the conv after it
  (a k-times larger kernel, stride and padding), also in the AvgDown shortcut of
  resnet20m (``ceil_mode`` and ``count_include_pad`` change nothing when k
  divides the map, since no window is partial): format v1;
* any other single AvgPool2d before a conv (overlapping or zero-padded windows,
  partial ``ceil_mode`` windows, a map the pool does not divide) stays a pool:
  the conv becomes a *pooled conv* (:mod:`evsim.pooling`, format v3), e.g. the
  stem pool of their ImageNet ResNets before layer1.0's first conv, or
  resnet20m's AvgDown shortcuts on an odd map;
* a pool feeding a residual add directly (resnet20m's stem pool into layer1.0,
  and the ImageNet ResNets' stem pool into layer1.0's identity shortcut)
  becomes a conv projection with kernel k, stride s, padding p and weight 1/k^2
  on the channel diagonal when every window it averages is a full k x k one
  (padding counted), else a pooled 1x1 conv of the channel identity (v3);
* the last pools, the global average pool, ``scale`` (resnet20m) and the Linear
  classifier into one linear readout.

Anything else (two pools before one conv that do not tile the map, or pools
before the readout on a map they do not divide, which would average partial
windows or drop rows) is refused in one line naming the layer.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import torch
from torch import nn

from ...errors import NetworkError
from ...graph import INPUT, READOUT, Network, Population, Projection, conv_output_hw
from ...pooling import AvgPool, check_pooled, output_shape, windows
from ..fold import bn_affine
from .nets import (VGG, Block, CifarResNet, ImageNetResNet, ModifiedResNet, PaperLIF, PaperNet, PerStep, TimeBN,
                   TimeFolded)


def _t(a) -> np.ndarray:
    return a.detach().double().cpu().numpy()


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _avg_pool(name: str, pool: nn.AvgPool2d, shape) -> AvgPool:
    """The pool as format v3 states it, checked against the map it pools."""
    if pool.divisor_override:
        raise NetworkError(f"{name}: AvgPool2d with divisor_override is not supported")
    spec = AvgPool(_pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size),
                   _pair(pool.padding), pool.ceil_mode, pool.count_include_pad)
    check_pooled(name, spec, shape)
    return spec


def _pool_is_conv(spec: AvgPool, shape) -> bool:
    """Whether the pool is exactly a conv of kernel k, stride s, padding p and weight 1/(ky*kx): every window
    it averages divides by the full ky*kx, and it has as many outputs as that conv."""
    for a in (0, 1):
        n = shape[1 + a]
        k, s, p = spec.kernel[a], spec.stride[a], spec.padding[a]
        factor = windows(n, k, s, p, spec.ceil_mode, spec.count_include_pad)[2]
        if len(factor) != (n + 2 * p - k) // s + 1 or not bool((factor == k).all()):
            return False
    return True


def _pool_factor(name: str, pool: nn.AvgPool2d, shape) -> int:
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    if k[0] != k[1] or s != k or p != (0, 0) or pool.divisor_override:
        raise NetworkError(f"{name}: AvgPool2d(kernel {k}, stride {s}, padding {p}) overlaps or pads; evsim folds "
                           "such a pool only into a single conv after it (a pooled conv), not into the classifier")
    f = k[0]
    if shape[1] % f or shape[2] % f:
        how = ("averages the partial windows at the edge (ceil_mode)" if pool.ceil_mode
               else "drops the last rows or columns")
        raise NetworkError(f"{name}: AvgPool2d({f}) of a {shape[1]}x{shape[2]} map {how}; evsim folds such a pool "
                           "only into a single conv after it (a pooled conv), not into the classifier: use an input "
                           "whose sides keep every pooled map before the classifier divisible")
    return f


class _Folder:
    def __init__(self, net: PaperNet):
        self.net = net
        self.pops: list[Population] = []
        self.projs: list[Projection] = []

    def population(self, name: str, neuron: PaperLIF, shape) -> str:
        self.pops.append(Population(name, shape, neuron.model_name, neuron.neuron_params()))
        return name

    def conv(self, name, source, src_shape, target, conv: nn.Conv2d, bn=None, pools=()):
        """[pool]* conv [bn] from ``source`` into ``target``; returns the output shape."""
        w = _t(conv.weight)
        b = _t(conv.bias) if conv.bias is not None else None
        stride, padding = tuple(conv.stride), tuple(conv.padding)
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
            raise NetworkError(f"{name}: grouped, dilated or non-zero-padded convs are not supported")
        shape = tuple(src_shape)
        factors = []
        try:
            for pname, pool in pools:
                f = _pool_factor(pname, pool, shape)
                factors.append(f)
                shape = (shape[0], shape[1] // f, shape[2] // f)
        except NetworkError:
            if len(pools) != 1:
                raise
            return self._pooled_conv(name, source, src_shape, target, w, b, stride, padding, bn,
                                     _avg_pool(pools[0][0], pools[0][1], src_shape))
        for f in reversed(factors):
            w = np.repeat(np.repeat(w, f, axis=2), f, axis=3) / (f * f)
            stride = (stride[0] * f, stride[1] * f)
            padding = (padding[0] * f, padding[1] * f)
        if bn is not None:
            s, c = bn_affine(bn)
            w = w * s[:, None, None, None]
            b = (np.zeros(w.shape[0]) if b is None else b) * s + c
        self.projs.append(Projection(name, source, target, "conv2d", w, b, stride, padding))
        h, wd = conv_output_hw(src_shape[1], src_shape[2], w.shape[2:], stride, padding)
        return (w.shape[0], h, wd)

    def _pooled_conv(self, name, source, src_shape, target, w, b, stride, padding, bn, spec: AvgPool):
        """A pool the conv after it cannot absorb exactly: a pooled conv (format v3)."""
        if bn is not None:
            s, c = bn_affine(bn)
            w = w * s[:, None, None, None]
            b = (np.zeros(w.shape[0]) if b is None else b) * s + c
        self.projs.append(Projection(name, source, target, "conv2d", w, b, stride, padding, pool=spec))
        return output_shape(spec, w.shape, src_shape, stride, padding)

    def pool_projection(self, name, source, src_shape, target, pool: nn.AvgPool2d):
        """A pool whose output is added to a neuron directly: a diagonal conv of weight 1/(ky*kx) with the pool's
        kernel, stride and padding where that is the pool exactly, else a pooled 1x1 conv of the identity."""
        spec = _avg_pool(name, pool, src_shape)
        c = src_shape[0]
        if _pool_is_conv(spec, src_shape):
            ky, kx = spec.kernel
            w = np.zeros((c, c, ky, kx))
            w[np.arange(c), np.arange(c)] = 1.0 / (ky * kx)
            self.projs.append(Projection(name, source, target, "conv2d", w, None, spec.stride, spec.padding))
            return (c, *conv_output_hw(src_shape[1], src_shape[2], (ky, kx), spec.stride, spec.padding))
        w = np.zeros((c, c, 1, 1))
        w[np.arange(c), np.arange(c)] = 1.0
        self.projs.append(Projection(name, source, target, "conv2d", w, None, (1, 1), (0, 0), pool=spec))
        return output_shape(spec, w.shape, src_shape, (1, 1), (0, 0))

    def readout(self, name, source, shape, pools, fc: nn.Linear, scale=None):
        """[pool]* global-average-pool [* scale] Linear: one linear map over the source's C*H*W values."""
        for pname, pool in pools:
            f = _pool_factor(pname, pool, shape)
            shape = (shape[0], shape[1] // f, shape[2] // f)
        # pools that tile the map exactly, then the global mean: the mean over every position of the source
        w = _t(fc.weight)
        if scale is not None:
            w = w * _t(scale).reshape(1, -1)
        if w.shape[1] != shape[0]:
            raise NetworkError(f"{name}: the classifier takes {w.shape[1]} features, the last layer has {shape[0]}")
        return self._add_readout(name, source, w, _t(fc.bias) if fc.bias is not None else None)

    def _add_readout(self, name, source, w, b):
        src = next(p for p in self.pops if p.name == source)
        positions = int(np.prod(src.shape[1:]))
        self.projs.append(Projection(name, source, READOUT, "linear", np.repeat(w / positions, positions, axis=1),
                                     b if b is not None and np.any(b) else None))

    # ------------------------------------------------------------- parts
    def pooled_block(self, name, blk: Block, source, shape, pool):
        """A residual block whose input is ``pool`` (name, AvgPool2d) of ``source``: the pool feeds its conv1
        (folded into it, or a pooled conv) and its identity shortcut (a pooling projection)."""
        mid = self.conv(f"{name}.conv1", source, shape, f"{name}.relu1", blk.conv1.pool, blk.bn1.bn, [pool])
        self.population(f"{name}.relu1", blk.relu1, mid)
        out = self.conv(f"{name}.conv2", f"{name}.relu1", mid, f"{name}.output_act", blk.conv2.pool, blk.bn2.bn)
        self.population(f"{name}.output_act", blk.output_act, out)
        if blk.downsample is not None:
            raise NetworkError(f"{name}: a downsample after the stem pool is not part of these networks")
        got = self.pool_projection(f"{name}.shortcut", source, shape, f"{name}.output_act", pool[1])
        if got != out:
            raise NetworkError(f"{name}: the pooled shortcut gives {got}, the block's output is {out}")
        return f"{name}.output_act", out

    def block(self, name, blk: Block, source, shape):
        mid = self.conv(f"{name}.conv1", source, shape, f"{name}.relu1", blk.conv1.pool, blk.bn1.bn)
        self.population(f"{name}.relu1", blk.relu1, mid)
        out_name = f"{name}.output_act"
        out = self.conv(f"{name}.conv2", f"{name}.relu1", mid, out_name, blk.conv2.pool, blk.bn2.bn)
        self.population(out_name, blk.output_act, out)
        self._shortcut(name, blk, source, shape, out_name, out)
        return out_name, out

    def _shortcut(self, name, blk, source, shape, target, out):
        if blk.downsample is None:
            if source == INPUT:
                raise NetworkError(f"{name}: an identity shortcut from the real-valued input is not supported")
            self.projs.append(Projection(f"{name}.shortcut", source, target, "identity", scale=1.0))
            return
        mods = list(blk.downsample)
        pools = [(f"{name}.downsample.{i}", m.pool) for i, m in enumerate(mods) if isinstance(m, TimeFolded)
                 and isinstance(m.pool, nn.AvgPool2d)]
        conv = next(m.pool for m in mods if isinstance(m, TimeFolded) and isinstance(m.pool, nn.Conv2d))
        bn = next(m.bn for m in mods if isinstance(m, TimeBN))
        got = self.conv(f"{name}.downsample", source, shape, target, conv, bn, pools)
        if got != out:
            raise NetworkError(f"{name}: the downsample gives {got}, the block's output is {out}")


def _resnet_blocks(fo: _Folder, layers, source, shape):
    for lname, stage in layers:
        for i, blk in enumerate(stage):
            source, shape = fo.block(f"model.{lname}.{i}", blk, source, shape)
    return source, shape


def fold_paper_model(net: PaperNet, provenance: dict | None = None) -> Network:
    """Fold and validate; population names are the neuron modules' paths in ``net``."""
    net = net.eval()
    m = net.model
    fo = _Folder(net)
    shape = net.input_shape
    if len(shape) != 3:
        raise NetworkError(f"input shape {shape}: these networks take images (C, H, W)")
    with torch.no_grad():
        if isinstance(m, CifarResNet):
            s = fo.conv("model.conv1", INPUT, shape, "model.relu", m.conv1.pool, m.bn1.conv)
            src = fo.population("model.relu", m.relu, s)
            src, s = _resnet_blocks(fo, [("layer1", m.layer1), ("layer2", m.layer2), ("layer3", m.layer3)], src, s)
            fo.readout("model.fc", src, s, [], m.fc.conv)
        elif isinstance(m, ImageNetResNet):
            s = fo.conv("model.conv1", INPUT, shape, "model.relu", m.conv1.pool, m.bn1.conv)
            src = fo.population("model.relu", m.relu, s)
            # the stem pool feeds layer1.0's conv1 (a pooled conv) and its identity shortcut (a 3x3/2 conv of 1/9)
            src, s = fo.pooled_block("model.layer1.0", m.layer1[0], src, s, ("model.avgpool1", m.avgpool1.pool))
            for i, blk in enumerate(list(m.layer1)[1:], start=1):
                src, s = fo.block(f"model.layer1.{i}", blk, src, s)
            src, s = _resnet_blocks(fo, [("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4)], src, s)
            fo.readout("model.fc", src, s, [], m.fc.conv)
        elif isinstance(m, ModifiedResNet):
            src, s = INPUT, shape
            stem = list(m.conv1)
            for i in range(0, len(stem), 3):
                name = f"model.conv1.{i + 2}"
                s = fo.conv(f"model.conv1.{i}", src, s, name, stem[i].pool, stem[i + 1].conv)
                src = fo.population(name, stem[i + 2], s)
            # the pool feeds layer1.0's conv1 (folded into it) and its identity shortcut (a pooling projection)
            src, s = fo.pooled_block("model.layer1.0", m.layer1[0], src, s, ("model.avgpool", m.avgpool.pool))
            for i, blk in enumerate(list(m.layer1)[1:], start=1):
                src, s = fo.block(f"model.layer1.{i}", blk, src, s)
            src, s = _resnet_blocks(fo, [("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4)], src, s)
            fo.readout("model.fc", src, s, [], m.fc.conv, getattr(m, "scale", None))
        elif isinstance(m, VGG):
            src, s = INPUT, shape
            pools, conv = [], None
            for idx, mod in m.features.named_children():
                name = f"model.features.{idx}"
                if isinstance(mod, TimeFolded) and isinstance(mod.pool, nn.AvgPool2d):
                    pools.append((name, mod.pool))
                elif isinstance(mod, TimeFolded):
                    conv = (name, mod.pool)
                elif isinstance(mod, PerStep):
                    bn = mod.conv
                elif isinstance(mod, PaperLIF):
                    s = fo.conv(conv[0], src, s, name, conv[1], bn, pools)
                    src = fo.population(name, mod, s)
                    pools = []
                elif not isinstance(mod, nn.Dropout):
                    raise NetworkError(f"{name}: unexpected layer {type(mod).__name__}")
            fo.readout("model.classifier", src, s, pools, m.classifier.conv)
        else:
            raise NetworkError(f"cannot fold a {type(m).__name__}")
    prov = {"made_by": "evsim.bridge.papers", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": str(torch.__version__), "model_config": net.config}
    prov.update(provenance or {})
    network = Network(fo.pops, fo.projs, net.timesteps, net.input_shape, encoding="direct", readout="mean",
                      provenance=prov)
    return network.validate()

"""Spiking network definitions, configurable in width, channels and classes.

Every network is a :class:`SpikingNet`: a flat ``nn.Sequential`` of the
layer types the exporter understands (Conv2d, BatchNorm2d, Linear,
BatchNorm1d, AvgPool2d, AdaptiveAvgPool2d, Flatten, the spiking neurons of
:mod:`evsim.bridge.layers`, and :class:`BasicBlock`). Any network built from
those layers, not only the ones below, can be folded, exported and verified.

Architectures follow the public Ternary Spike code (docs/REFERENCES.md section 1):
ResNet-19 (stages [3, 3, 2], widths 128/256/512) and ResNet-20 (stages
[3, 3, 3]) in the CIFAR layout; ``width`` scales the channel counts so that
small versions train on two CPU cores.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .layers import SpikingNeuron, make_neuron


class BasicBlock(nn.Module):
    """conv1-BN-neuron-conv2-BN, plus the shortcut, summed into the output neuron.

    The shortcut is the block's input spikes themselves (identity) or a
    1x1 conv + BN of them when the shape changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, neuron: Callable[[], SpikingNeuron]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.sn1 = neuron()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Sequential()
        self.sn2 = neuron()

    def forward(self, x):
        out = self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x)))))
        return self.sn2(out + self.shortcut(x))


class SpikingNet(nn.Module):
    """Runs ``layers`` over T timesteps and averages the output over T.

    ``encoding="direct"``: a static input (B, ...) is repeated T times, so
    the first layer sees real values. ``"spikes"``: the input is already
    (B, T, ...) in {-1, 0, 1}. ``config`` records everything needed to
    rebuild the network from a checkpoint (see :func:`build_model`).
    """

    def __init__(self, layers: nn.Sequential, timesteps: int, input_shape, encoding: str = "direct",
                 config: dict | None = None):
        super().__init__()
        self.layers = layers
        self.timesteps = int(timesteps)
        self.input_shape = tuple(input_shape)
        self.encoding = encoding
        self.config = dict(config or {})
        self.set_timesteps(self.timesteps)

    def neurons(self) -> list[tuple[str, SpikingNeuron]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SpikingNeuron)]

    def set_timesteps(self, T: int):
        self.timesteps = int(T)
        for _, m in self.neurons():
            m.timesteps = self.timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.timesteps
        if self.encoding == "direct":
            B = x.shape[0]
            xt = x.unsqueeze(0).expand(T, *x.shape).reshape(T * B, *x.shape[1:])
        else:
            B = x.shape[0]
            xt = x.transpose(0, 1).reshape(T * B, *x.shape[2:])
        y = self.layers(xt)
        return y.reshape(T, B, *y.shape[1:]).mean(0)


def _neuron_factory(neuron: str, **kw) -> Callable[[], SpikingNeuron]:
    make_neuron(neuron, **kw)  # fail early on an unknown name
    return lambda: make_neuron(neuron, **kw)


def convnet(in_channels=1, num_classes=10, width=16, image_size=28, neuron="ternary", **kw) -> nn.Sequential:
    """A small conv net: two conv stages with average pooling, then a linear readout."""
    sn = _neuron_factory(neuron, **kw)
    c1, c2 = width, 2 * width
    s = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), sn(),
        nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), sn(),
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(c2 * s * s, num_classes),
    )


def vgg(in_channels=1, num_classes=10, width=16, image_size=28, neuron="ternary", **kw) -> nn.Sequential:
    """A VGG-style net: conv pairs separated by average pooling (pool folds into the next conv)."""
    sn = _neuron_factory(neuron, **kw)
    c = [width, 2 * width, 4 * width]
    layers: list[nn.Module] = []
    cin = in_channels
    size = image_size
    for i, cout in enumerate(c):
        if i > 0:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), sn(),
                   nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), sn()]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def resnet(stages=(3, 3, 2), widths=(128, 256, 512), in_channels=3, num_classes=10,
           neuron="ternary", **kw) -> nn.Sequential:
    """CIFAR-layout ResNet: 3x3 stem, BasicBlock stages (stride 2 from the second), avg pool, linear."""
    sn = _neuron_factory(neuron, **kw)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                               nn.BatchNorm2d(widths[0]), sn()]
    cin = widths[0]
    for i, (n, w) in enumerate(zip(stages, widths)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(BasicBlock(cin, w, stride, sn))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _scaled(widths, width):
    return tuple(max(1, int(round(w * width / widths[0]))) for w in widths)


ARCHITECTURES = {
    "convnet": lambda width=16, **kw: convnet(width=width, **kw),
    "vgg": lambda width=16, **kw: vgg(width=width, **kw),
    "resnet8": lambda width=16, **kw: resnet((1, 1, 1), _scaled((128, 256, 512), width), **kw),
    "resnet19": lambda width=128, **kw: resnet((3, 3, 2), _scaled((128, 256, 512), width), **kw),
    "resnet20": lambda width=128, **kw: resnet((3, 3, 3), _scaled((128, 256, 512), width), **kw),
}


def build_model(arch: str, neuron: str = "ternary", timesteps: int = 4, in_channels: int = 1,
                num_classes: int = 10, image_size: int = 28, width: int | None = None,
                encoding: str = "direct") -> SpikingNet:
    """Build a network from the plain values a checkpoint's ``config`` records."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    kw = dict(in_channels=in_channels, num_classes=num_classes, neuron=neuron)
    if arch in ("convnet", "vgg"):
        kw["image_size"] = image_size
    if width is not None:
        kw["width"] = width
    layers = ARCHITECTURES[arch](**kw)
    config = dict(arch=arch, neuron=neuron, timesteps=timesteps, in_channels=in_channels,
                  num_classes=num_classes, image_size=image_size, width=width, encoding=encoding)
    return SpikingNet(layers, timesteps, (in_channels, image_size, image_size), encoding, config)

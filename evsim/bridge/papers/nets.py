"""The papers' networks, re-expressed in this project's own PyTorch code.

These modules are evsim's statement of what the training code of Ternary Spike
(yfguo91/Ternary-Spike) and CTSN (ZBX05/Enhanced-TernarySNN) computes at
inference, written from reading that code, not copied from it. They reproduce
two things exactly:

* the **state-dict layout** those repositories save: the network sits in a
  wrapper's ``model`` attribute; a conv is held as ``<name>.pool`` (their
  time-folded wrapper), a BatchNorm2d or Linear applied step by step as
  ``<name>.conv``, the BatchNorm of a residual block as a BatchNorm3d at
  ``<name>.bn``; neurons hold no tensors except CTSN's scalars ``alpha``,
  ``beta``, ``gamma``;
* the **forward pass** in eval mode: tensors are time-major ``(T, B, ...)``; the
  input image is repeated T times (direct encoding); the neuron is
  ``u = 0.25 * u + x``, spike ``sign(u / V)`` where ``|u / V| >= 0.5`` with
  ``V = 1``, then ``u *= 1 - |spike|`` (hard reset on either sign); a residual
  block adds its input spikes (or their downsample) before its second neuron;
  the classifier runs at every step and the outputs are averaged over T.

Every neuron is a :class:`~evsim.bridge.layers.SpikingNeuron` (so
:func:`evsim.bridge.verify.verify` records and compares its spikes) whose module
path, e.g. ``model.layer1.0.relu1``, is also its population name in the folded
file.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import SpikingNeuron

TAU = 0.25          # their decay
V_CODE = 1.0        # their V_th as the code divides by it; spikes fire at half of it


class PaperLIF(SpikingNeuron):
    """Their ternary LIF neuron, step by step in their order of operations (no amplitude: fire_ratio is 1)."""

    model_name = "ternary_lif"

    def __init__(self, timesteps: int):
        super().__init__(tau=TAU, v_threshold=0.5 * V_CODE, learn_amplitude=False)
        # SpikingNeuron keeps an amplitude buffer; theirs has no such tensor, so it stays out of the state dict
        self.register_buffer("amplitude", torch.ones(1), persistent=False)
        self.timesteps = int(timesteps)

    @staticmethod
    def fire(u: torch.Tensor) -> torch.Tensor:
        r = u / V_CODE
        return torch.sign(r) * (r.abs() >= 0.5).to(r.dtype)

    def step(self, t: int, u: torch.Tensor, x: torch.Tensor, state: dict) -> torch.Tensor:
        return u * TAU + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # x: (T, B, ...)
        u = torch.zeros_like(x[0])
        state: dict = {}
        out = []
        for t in range(x.shape[0]):
            u = self.step(t, u, x[t], state)
            s = self.fire(u)
            u = u * (1.0 - s.abs())
            out.append(s)
        spikes = torch.stack(out)
        if self.record_spikes:
            self.spikes = spikes.detach()
        return spikes

    def run(self, xs):       # SpikingNeuron's abstract hook; this class steps in forward()
        return self.forward(xs)


class PaperCTSN(PaperLIF):
    """CTSN's neuron (their ``LIFAct`` with ``complementary``): scalars alpha, beta, gamma (shape ()).

    static: ``h = s(a) relu(h) - s(b) relu(-h) + s(g) m``; event ("dvs"):
    ``h = s(a) h + s(b) relu(m) - s(g) relu(-m)``, with ``m = 0.25 u`` and s the
    logistic sigmoid; the membrane is then ``h + x``.
    """

    def __init__(self, timesteps: int, form: str = "static"):
        super().__init__(timesteps)
        if form not in ("static", "event"):
            raise ValueError(f"CTSN form must be 'static' or 'event', got {form!r}")
        self.form = form
        self.alpha = nn.Parameter(torch.tensor(0.0))
        self.beta = nn.Parameter(torch.tensor(0.0))
        self.gamma = nn.Parameter(torch.tensor(0.0))

    @property
    def model_name(self):
        return "ctsn_static" if self.form == "static" else "ctsn_event"

    def neuron_params(self) -> dict:
        ka, kb, kg = (float(torch.sigmoid(p.detach().double()).item()) for p in (self.alpha, self.beta, self.gamma))
        return {"tau": TAU, "v_threshold": 0.5 * V_CODE, "k_alpha": ka, "k_beta": kb, "k_gamma": kg}

    def step(self, t, u, x, state):
        m = u * TAU
        h = state.get("h")
        if h is None:
            h = torch.zeros_like(x)
        ka, kb, kg = (torch.sigmoid(p) for p in (self.alpha, self.beta, self.gamma))
        if self.form == "static":
            h = ka * h.relu() + kb * -((-h).relu()) + kg * m
        else:
            h = ka * h + kb * m.relu() + kg * -((-m).relu())
        state["h"] = h
        return h + x


class TimeFolded(nn.Module):
    """A conv or pooling applied to the T*B images at once (their layout: the layer at ``.pool``)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        y = self.pool(x.flatten(0, 1))
        return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])


class PerStep(nn.Module):
    """A BatchNorm2d or Linear applied to each timestep in turn (their layout: the layer at ``.conv``)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.stack([self.conv(x[t]) for t in range(x.shape[0])])


class TimeBN(nn.Module):
    """A residual block's BatchNorm: a BatchNorm3d over (B, C, T, H, W) (their layout: ``.bn``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x):
        return self.bn(x.permute(1, 2, 0, 3, 4)).permute(2, 0, 1, 3, 4)


def _conv(cin, cout, k=3, stride=1, padding=1, bias=False):
    return TimeFolded(nn.Conv2d(cin, cout, k, stride, padding, bias=bias))


class Block(nn.Module):
    """Their residual BasicBlock: conv-BN-neuron-conv-BN, plus the shortcut, into the output neuron."""

    def __init__(self, cin, planes, stride, neuron, avg_down: bool = False):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride, 1)
        self.bn1 = TimeBN(planes)
        self.relu1 = neuron()
        self.conv2 = _conv(planes, planes, 3, 1, 1)
        self.bn2 = TimeBN(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            if avg_down:     # resnet20m: average pool, then a 1x1 conv
                self.downsample = nn.Sequential(
                    TimeFolded(nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False)),
                    _conv(cin, planes, 1, 1, 0), TimeBN(planes))
            else:
                self.downsample = nn.Sequential(_conv(cin, planes, 1, stride, 0), TimeBN(planes))
        self.output_act = neuron()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.output_act(out + residual)


def _stage(cin, planes, n, stride, neuron, avg_down=False):
    blocks = [Block(cin, planes, stride, neuron, avg_down)] + [Block(planes, planes, 1, neuron, avg_down)
                                                               for _ in range(1, n)]
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    """Their ``ResNet_Cifar`` (resnet19: stages [3, 3, 2]; resnet20: [3, 3, 3]): 3x3 stem of 128 channels.

    ``scale_len``: the Ternary Spike code keeps a learnable ``scale`` of 2048
    values beside the network; it is applied only with ``rp=True``, which cannot
    run here (512 features), so it never takes part in the forward pass.
    """

    def __init__(self, stages, in_channels, num_classes, neuron, scale_len: int | None):
        super().__init__()
        if scale_len:
            self.scale = nn.Parameter(torch.ones(1, 1, scale_len))
        w = 128
        self.conv1 = _conv(in_channels, w)
        self.bn1 = PerStep(nn.BatchNorm2d(w))
        self.relu = neuron()
        self.layer1 = _stage(w, w, stages[0], 1, neuron)
        self.layer2 = _stage(w, 2 * w, stages[1], 2, neuron)
        self.layer3 = _stage(2 * w, 4 * w, stages[2], 2, neuron)
        self.avgpool = TimeFolded(nn.AdaptiveAvgPool2d(1))
        self.fc = PerStep(nn.Linear(4 * w, num_classes))

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(2))


class ImageNetResNet(nn.Module):
    """Their ImageNet ``ResNet`` (resnet18: stages [2, 2, 2, 2]; resnet34: [3, 4, 6, 3]) of BasicBlocks.

    A 7x7 stride-2 stem conv of 64 channels (no bias) with its BatchNorm and neuron, then
    ``AvgPool2d(3, 2, 1)`` (PyTorch's defaults otherwise: no ceil_mode, padding counted) applied to
    the stem's spikes; its output is layer1.0's input, so it feeds both that block's first 3x3 conv
    and its identity shortcut. Four stages of 64..512 channels with 1x1 strided conv + BN
    downsampling, a global average pool and ``Linear(512, classes)``. No ``scale`` parameter.
    """

    def __init__(self, stages, in_channels, num_classes, neuron):
        super().__init__()
        w = 64
        self.conv1 = _conv(in_channels, w, 7, 2, 3)
        self.bn1 = PerStep(nn.BatchNorm2d(w))
        self.relu = neuron()
        self.avgpool1 = TimeFolded(nn.AvgPool2d(3, 2, 1))
        self.layer1 = _stage(w, w, stages[0], 1, neuron)
        self.layer2 = _stage(w, 2 * w, stages[1], 2, neuron)
        self.layer3 = _stage(2 * w, 4 * w, stages[2], 2, neuron)
        self.layer4 = _stage(4 * w, 8 * w, stages[3], 2, neuron)
        self.avgpool2 = TimeFolded(nn.AdaptiveAvgPool2d(1))
        self.fc = PerStep(nn.Linear(8 * w, num_classes))

    def forward(self, x):
        x = self.avgpool1(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool2(x).flatten(2))


class ModifiedResNet(nn.Module):
    """Their ``ResNet_Cifar_Modified`` (resnet20m): three-conv stem of 64 channels, AvgPool2d(2), four stages
    [2, 2, 2, 2] of 64..512 channels with "AvgDown" shortcuts, and the learnable ``scale`` (512 values).

    ``scale`` multiplies the pooled features when trained with ``rp=True``. With
    ``rp=False`` it receives no gradient and stays exactly 1, and multiplying by
    1 changes nothing, so applying it always reproduces either case exactly.
    """

    def __init__(self, in_channels, num_classes, neuron, scale_len: int | None = 512):
        super().__init__()
        if scale_len:
            self.scale = nn.Parameter(torch.ones(1, 1, scale_len))
        self.conv1 = nn.Sequential(
            _conv(in_channels, 64), PerStep(nn.BatchNorm2d(64)), neuron(),
            _conv(64, 64), PerStep(nn.BatchNorm2d(64)), neuron(),
            _conv(64, 64), PerStep(nn.BatchNorm2d(64)), neuron())
        self.avgpool = TimeFolded(nn.AvgPool2d(2))
        self.layer1 = _stage(64, 64, 2, 1, neuron, avg_down=True)
        self.layer2 = _stage(64, 128, 2, 2, neuron, avg_down=True)
        self.layer3 = _stage(128, 256, 2, 2, neuron, avg_down=True)
        self.layer4 = _stage(256, 512, 2, 2, neuron, avg_down=True)
        self.avgpool2 = TimeFolded(nn.AdaptiveAvgPool2d(1))
        self.fc = PerStep(nn.Linear(512, num_classes))

    def forward(self, x):
        x = self.avgpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool2(x).flatten(2)
        if hasattr(self, "scale"):
            x = x * self.scale
        return self.fc(x)


VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Their CIFAR VGG with BatchNorm: 3x3 convs with bias, AvgPool2d(2) for "M", global average pool,
    one Linear(512, classes). ``dropout``: the CTSN code inserts a Dropout after each neuron when
    trained with dropout > 0 (no tensors, but it shifts the layer indices of the keys)."""

    def __init__(self, cfg, in_channels, num_classes, neuron, dropout: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(TimeFolded(nn.AvgPool2d(2, 2)))
                continue
            layers += [_conv(cin, v, 3, 1, 1, bias=True), PerStep(nn.BatchNorm2d(v)), neuron()]
            if dropout:
                layers.append(nn.Dropout(0.0))
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = TimeFolded(nn.AdaptiveAvgPool2d(1))
        self.classifier = PerStep(nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(2))


class PaperNet(nn.Module):
    """The training code's wrapper: the network at ``.model``; the image repeated T times; outputs averaged."""

    encoding = "direct"

    def __init__(self, model: nn.Module, timesteps: int, input_shape, config: dict):
        super().__init__()
        self.model = model
        self.timesteps = int(timesteps)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.config = dict(config)

    def neurons(self) -> list[tuple[str, SpikingNeuron]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SpikingNeuron)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # x: (B, C, H, W)
        xt = x.unsqueeze(0).repeat(self.timesteps, 1, 1, 1, 1)
        return self.model(xt).mean(0)

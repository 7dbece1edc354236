"""Import checkpoints trained with the papers' own code: Ternary Spike and CTSN.

``evsim import --from ternary-spike|ctsn --arch ARCH --timesteps T --checkpoint CKPT --out folded.h5``
reads a state_dict as those training scripts save it (``torch.save(model.state_dict())``
of their ``SpikeModel`` wrapper: keys under ``model.``, or ``module.model.`` from
(Distributed)DataParallel), checks it key by key against this project's
re-expression of the architecture (:mod:`.nets`), and folds it into an evsim
network (:mod:`.fold`): format v1, or v3 where a pool sits before a conv in a
way no single conv expresses (their ImageNet ResNets' stem pool). ``evsim verify --from ...`` runs the same re-expression
beside the engine. The file is read with ``torch.load(weights_only=True)``: no
pickled code runs.

Supported (``ARCHITECTURES``) and refused (``REFUSED``, with the reason) are
listed per source below.
"""

from __future__ import annotations

import os

import torch

from ...errors import EvsimError
from ..checkpoint import CheckpointError, read_weights_only
from . import nets

SOURCES = ("ternary-spike", "ctsn")
DEFAULT_HW = (32, 32)       # CIFAR
IMAGENET_HW = (224, 224)    # the default input of their ImageNet ResNets
MAX_TIMESTEPS = 10_000

_CTSN_BLOCK = ("the CTSN repository's residual block builds its neurons as LIFAct(step, complementary, tmpr), which "
               "puts the complementary mode into V_th and tmpr into tau, so its blocks cannot run "
               "(2 * V_th is a string or None) and no checkpoint of it comes from that code; evsim will not guess "
               "what a patched copy did")

# arch -> (builder(in_channels, num_classes, neuron, **layout), description)
_TS = {
    "resnet19": (lambda c, n, sn, **kw: nets.CifarResNet((3, 3, 2), c, n, sn, scale_len=2048),
                 "their resnet19_cifar: 3x3 stem of 128, BasicBlocks [3, 3, 2]"),
    "resnet20": (lambda c, n, sn, **kw: nets.CifarResNet((3, 3, 3), c, n, sn, scale_len=2048),
                 "their resnet20_cifar: 3x3 stem of 128, BasicBlocks [3, 3, 3]"),
    "resnet18": (lambda c, n, sn, **kw: nets.ImageNetResNet((2, 2, 2, 2), c, n, sn),
                 "their ResNet18 (ImageNet): 7x7/2 stem of 64, AvgPool2d(3, 2, 1), BasicBlocks [2, 2, 2, 2]"),
    "resnet34": (lambda c, n, sn, **kw: nets.ImageNetResNet((3, 4, 6, 3), c, n, sn),
                 "their ResNet34 (ImageNet): 7x7/2 stem of 64, AvgPool2d(3, 2, 1), BasicBlocks [3, 4, 6, 3]"),
    "resnet20m": (lambda c, n, sn, **kw: nets.ModifiedResNet(c, n, sn, scale_len=512),
                  "their resnet20_cifar_modified: three-conv stem, AvgPool2d(2), AvgDown shortcuts, [2, 2, 2, 2]"),
    "vgg16": (lambda c, n, sn, **kw: nets.VGG(nets.VGG_CONFIGS["vgg16"], c, n, sn),
              "their vgg16_bn (CIFAR): 13 convs with BatchNorm, AvgPool2d(2), Linear(512, classes)"),
}
_CTSN = {
    "vgg11": (lambda c, n, sn, dropout=False: nets.VGG(nets.VGG_CONFIGS["vgg11"], c, n, sn, dropout),
              "their vgg11_bn: 8 convs with BatchNorm, AvgPool2d(2), Linear(512, classes)"),
    "vgg16": (lambda c, n, sn, dropout=False: nets.VGG(nets.VGG_CONFIGS["vgg16"], c, n, sn, dropout),
              "their vgg16_bn: 13 convs with BatchNorm, AvgPool2d(2), Linear(512, classes)"),
}
ARCHITECTURES = {"ternary-spike": _TS, "ctsn": _CTSN}
REFUSED = {
    "ternary-spike": {},
    "ctsn": {**{a: _CTSN_BLOCK for a in ("resnet19", "resnet20", "resnet20m", "resnet32", "resnet34", "sewresnet34")},
             "vggsnn": "vggsnn is their CIFAR10-DVS network: its input is a different event frame at every step, "
                       "which neither of format v1's encodings (one image repeated, or ternary spikes) holds"},
}
CLASSIFIER = {"resnet18": "model.fc.conv.weight", "resnet34": "model.fc.conv.weight",
              "resnet19": "model.fc.conv.weight", "resnet20": "model.fc.conv.weight",
              "resnet20m": "model.fc.conv.weight", "vgg11": "model.classifier.conv.weight",
              "vgg16": "model.classifier.conv.weight"}
STEM = {"resnet18": "model.conv1.pool.weight", "resnet34": "model.conv1.pool.weight",
        "resnet19": "model.conv1.pool.weight", "resnet20": "model.conv1.pool.weight",
        "resnet20m": "model.conv1.0.pool.weight", "vgg11": "model.features.0.pool.weight",
        "vgg16": "model.features.0.pool.weight"}


IMAGENET = ("resnet18", "resnet34")


class ImportCheckpointError(CheckpointError):
    """A checkpoint that is not a state_dict of the named architecture."""


def arch_names(source: str) -> list[str]:
    return sorted(set(ARCHITECTURES[source]) | set(REFUSED[source]))


def check_arch(source: str, arch: str) -> None:
    if source not in SOURCES:
        raise EvsimError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    if arch in REFUSED[source]:
        raise EvsimError(f"{source} {arch} is refused: {REFUSED[source][arch]}")
    if arch not in ARCHITECTURES[source]:
        raise EvsimError(f"unknown {source} architecture {arch!r} (supported: {', '.join(ARCHITECTURES[source])})")


def load_state_dict(path) -> dict:
    """The checkpoint's tensors by name, read weights-only; ``module.`` (DataParallel) prefixes removed."""
    obj = read_weights_only(path, ImportCheckpointError,
                            "evsim loads checkpoints weights-only and does not unpickle code. Save the model's "
                            "state_dict() instead of the model")
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "net"):       # a training script's {"state_dict": ...} wrapper
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ImportCheckpointError(f"{path}: not a state_dict (a dict of tensor names to tensors), "
                                    f"but {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ImportCheckpointError(f"{path}: not a state_dict: key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise ImportCheckpointError(f"{path}: not a state_dict: {k!r} holds a {type(v).__name__}, not a tensor")
        if v.is_complex() or not (v.is_floating_point() or v.dtype in (torch.int64, torch.int32)):
            raise ImportCheckpointError(f"{path}: tensor {k!r} has dtype {v.dtype}, not a real number type")
        name = k
        while name.startswith("module."):
            name = name[len("module."):]
        if name in state:
            raise ImportCheckpointError(f"{path}: key {k!r} appears twice once 'module.' prefixes are removed")
        state[name] = v
    return state


def _shape_of(state, key):
    v = state.get(key)
    return tuple(v.shape) if v is not None else None


def build(source, arch, timesteps, in_channels, num_classes, input_shape, layout=None, form="static",
          complementary=True, device=None) -> nets.PaperNet:
    layout = dict(layout or {})
    T = int(timesteps)
    if source == "ctsn":
        sn = (lambda: nets.PaperCTSN(T, form)) if complementary else (lambda: nets.PaperLIF(T))
    else:
        sn = lambda: nets.PaperLIF(T)        # noqa: E731
    fn, desc = ARCHITECTURES[source][arch]
    config = dict(source=source, arch=arch, timesteps=T, num_classes=num_classes, input_shape=list(input_shape),
                  description=desc, **({"ctsn_form": form if complementary else None, **layout}
                                        if source == "ctsn" else {}))
    if device is not None:
        with torch.device(device):
            inner = fn(in_channels, num_classes, sn, **layout)
    else:
        inner = fn(in_channels, num_classes, sn, **layout)
    return nets.PaperNet(inner, T, input_shape, config)


def _layouts(source, arch):
    """The key layouts the training code can save for one architecture (CTSN: with or without
    alpha/beta/gamma, with or without Dropout between layers)."""
    if source == "ctsn":
        return [dict(complementary=c, layout=dict(dropout=d)) for c in (True, False) for d in (False, True)]
    return [dict(complementary=True, layout={})]


def _mismatch(state, expected):
    """(number of offending keys, the first problem) of ``state`` against ``expected`` (name -> shape)."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    shaped = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    n = len(missing) + len(extra) + len(shaped)
    more = lambda lst: f" (and {len(lst) - 1} more)" if len(lst) > 1 else ""      # noqa: E731
    if missing:
        return n, f"missing key {missing[0]!r}" + more(missing)
    if extra:
        return n, f"unexpected key {extra[0]!r}" + more(extra)
    if shaped:
        k = shaped[0]
        return n, f"key {k!r} has shape {tuple(state[k].shape)}, the architecture needs {expected[k]}"
    return 0, None


def _fits_other(state, source, arch, timesteps, input_shape, num_classes, form) -> str:
    for other in ARCHITECTURES[source]:
        if other == arch or STEM[other] not in state:
            continue
        for lay in _layouts(source, other):
            with torch.device("meta"):
                ref = build(source, other, timesteps, input_shape[0], num_classes, input_shape, form=form, **lay)
            if _mismatch(state, {k: tuple(v.shape) for k, v in ref.state_dict().items()})[0] == 0:
                return f"; it fits --arch {other}"
    return ""


def load_paper_checkpoint(path, source: str, arch: str, timesteps: int, num_classes: int | None = None,
                          input_shape=None, form: str = "static") -> nets.PaperNet:
    """Check ``path`` against the architecture and return the re-expressed network with its weights (eval)."""
    check_arch(source, arch)
    if type(timesteps) is not int or not 1 <= timesteps <= MAX_TIMESTEPS:
        raise EvsimError(f"timesteps must be an integer in [1, {MAX_TIMESTEPS}], got {timesteps!r}")
    if form not in ("static", "event"):
        raise EvsimError(f"CTSN form must be 'static' or 'event', got {form!r}")
    state = load_state_dict(path)
    if not any(k.startswith("model.") for k in state):
        raise ImportCheckpointError(f"{path}: does not fit {source} {arch}: no key starts with 'model.' (their "
                                    f"SpikeModel wrapper's prefix), e.g. {next(iter(state))!r}")
    stem, cls = _shape_of(state, STEM[arch]), _shape_of(state, CLASSIFIER[arch])
    if input_shape is None:
        c = stem[1] if stem is not None and len(stem) == 4 else 3
        input_shape = (c,) + (IMAGENET_HW if arch in IMAGENET else DEFAULT_HW)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise EvsimError(f"input shape must be three positive integers C,H,W, got {input_shape}")
    if num_classes is None:
        num_classes = cls[0] if cls is not None and len(cls) == 2 and cls[0] >= 1 else 10
    where = f"{path}: does not fit {source} {arch} ({num_classes} classes, {input_shape[0]} input channels)"
    problems = []
    for lay in _layouts(source, arch):
        with torch.device("meta"):     # shapes only
            ref = build(source, arch, timesteps, input_shape[0], num_classes, input_shape, form=form, **lay)
        expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        n_bad, problem = _mismatch(state, expected)
        if problem is None:
            break
        problems.append((n_bad, problem))
    else:       # the layout the checkpoint is closest to names the problem
        raise ImportCheckpointError(f"{where}: {min(problems, key=lambda p: p[0])[1]}"
                                    + _fits_other(state, source, arch, timesteps, input_shape, num_classes, form))
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ImportCheckpointError(f"{path}: tensor {k!r} contains NaN or inf")
    if source == "ternary-spike" and arch in ("resnet19", "resnet20"):
        scale = state.get("model.scale")
        if scale is not None and not bool((scale == 1).all()):
            raise ImportCheckpointError(
                f"{path}: 'model.scale' is not all ones, but their {arch} never applies it (rp=True multiplies "
                "512 features by 2048 scales and cannot run); this checkpoint did not come from that code")
    net = build(source, arch, timesteps, input_shape[0], num_classes, input_shape, form=form, **lay)
    if any(v.dtype == torch.float64 for v in state.values()):
        net = net.double()          # a float64 checkpoint keeps every bit (float32 and narrower convert exactly)
    full = net.state_dict()
    for k, v in full.items():
        if k not in state:          # only num_batches_tracked may be absent (older PyTorch)
            state[k] = torch.zeros_like(v)
    net.load_state_dict({k: v.to(full[k].dtype) for k, v in state.items()})
    return net.eval()


def import_checkpoint(path, source, arch, timesteps, num_classes=None, input_shape=None, form="static"):
    """(re-expressed network, folded :class:`~evsim.graph.Network`)."""
    from .fold import fold_paper_model
    net = load_paper_checkpoint(path, source, arch, timesteps, num_classes, input_shape, form)
    network = fold_paper_model(net, provenance={"checkpoint": os.path.basename(os.fspath(path)),
                                                "imported_from": source})
    return net, network


def model_for_network(path, source, arch, network):
    """The re-expressed network of ``path`` with the T, input shape, classes and CTSN form of a folded file."""
    form = "event" if any(p.model == "ctsn_event" for p in network.populations) else "static"
    return load_paper_checkpoint(path, source, arch, network.timesteps, network.n_classes,
                                 tuple(network.input_shape), form)


def calibrate_random(net, x, seed: int = 0, residual_gain: float = 1.0) -> None:
    """Make a randomly initialised paper network fire at realistic rates (tests, benchmarks): every BatchNorm
    gets a random affine map and, as running statistics, the statistics of its own input on ``x`` (set by a
    pre-hook on its first call, so later layers see the calibrated earlier ones); CTSN's alpha, beta, gamma
    are drawn from N(0, 1). The network is left in eval mode.

    ``residual_gain`` scales the affine map of the last BatchNorm of every block with an identity shortcut.
    With random weights nothing cancels the shortcut's +-1 spikes, so each such block fires at least as
    often as its input and a long chain of them (resnet34's six-block stage) climbs towards ~2/3; a gain
    below 1 keeps that chain near the rate of its first block, as trained networks do."""
    from torch import nn
    g = torch.Generator().manual_seed(seed)

    def hook(mod, args):
        inp = args[0]
        dims = [d for d in range(inp.ndim) if d != 1]
        gain = getattr(mod, "_gain", 1.0)
        mod.running_mean.copy_(inp.mean(dims))
        mod.running_var.copy_(inp.var(dims) + 1e-3)
        mod.weight.data.copy_(torch.empty(mod.num_features).uniform_(0.25, 0.5, generator=g) * gain)
        mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * (0.15 * gain))
        mod._calib.remove()

    if residual_gain != 1.0:
        for m in net.modules():
            if isinstance(m, nets.Block) and m.downsample is None:
                m.bn2.bn._gain = float(residual_gain)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m._calib = m.register_forward_pre_hook(hook)
    for name, p in net.named_parameters():
        if name.endswith(("alpha", "beta", "gamma")):
            p.data.normal_(0.0, 1.0, generator=g)
    net.eval()
    with torch.no_grad():
        net(x)


def sample_inputs(input_shape, n: int = 8, seed: int = 0):
    """``n`` seeded standard-normal images: the scale of the mean/std-normalised images their code trains on."""
    import numpy as np
    return np.random.default_rng(seed).standard_normal((n,) + tuple(input_shape))


def parse_input_shape(text: str | None):
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or max(shape) > 65536:
        raise EvsimError(f"--input-shape {text!r}: give three positive integers C,H,W, e.g. 3,32,32")
    return shape

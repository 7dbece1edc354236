"""The evsim checkpoint file (.pt): plain data beside tensors, loaded without running any pickle.

A checkpoint is ``torch.save`` of one dict::

    {"config": {...},        # build_model's keyword arguments: str / int / None only
     "state_dict": {...},    # parameter and buffer name -> tensor
     "record": {...}}        # training record: JSON-like plain data only

Every reader loads it with ``torch.load(weights_only=True)``: PyTorch's
restricted unpickler, which builds tensors, dicts, lists, strings and numbers
and refuses any other global, so a hostile file cannot run code. Files written
by evsim before this rule held a ``torch.torch_version.TorchVersion`` in their
record; :func:`convert_checkpoint` rewrites such a file once, and only when the
user says it is trusted (it has to unpickle it fully to do so).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import EvsimError
from ..files import atomic_write, check_writable_target, open_regular
from .layers import NEURONS
from .models import ARCHITECTURES, SpikingNet, build_model

MAX_CHECKPOINT_BYTES = 4 << 30        # a checkpoint larger than this is refused before reading

# what build_model accepts, with the bounds a checkpoint's config must keep
_CONFIG_INTS = {"timesteps": (1, 10_000), "in_channels": (1, 4096), "num_classes": (1, 1_000_000),
                "image_size": (1, 4096), "width": (1, 4096)}
_CONFIG_STRS = {"arch": tuple(ARCHITECTURES), "neuron": tuple(NEURONS), "encoding": ("direct", "spikes")}


class CheckpointError(EvsimError):
    """A checkpoint that cannot be loaded safely or does not describe an evsim network."""


def plain_data(obj, where: str = "record"):
    """``obj`` as JSON-like plain data (dict/list/str/int/float/bool/None) that ``weights_only`` loads.

    str subclasses (``torch.__version__`` is one), tuples, paths and NumPy
    scalars become their plain form; anything else is refused by name.
    """
    if obj is None:
        return None
    for kind in (bool, int, float, str):          # bool first: it is an int too
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {str(k): plain_data(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    item = getattr(obj, "item", None)          # NumPy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return plain_data(item(), where)
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data")


def _check_config(config, path) -> dict:
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'config' must be a dict of build settings, got {type(config).__name__}")
    for key, value in config.items():
        if key in _CONFIG_STRS:
            if value not in _CONFIG_STRS[key]:
                raise CheckpointError(f"{path}: config {key}={value!r} is not one of {', '.join(_CONFIG_STRS[key])}")
        elif key in _CONFIG_INTS:
            if value is None and key == "width":
                continue
            lo, hi = _CONFIG_INTS[key]
            if type(value) is not int or not lo <= value <= hi:
                raise CheckpointError(f"{path}: config {key}={value!r} must be an integer in [{lo}, {hi}]")
        else:
            raise CheckpointError(f"{path}: unknown config entry {key!r}")
    if "arch" not in config:
        raise CheckpointError(f"{path}: config names no 'arch'")
    return config


def read_weights_only(path, error=None, unsafe_hint: str | None = None, map_location="cpu"):
    """Whatever a .pt file holds, read with ``torch.load(weights_only=True)`` (no pickle code runs), from a
    regular file within MAX_CHECKPOINT_BYTES; every failure is one line, as ``error`` (default CheckpointError).
    ``unsafe_hint`` finishes the line for a file that needs pickled code."""
    error = error or CheckpointError
    with open_regular(path, "checkpoint") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise error(f"{path}: checkpoint of {size / 2**30:.1f} GiB is over the "
                        f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB limit")
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many kinds on a bad file; the user needs one line
            msg = str(e)
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
            if unsafe:
                hint = unsafe_hint or ("evsim does not unpickle those. If you made this file or trust its source, "
                                       f"convert it once: evsim convert-checkpoint --trust {path} --out NEW.pt")
                raise error(f"{path}: holds a Python object beyond tensors and plain data ({unsafe.group(1)}); "
                            f"{hint}") from None
            first = next((line for line in msg.splitlines() if line.strip()), type(e).__name__)
            raise error(f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {first})") from None


def load_checkpoint(path, map_location="cpu") -> tuple[SpikingNet, dict]:
    """Rebuild the network a checkpoint describes and load its weights; no pickle code runs."""
    return _build(read_weights_only(path, map_location=map_location), path)


def _build(ckpt, path) -> tuple[SpikingNet, dict]:
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an evsim checkpoint (needs 'config' and 'state_dict')")
    config = _check_config(ckpt["config"], path)
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    for k, v in state.items():
        if v.is_complex() or not (v.is_floating_point() or v.dtype in (torch.int64, torch.int32, torch.bool)):
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {v.dtype}, not a real number type")
    try:
        with torch.device("meta"):      # shapes only: a hostile config allocates nothing
            expected = build_model(**config).state_dict()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config does not describe a buildable network ({e})") from None
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture: {len(missing)} missing, "
                              f"e.g. {missing[0]!r}")
    for k, v in state.items():
        if k not in expected:
            raise CheckpointError(f"{path}: weights do not fit the recorded architecture: unexpected {k!r}")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: weights do not fit the recorded architecture: {k!r} has shape "
                                  f"{tuple(v.shape)}, the architecture needs {tuple(expected[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or inf")
    model = build_model(**config)      # as large as the checked state dict, which the file holds
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture: "
                              f"{str(e).splitlines()[0]}") from None
    model.eval()
    record = ckpt.get("record", {})
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: 'record' must be a dict, got {type(record).__name__}")
    return model, dict(ckpt, record=record)


def save_checkpoint(path, model: SpikingNet, record: dict, force: bool = False) -> Path:
    """Write a checkpoint atomically; ``record`` must be plain data (converted where it is plain in disguise)."""
    try:
        record = plain_data(record)
        config = plain_data(model.config, "config")
    except TypeError as e:
        raise CheckpointError(f"{path}: cannot store {e}") from None
    with atomic_write(path, force=force, what="checkpoint") as f:
        torch.save({"config": config, "state_dict": model.state_dict(), "record": record}, f)
    return Path(path)


def convert_checkpoint(src, out, trust: bool, force: bool = False) -> Path:
    """Rewrite a checkpoint of an older evsim as plain data, so it loads with ``weights_only=True``.

    This unpickles ``src`` fully, which runs whatever code it holds: only with
    ``trust``, the user's statement that the file is theirs or from a trusted
    source. The result is checked by loading it back the safe way.
    """
    if not trust:
        raise CheckpointError(f"{src}: converting unpickles the file, which can run code it holds; pass --trust "
                              "only if you made it or trust its source")
    check_writable_target(out, force, "checkpoint")
    with open_regular(src, "checkpoint") as f:
        try:
            ckpt = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CheckpointError(f"{src}: cannot read PyTorch checkpoint ({type(e).__name__}: {first})") from None
    model, ckpt = _build(ckpt, src)
    save_checkpoint(out, model, ckpt["record"], force=force)
    load_checkpoint(out)
    return Path(out)

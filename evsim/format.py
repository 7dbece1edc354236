"""HDF5 file format v1 for folded networks (see docs/FORMAT.md).

Layout::

    /                     attrs: format="evsim-network", format_version=1,
                                 timesteps, input_shape, encoding, readout,
                                 input_range (optional), provenance (JSON)
    /class_names          (n_classes,) UTF-8 strings, optional
    /populations/<name>   attrs: index, shape, model, and one attr per constant
    /projections/<name>   attrs: index, source, target, kind, stride, padding, scale
                          datasets: weight, bias (optional)

``index`` keeps the order the writer was given (HDF5 lists names
alphabetically). Reading validates the whole graph before returning it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import FormatError, NetworkError
from .graph import Network, Population, Projection
from .neurons import NEURON_MODELS

FORMAT_NAME = "evsim-network"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


def write_network(network: Network, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate and write ``network``; refuse to replace an existing file unless asked."""
    network.validate()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FormatError(f"{path} already exists (pass overwrite=True / --force to replace it)")
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["timesteps"] = network.timesteps
        f.attrs["input_shape"] = np.asarray(network.input_shape, dtype=np.int64)
        f.attrs["encoding"] = network.encoding
        f.attrs["readout"] = network.readout
        if network.input_range is not None:
            f.attrs["input_range"] = np.asarray(network.input_range, dtype=np.float64)
        f.attrs["provenance"] = json.dumps(network.provenance, sort_keys=True, default=str)
        if network.class_names is not None:
            f.create_dataset("class_names", data=np.asarray(network.class_names, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        pops = f.create_group("populations")
        for i, pop in enumerate(network.populations):
            g = pops.create_group(pop.name)
            g.attrs["index"] = i
            g.attrs["shape"] = np.asarray(pop.shape, dtype=np.int64)
            g.attrs["model"] = pop.model
            for k, v in pop.params.items():
                g.attrs[k] = float(v)
        projs = f.create_group("projections")
        for i, pr in enumerate(network.projections):
            g = projs.create_group(pr.name)
            g.attrs["index"] = i
            g.attrs["source"] = pr.source
            g.attrs["target"] = pr.target
            g.attrs["kind"] = pr.kind
            g.attrs["stride"] = np.asarray(pr.stride, dtype=np.int64)
            g.attrs["padding"] = np.asarray(pr.padding, dtype=np.int64)
            g.attrs["scale"] = pr.scale
            if pr.weight is not None:
                g.create_dataset("weight", data=pr.weight.astype(np.float64))
            if pr.bias is not None:
                g.create_dataset("bias", data=pr.bias.astype(np.float64))
    os.replace(tmp, path)
    return path


def _attr(obj, key, where, default=None, required=True):
    if key in obj.attrs:
        v = obj.attrs[key]
        return v.decode() if isinstance(v, bytes) else v
    if required:
        raise FormatError(f"{where}: missing attribute {key!r}")
    return default


def _ordered(group, where):
    items = []
    for name, g in group.items():
        if not isinstance(g, h5py.Group):
            raise FormatError(f"{where}/{name}: expected a group")
        items.append((int(_attr(g, "index", f"{where}/{name}")), name, g))
    return sorted(items)


def read_network(path: str | os.PathLike) -> Network:
    """Read and validate a network; any problem becomes one :class:`FormatError` line."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise FormatError(f"{path}: not an HDF5 file") from None
    with f:
        try:
            return _read(f, path)
        except (FormatError, NetworkError):
            raise
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise FormatError(f"{path}: malformed evsim network ({e})") from None


def _read(f: h5py.File, path: Path) -> Network:
    where = str(path)
    if _attr(f, "format", where, required=False) != FORMAT_NAME:
        raise FormatError(f"{where}: not an evsim network file (attribute format != {FORMAT_NAME!r})")
    version = int(_attr(f, "format_version", where))
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: format version {version} is not supported (this evsim reads "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade evsim")
    for grp in ("populations", "projections"):
        if grp not in f:
            raise FormatError(f"{where}: missing group /{grp}")
        if not isinstance(f[grp], h5py.Group):
            raise FormatError(f"{where}: /{grp} must be a group")
    populations = []
    for _, name, g in _ordered(f["populations"], f"{where}: /populations"):
        model = str(_attr(g, "model", f"{where}: /populations/{name}"))
        if model not in NEURON_MODELS:
            raise FormatError(f"{where}: population {name!r} uses unknown neuron model {model!r} "
                              f"(known: {', '.join(NEURON_MODELS)})")
        params = {k: float(g.attrs[k]) for k in g.attrs if k not in ("index", "shape", "model")}
        populations.append(Population(name, tuple(_attr(g, "shape", f"{where}: /populations/{name}")), model, params))
    projections = []
    for _, name, g in _ordered(f["projections"], f"{where}: /projections"):
        w = f"{where}: /projections/{name}"
        weight = g["weight"][()] if "weight" in g else None
        bias = g["bias"][()] if "bias" in g else None
        projections.append(Projection(
            name=name, source=str(_attr(g, "source", w)), target=str(_attr(g, "target", w)),
            kind=str(_attr(g, "kind", w)), weight=weight, bias=bias,
            stride=tuple(_attr(g, "stride", w, (1, 1), False)), padding=tuple(_attr(g, "padding", w, (0, 0), False)),
            scale=float(_attr(g, "scale", w, 1.0, False))))
    class_names = None
    if "class_names" in f:
        class_names = [s.decode() if isinstance(s, bytes) else str(s) for s in f["class_names"][()]]
    input_range = _attr(f, "input_range", where, None, False)
    if input_range is not None and np.shape(input_range) != (2,):
        raise FormatError(f"{where}: input_range must hold two numbers (lo, hi), "
                          f"got {np.ravel(input_range).tolist()}")
    try:
        provenance = json.loads(_attr(f, "provenance", where, "{}", False))
    except json.JSONDecodeError:
        raise FormatError(f"{where}: provenance attribute is not valid JSON") from None
    net = Network(populations=populations, projections=projections, timesteps=int(_attr(f, "timesteps", where)),
                  input_shape=tuple(_attr(f, "input_shape", where)), encoding=str(_attr(f, "encoding", where)),
                  readout=str(_attr(f, "readout", where, "mean", False)), class_names=class_names,
                  input_range=None if input_range is None else tuple(input_range), provenance=provenance)
    try:
        return net.validate()
    except NetworkError as e:
        raise NetworkError(f"{where}: {e}") from None

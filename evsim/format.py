"""HDF5 file format v1 (v2: fixed point; v3: pooled convs) for folded networks (see docs/FORMAT.md).

Layout::

    /                     attrs: format="evsim-network", format_version=1 (2 with fixed_point, 3 with
                                 a pooled conv),
                                 timesteps, input_shape, encoding, readout,
                                 input_range (optional), provenance (JSON),
                                 fixed_point (JSON, v2 only: docs/FIXED_POINT.md)
    /class_names          (n_classes,) UTF-8 strings, optional
    /populations/<name>   attrs: index, shape, model, and one attr per constant
    /projections/<name>   attrs: index, source, target, kind, stride, padding, scale,
                                 pool_* (v3, a pooled conv only)
                          datasets: weight, bias (optional)

``index`` keeps the order the writer was given (HDF5 lists names
alphabetically). Reading validates the whole graph before returning it, and
treats the file as hostile: every attribute is type-checked and every size
checked against :mod:`evsim.limits` before anything is allocated, and nothing
outside the file is ever read (docs/FORMAT.md, "Checks on reading").
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import EvsimError, FormatError, LimitError, NetworkError
from .files import FileError, atomic_write, open_regular
from .graph import Network, Population, Projection
from .limits import NEURON_BYTES, Limits
from .neurons import NEURON_MODELS
from .pooling import POOL_ATTRIBUTES, AvgPool

FORMAT_NAME = "evsim-network"
FORMAT_VERSION = 1              # what a real-valued network is written as (readers older than v2 read it)
FIXED_POINT_VERSION = 2         # a fixed-point network (root attribute fixed_point): older readers must refuse it
POOLED_VERSION = 3              # a network with a pooled conv (pool_* attributes): older readers must refuse it
SUPPORTED_VERSIONS = (1, 2, 3)
MAX_FIXED_POINT_CHARS = 1 << 20     # the fixed_point JSON (a few numbers per population and projection)


def file_version(network: Network) -> int:
    """The format version ``network`` is written as, the lowest that holds it: 2 for a fixed-point network,
    3 for one with a pooled conv (the two never meet: a fixed-point network holds no pooled conv), else 1."""
    if network.fixed_point is not None:
        return FIXED_POINT_VERSION
    if any(pr.pool is not None for pr in network.projections):
        return POOLED_VERSION
    return FORMAT_VERSION


def write_network(network: Network, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate and write ``network``; refuse to replace an existing file unless asked.

    The file is written through :func:`evsim.files.atomic_write`: a fresh
    temporary file beside the target, renamed over it once complete.
    """
    network.validate()
    path = Path(path)
    with atomic_write(path, force=overwrite, what="network file") as fobj, h5py.File(fobj, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = file_version(network)
        f.attrs["timesteps"] = network.timesteps
        f.attrs["input_shape"] = np.asarray(network.input_shape, dtype=np.int64)
        f.attrs["encoding"] = network.encoding
        f.attrs["readout"] = network.readout
        if network.input_range is not None:
            f.attrs["input_range"] = np.asarray(network.input_range, dtype=np.float64)
        f.attrs["provenance"] = json.dumps(network.provenance, sort_keys=True, default=str)
        if network.fixed_point is not None:
            f.attrs["fixed_point"] = network.fixed_point.to_json()
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
            if pr.pool is not None:
                g.attrs["pool_kernel"] = np.asarray(pr.pool.kernel, dtype=np.int64)
                g.attrs["pool_stride"] = np.asarray(pr.pool.stride, dtype=np.int64)
                g.attrs["pool_padding"] = np.asarray(pr.pool.padding, dtype=np.int64)
                g.attrs["pool_ceil_mode"] = np.int64(pr.pool.ceil_mode)
                g.attrs["pool_count_include_pad"] = np.int64(pr.pool.count_include_pad)
            if pr.weight is not None:
                g.create_dataset("weight", data=pr.weight.astype(np.float64))
            if pr.bias is not None:
                g.create_dataset("bias", data=pr.bias.astype(np.float64))
    return path


# ---------------------------------------------------------------------- reading
# What h5py and HDF5 raise on a corrupted file; while reading, any of them becomes one FormatError line.
HDF5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError, SystemError,
               EOFError)
MAX_ATTRIBUTE_BYTES = 1 << 20       # one attribute's array (text is stored apart, in the global heap)
MAX_ATTRIBUTES = 64                 # attributes of one population (a neuron model has at most 5 constants)
MAX_PROVENANCE_DEPTH = 100          # nesting of the provenance JSON (deeper would overflow the JSON encoder)
_TYPE_CLASSES = {h5py.h5t.INTEGER: "integer", h5py.h5t.FLOAT: "float", h5py.h5t.TIME: "time",
                 h5py.h5t.STRING: "string", h5py.h5t.BITFIELD: "bitfield", h5py.h5t.OPAQUE: "opaque",
                 h5py.h5t.COMPOUND: "compound", h5py.h5t.REFERENCE: "reference", h5py.h5t.ENUM: "enum",
                 h5py.h5t.VLEN: "variable-length sequence", h5py.h5t.ARRAY: "array"}
READ_TYPE_CLASSES = (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING)     # all that a network file needs
# Filters a weight may be stored through: HDF5's own and LZF; never a plugin loaded on a file's say-so.
DATASET_FILTERS = {h5py.h5z.FILTER_DEFLATE: "deflate", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                   h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_SZIP: "szip",
                   h5py.h5z.FILTER_NBIT: "nbit", h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset", 32000: "lzf"}


def read_network(path: str | os.PathLike, limits: Limits | None = None) -> Network:
    """Read and validate a network from an untrusted file; any problem is one :class:`EvsimError` line.

    Every size is checked against ``limits`` (default :meth:`Limits.from_env`) before it is
    allocated, and nothing outside the file is read: no links other than hard links, no external
    storage, no special files (docs/FORMAT.md, "Checks on reading").
    """
    limits = limits or Limits.from_env()
    with open_hdf5(path, "network file", malformed="malformed or corrupted evsim network") as f:
        return _read(f, str(path), limits)


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, what: str, malformed: str, not_hdf5_hint: str = "",
              error: type[EvsimError] = FormatError):
    """An untrusted HDF5 file opened read-only as the readers of networks and NIR graphs need it: a regular
    file only (no FIFO, device or directory), its global heaps walked first (a crafted heap makes HDF5
    spin), and every h5py/HDF5 exception of the ``with`` body turned into one ``error`` line
    ("``path``: ``malformed`` (reason)")."""
    where = str(path)
    try:
        fobj = open_regular(path, what)
    except FileError as e:
        raise error(str(e)) from None
    with fobj:
        try:
            f = h5py.File(fobj, "r")
        except HDF5_ERRORS as e:
            detail = not_hdf5_hint or ("" if "signature not found" in str(e) else f" ({_brief(e)})")
            raise error(f"{where}: not an HDF5 file{detail}") from None
        try:
            with f:
                _check_global_heaps(fobj, f, where)
                yield f
        except EvsimError:
            raise
        except HDF5_ERRORS as e:
            raise error(f"{where}: {malformed} ({_brief(e)})") from None


def storage_problem(ds: h5py.Dataset) -> str | None:
    """Why a dataset's data cannot be read from this file alone (None when it can): virtual (mapped from
    other files), in an external raw file, or through a filter evsim does not know (a filter is a plugin
    HDF5 would load on the file's say-so). Readers of networks and of data files both ask this."""
    if ds.is_virtual:
        return "is a virtual dataset (mapped from other files)"
    dcpl = ds.id.get_create_plist()
    if dcpl.get_external_count():
        return f"keeps its data in the external file {os.fsdecode(dcpl.get_external(0)[0])!r}"
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in DATASET_FILTERS:
            return (f"is stored through HDF5 filter {code}, which evsim does not read "
                    f"(known: {', '.join(DATASET_FILTERS.values())})")
    return None


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:200] if text else "") or type(e).__name__


def _check_global_heaps(fobj, f: h5py.File, where: str) -> None:
    """Walk every global heap collection in the file, with a bounded loop, before HDF5 decodes one.

    Variable-length text (the string attributes, the class names) lives in global heap
    collections. HDF5 (2.0.0, as bundled with h5py 3.16) decodes a collection's objects in a
    loop that never ends on an object of index 0 and size 0, and trusts object sizes that run
    past the collection: one byte inserted into the provenance made ``evsim info`` spin
    forever in ``H5HG__cache_heap_deserialize``. So a collection whose objects do not tile it
    exactly is refused here. A collection HDF5 would reject itself (wrong version, beyond the
    end of the file) is left to HDF5.
    """
    length = f.id.get_create_plist().get_sizes()[1]          # bytes of a "length" field, usually 8
    header = -(-(8 + length) // 8) * 8      # the collection's header and each object's are this long, aligned
    size = os.fstat(fobj.fileno()).st_size
    if size == 0:
        return
    with mmap.mmap(fobj.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = m.find(b"GCOL")
        while at >= 0:
            if at + header <= size and m[at + 4] == 1:
                end = at + int.from_bytes(m[at + 8:at + 8 + length], "little")
                if at + header <= end <= size:
                    _walk_heap(m, at, end, header, length, where)
            at = m.find(b"GCOL", at + 1)


def _walk_heap(m: mmap.mmap, at: int, end: int, header: int, length: int, where: str) -> None:
    p = at + header
    for _ in range(1 << 16):                   # object indices are 16-bit: no collection holds more
        if p + header > end:                   # too small for an object header: trailing free space
            return
        index = int.from_bytes(m[p:p + 2], "little")
        size = int.from_bytes(m[p + 8:p + 8 + length], "little")
        need = header + -(-size // 8) * 8 if index else size
        if need == 0 or p + need > end:
            raise FormatError(f"{where}: corrupted HDF5 global heap at byte {at} (object {index} at byte {p} "
                              f"{'has size 0' if need == 0 else 'runs past the collection'}); refused before "
                              f"HDF5 reads it")
        p += need
        if p == end:
            return
    raise FormatError(f"{where}: corrupted HDF5 global heap at byte {at} (more than 65536 objects)")


def _show(v) -> str:
    """A short description of a value that has the wrong type, for a message."""
    if isinstance(v, h5py.Empty):
        return "an empty attribute"
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape} ({v.dtype})"
    if isinstance(v, (str, bytes)):
        return f"text {v[:40]!r}"
    if isinstance(v, np.generic):
        return f"{v.item()!r} ({v.dtype})"[:80]
    return repr(v)[:80]


def _check_name(name, where: str, kind: str) -> str:
    """Names end up in messages and reports: printable text, one path component."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or not name.isprintable():
        raise FormatError(f"{where}: invalid {kind} name {name!r} (names are printable UTF-8, without '/')")
    return name


def _member(group: h5py.Group, name: str, where: str, path: str):
    """The object at ``name`` in ``group``, None if absent; only a hard link, so nothing outside is read."""
    try:
        link = group.get(name, getlink=True)
    except TypeError:
        raise FormatError(f"{where}: {path} is a user-defined link; a network file holds only its own "
                          f"objects") from None
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise FormatError(f"{where}: {path} is an external link to {link.filename!r}; a network file holds only "
                          f"its own objects")
    if isinstance(link, h5py.SoftLink):
        raise FormatError(f"{where}: {path} is a soft link to {link.path!r}; a network file holds only hard "
                          f"links in its fixed layout")
    return group[name]


def _type_name(tid) -> str:
    """'compound (complex128)': an HDF5 type for a message, without converting any data."""
    name = _TYPE_CLASSES.get(tid.get_class(), f"class {tid.get_class()}")
    try:
        return f"{name} ({tid.dtype})"
    except HDF5_ERRORS:
        return name


def _attribute(obj, key: str, where: str, required: bool):
    """The attribute's value after its type and size are checked; None when absent and not required.

    Only integer, float and string types are read at all: HDF5 and h5py convert the others
    (variable-length sequences, compounds, references...) in C, and one flipped bit that turned a
    string into a sequence of bytes crashed the process there (found by fuzzing).
    """
    if key not in obj.attrs:
        if required:
            raise FormatError(f"{where}: missing attribute {key!r}")
        return None
    aid = obj.attrs.get_id(key)
    tid = aid.get_type()
    if tid.get_class() not in READ_TYPE_CLASSES:
        raise FormatError(f"{where}: attribute {key!r} has an HDF5 {_type_name(tid)} type, which evsim does not read")
    space = aid.get_space()
    if space.get_simple_extent_type() == h5py.h5s.NULL:
        raise FormatError(f"{where}: attribute {key!r} is empty")
    nbytes = space.get_simple_extent_npoints() * tid.get_size()
    if nbytes > MAX_ATTRIBUTE_BYTES:
        raise FormatError(f"{where}: attribute {key!r} holds {nbytes} bytes, more than the {MAX_ATTRIBUTE_BYTES} "
                          f"evsim reads in one attribute")
    return obj.attrs[key]


def _as_text(v) -> str | None:
    if isinstance(v, bytes):                   # fixed-length strings (numpy.bytes_ is bytes)
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(v, str):
        try:
            v.encode("utf-8")                  # no lone surrogates: they could not be printed
        except UnicodeEncodeError:
            return None
        return str(v)
    return None


def _text(obj, key: str, where: str, required: bool = True, default: str | None = None) -> str | None:
    v = _attribute(obj, key, where, required)
    if v is None:
        return default
    text = _as_text(v)
    if text is None:
        raise FormatError(f"{where}: attribute {key!r} must be UTF-8 text, got {_show(v)}")
    return text


def _integer(obj, key: str, where: str, required: bool = True, default: int | None = None) -> int | None:
    """A scalar of an integer type: 2.5, 1.0, inf, NaN, True, "1" and [1] are all refused."""
    v = _attribute(obj, key, where, required)
    if v is None:
        return default
    if not isinstance(v, np.integer):
        raise FormatError(f"{where}: attribute {key!r} must be an integer, got {_show(v)}")
    return int(v)


def _integers(obj, key: str, where: str, lengths: tuple[int, ...], default=None, positive=False):
    """A 1-D integer array of one of ``lengths``; a tuple of Python ints (no int64 overflow later)."""
    v = _attribute(obj, key, where, default is None)
    if v is None:
        return default
    if not (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu" and len(v) in lengths):
        raise FormatError(f"{where}: attribute {key!r} must hold {' or '.join(map(str, lengths))} integers, "
                          f"got {_show(v)}")
    values = tuple(int(x) for x in v.tolist())
    if positive and min(values) < 1:
        raise FormatError(f"{where}: attribute {key!r} must be positive, got {values}")
    return values


def _real(obj, key: str, where: str, default: float | None = None) -> float:
    """A finite real scalar (float or integer type): complex, text, bool, arrays, NaN and inf are refused."""
    v = _attribute(obj, key, where, default is None)
    if v is None:
        return default
    if not isinstance(v, (np.floating, np.integer)):
        raise FormatError(f"{where}: attribute {key!r} must be a real number, got {_show(v)}")
    x = float(v)
    if not math.isfinite(x):
        raise FormatError(f"{where}: attribute {key!r} must be finite, got {x}")
    return x


def _dataset(group: h5py.Group, name: str, where: str, path: str, text: bool = False) -> h5py.Dataset | None:
    """A dataset checked without reading it: its own storage in this file, through known filters, of real
    numbers (or, ``text``, of strings)."""
    ds = _member(group, name, where, path)
    if ds is None:
        return None
    if not isinstance(ds, h5py.Dataset):
        raise FormatError(f"{where}: {path} must be a dataset")
    problem = storage_problem(ds)
    if problem:
        tail = "" if "filter" in problem else "; a network file holds its own data"
        raise FormatError(f"{where}: {path} {problem}{tail}")
    tid = ds.id.get_type()
    if text and tid.get_class() != h5py.h5t.STRING:
        raise FormatError(f"{where}: {path} has an HDF5 {_type_name(tid)} type; it must hold strings")
    if not text and tid.get_class() not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
        raise FormatError(f"{where}: {path} has an HDF5 {_type_name(tid)} type; weights and biases are real numbers "
                          f"(float or integer)")
    if ds.shape is None:
        raise FormatError(f"{where}: {path} holds no array (an empty dataspace)")
    return ds


def _load(ds: h5py.Dataset) -> np.ndarray:
    """The dataset as float64, converted by HDF5 straight into one array (no second copy)."""
    out = np.empty(ds.shape, dtype=np.float64)
    if out.size:
        ds.read_direct(out)
    return out


def _ordered(group: h5py.Group, where: str, what: str, limits: Limits) -> list[tuple[int, str, h5py.Group]]:
    """(index, name, group) of every member of /populations or /projections, in the writer's order."""
    n = len(group)
    if n > limits.max_objects:
        raise LimitError(f"{where}: /{what} holds {n} {what}, over the limit of {limits.max_objects} "
                         f"(raise it with EVSIM_MAX_OBJECTS)")
    items, taken = [], {}
    for name in group:                         # names only: no member is opened before its link is checked
        _check_name(name, where, what[:-1])
        path = f"/{what}/{name}"
        g = _member(group, name, where, path)
        if not isinstance(g, h5py.Group):
            raise FormatError(f"{where}: {path}: expected a group")
        index = _integer(g, "index", f"{where}: {path}")
        if not 0 <= index < n:
            raise FormatError(f"{where}: {path}: index {index} is not one of 0..{n - 1}")
        if index in taken:
            raise FormatError(f"{where}: {path}: index {index} is also the index of {taken[index]!r}")
        taken[index] = name
        items.append((index, name, g))
    return sorted(items)


def _provenance(f: h5py.File, where: str) -> dict:
    """The provenance JSON: an object of printable Unicode, nested at most MAX_PROVENANCE_DEPTH deep."""
    text = _text(f, "provenance", where, required=False)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise FormatError(f"{where}: provenance attribute is not valid JSON") from None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: provenance must be a JSON object, got {type(value).__name__} "
                          f"{json.dumps(value)[:40]}")
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_PROVENANCE_DEPTH:
            raise FormatError(f"{where}: provenance is nested more than {MAX_PROVENANCE_DEPTH} levels deep")
        items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v] if isinstance(v, list) else []
        for k, x in items:
            if (k is not None and _as_text(k) is None) or (isinstance(x, str) and _as_text(x) is None):
                raise FormatError(f"{where}: provenance holds text that is not valid Unicode")
            stack.append((x, depth + 1))
    return value


def _fixed_point(f: h5py.File, where: str, version: int):
    """The root's ``fixed_point`` record (a JSON object, docs/FIXED_POINT.md), required in a version 2 file
    and refused in a version 1 file (a v1 reader would ignore it and run integers as reals). Its values
    are checked against the network by :func:`evsim.fixedpoint.check` once the arrays are read."""
    from .fixedpoint import FixedPoint
    text = _text(f, "fixed_point", where, required=False)
    if (text is None) != (version != FIXED_POINT_VERSION):
        raise FormatError(f"{where}: format version {version} " + (
            "is a fixed-point network but has no attribute 'fixed_point'" if text is None else
            f"has an attribute 'fixed_point', which needs version {FIXED_POINT_VERSION}"))
    if text is None:
        return None
    if len(text) > MAX_FIXED_POINT_CHARS:
        raise FormatError(f"{where}: attribute 'fixed_point' holds {len(text)} characters, more than the "
                          f"{MAX_FIXED_POINT_CHARS} evsim reads")
    try:
        return FixedPoint.from_json(text)
    except NetworkError as e:
        raise FormatError(f"{where}: {e}") from None


def _pool(g: h5py.Group, w: str, version: int) -> AvgPool | None:
    """A projection's average pool (format v3, docs/FORMAT.md "Pooled conv"): all five ``pool_*`` attributes or
    none; kernel and stride positive, padding non-negative, the two flags 0 or 1. Whether the pool fits the
    source is the graph's check."""
    present = [k for k in POOL_ATTRIBUTES if k in g.attrs]
    if not present:
        return None
    if version != POOLED_VERSION:
        raise FormatError(f"{w}: attribute {present[0]!r} (a pooled conv) needs format version {POOLED_VERSION}, "
                          f"the file says {version}")
    for k in POOL_ATTRIBUTES:
        if k not in g.attrs:
            raise FormatError(f"{w}: a pooled conv needs all of {', '.join(POOL_ATTRIBUTES)}; missing attribute {k!r}")
    kernel = _integers(g, "pool_kernel", w, (2,), positive=True)
    stride = _integers(g, "pool_stride", w, (2,), positive=True)
    padding = _integers(g, "pool_padding", w, (2,))
    if min(padding) < 0:
        raise FormatError(f"{w}: attribute 'pool_padding' must not be negative, got {padding}")
    flags = []
    for k in ("pool_ceil_mode", "pool_count_include_pad"):
        v = _integer(g, k, w)
        if v not in (0, 1):
            raise FormatError(f"{w}: attribute {k!r} must be 0 or 1, got {v}")
        flags.append(bool(v))
    return AvgPool(kernel, stride, padding, *flags)


def _read(f: h5py.File, where: str, limits: Limits) -> Network:
    fmt = _attribute(f, "format", where, required=False)
    if _as_text(fmt) != FORMAT_NAME:
        raise FormatError(f"{where}: not an evsim network file (attribute format != {FORMAT_NAME!r})")
    version = _integer(f, "format_version", where)
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: format version {version} is not supported (this evsim reads "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade evsim")
    timesteps = _integer(f, "timesteps", where)
    if timesteps > limits.max_timesteps:
        raise LimitError(f"{where}: timesteps {timesteps} is over the limit of {limits.max_timesteps} "
                         f"(raise it with EVSIM_MAX_TIMESTEPS)")
    input_shape = _integers(f, "input_shape", where, (1, 3), positive=True)
    encoding = _text(f, "encoding", where)
    readout = _text(f, "readout", where, required=False, default="mean")
    input_range = _attribute(f, "input_range", where, required=False)
    if input_range is not None:
        if not (isinstance(input_range, np.ndarray) and input_range.shape == (2,) and input_range.dtype.kind in "fiu"):
            raise FormatError(f"{where}: input_range must hold two numbers (lo, hi), got {_show(input_range)}")
        input_range = tuple(float(x) for x in input_range)
    provenance = _provenance(f, where)
    fixed_point = _fixed_point(f, where, version)
    groups = {}
    for grp in ("populations", "projections"):
        g = _member(f, grp, where, f"/{grp}")
        if g is None:
            raise FormatError(f"{where}: missing group /{grp}")
        if not isinstance(g, h5py.Group):
            raise FormatError(f"{where}: /{grp} must be a group")
        groups[grp] = g

    # attributes and shapes only: every size is checked before any array is read
    need = math.prod(input_shape) * NEURON_BYTES
    limits.check_bytes(f"{where}: input_shape {input_shape}", need)
    populations = []
    for _, name, g in _ordered(groups["populations"], where, "populations", limits):
        w = f"{where}: /populations/{name}"
        model = _text(g, "model", w)
        if model not in NEURON_MODELS:
            raise FormatError(f"{where}: population {name!r} uses unknown neuron model {model!r} "
                              f"(known: {', '.join(NEURON_MODELS)})")
        shape = _integers(g, "shape", w, (1, 3), positive=True)
        nbytes = math.prod(shape) * NEURON_BYTES
        limits.check_bytes(f"{where}: population {name!r} of shape {shape}", nbytes)
        need += nbytes
        if len(g.attrs) > MAX_ATTRIBUTES:
            raise FormatError(f"{w}: {len(g.attrs)} attributes, more than the {MAX_ATTRIBUTES} evsim reads")
        params = {_check_name(k, w, "constant"): _real(g, k, w)
                  for k in g.attrs.keys() if k not in ("index", "shape", "model")}
        populations.append(Population(name, shape, model, params))
    projections, arrays = [], []
    for _, name, g in _ordered(groups["projections"], where, "projections", limits):
        w = f"{where}: /projections/{name}"
        data = {}
        for label in ("weight", "bias"):
            ds = _dataset(g, label, where, f"/projections/{name}/{label}")
            if ds is not None:
                nbytes = ds.size * 8
                limits.check_bytes(f"{where}: projection {name!r} {label} of shape {ds.shape} (as float64)", nbytes)
                need += nbytes
                data[label] = np.broadcast_to(np.float64(0.0), ds.shape)     # a placeholder: no memory
                arrays.append((len(projections), label, ds))
        projections.append(Projection(
            name=name, source=_text(g, "source", w), target=_text(g, "target", w), kind=_text(g, "kind", w),
            weight=data.get("weight"), bias=data.get("bias"),
            stride=_integers(g, "stride", w, (2,), default=(1, 1)),
            padding=_integers(g, "padding", w, (2,), default=(0, 0)),
            scale=_real(g, "scale", w, default=1.0), pool=_pool(g, w, version)))
    if version == POOLED_VERSION and not any(pr.pool is not None for pr in projections):
        raise FormatError(f"{where}: format version {POOLED_VERSION} is for networks with a pooled conv, but no "
                          f"projection has pool attributes (write it as version {FORMAT_VERSION})")
    class_names = _dataset(f, "class_names", where, "/class_names", text=True)
    if class_names is not None:
        if class_names.ndim != 1:
            raise FormatError(f"{where}: /class_names must be 1-D, got shape {class_names.shape}")
        need += class_names.size * class_names.dtype.itemsize
    limits.check_bytes(f"{where}: the network as a whole", need)
    net = Network(populations=populations, projections=projections, timesteps=timesteps, input_shape=input_shape,
                  encoding=encoding, readout=readout, input_range=input_range, provenance=provenance,
                  fixed_point=fixed_point)
    try:
        net.validate(values=False)
        if class_names is not None and len(class_names) != net.n_classes:
            raise NetworkError(f"{len(class_names)} class names for {net.n_classes} outputs")
    except NetworkError as e:
        raise NetworkError(f"{where}: {e}") from None

    # shapes agree: now read, each array once, straight to float64
    for i, label, ds in arrays:
        setattr(projections[i], label, _load(ds))
    if class_names is not None:
        net.class_names = []
        for text in class_names.asstr()[()]:
            if not text.isprintable():
                raise FormatError(f"{where}: class name {text!r} is not printable text")
            net.class_names.append(text)
    try:
        return net.validate()
    except NetworkError as e:
        raise NetworkError(f"{where}: {e}") from None

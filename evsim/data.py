"""Whole datasets read lazily, chunk by chunk, from files treated as hostile.

``open_data(spec)`` gives a :class:`DataSource`: ``len(source)`` samples of ``source.sample_shape``,
read with ``source.read(start, stop)`` so that memory stays bounded whatever the dataset's size.
``spec`` is

* ``fashion-mnist``: the dataset by name (test split, with its labels);
* ``FILE.npy``: a NumPy array, memory-mapped after its header is checked (never unpickled);
* ``FILE.npz[:KEY]``: one array of a NumPy archive (KEY may be left out when it holds one array),
  read by streaming its member, never unpickled;
* ``FILE.h5[:/PATH]`` (or .hdf5): one dataset of an HDF5 file, read slice by slice (h5py reads
  only the chunks a slice touches); PATH may be left out when the file holds one dataset.

User files get the checks the network format applies (docs/FORMAT.md, "Checks on reading"):
regular files only (a named pipe or device is refused before a byte is read), real numeric
dtypes only, sizes checked before anything is allocated (a chunk against ``EVSIM_MAX_BYTES``, a
declared size against what the file holds), HDF5 hard links only, no external or virtual storage,
no HDF5 filter outside HDF5's own and LZF.

:func:`check_chunk` checks one chunk against a network (finite values inside its input range, or
spikes in {-1, 0, 1}) and names the first bad sample: a corrupt chunk is one line.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import EvsimError, InputError
from .files import FileError, open_regular, read_npy_header
from .limits import Limits

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class DataError(InputError):
    """A data file that cannot be read as samples."""


def _npy_header(f, where: str):
    """(shape, fortran_order, dtype, data offset) of a .npy stream, its dtype checked (real numbers only)."""
    shape, fortran, dtype, offset = read_npy_header(f, where, DataError, " (a .npz archive: name it .npz)")
    _check_dtype(dtype, where)
    return shape, fortran, dtype, offset


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects, not numbers (object arrays are never unpickled)")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: dtype {dtype.str} is not numeric (real numbers only)")


def _check_samples_shape(shape: tuple, where: str) -> None:
    if len(shape) < 1:
        raise DataError(f"{where}: holds a single value, not an array of samples")
    if shape[0] == 0:
        raise DataError(f"{where}: holds no samples")


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``FILE.npz:KEY`` / ``FILE.h5:/PATH`` -> (FILE, KEY); a plain path -> (path, None)."""
    low = spec.lower()
    for suffix in (".npz",) + H5_SUFFIXES:
        at = low.rfind(suffix + ":")
        if at >= 0 and not os.path.exists(spec):
            return spec[:at + len(suffix)], spec[at + len(suffix) + 1:] or None
    return spec, None


@dataclass
class Fingerprint:
    """What identifies a data source for a resumed run (no hash of the whole data: it may be large)."""

    text: str

    def __str__(self) -> str:
        return self.text


class DataSource:
    """``len()`` samples of ``sample_shape`` and ``dtype``; ``read(start, stop)`` returns a fresh array."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.sample_shape) * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ArraySource(DataSource):
    """An array already in memory (a dataset by name, or the Python API's own array)."""

    def __init__(self, x: np.ndarray, name: str = "array", labels: np.ndarray | None = None, ident: str | None = None):
        x = np.asarray(x)
        _check_dtype(x.dtype, name)
        _check_samples_shape(x.shape, name)
        self.x, self.name, self.shape, self.dtype, self.labels = x, name, tuple(x.shape), x.dtype, labels
        self._ident = ident

    def read(self, start, stop):
        return np.array(self.x[start:stop])

    def fingerprint(self):
        if self._ident is None:      # the API's own array: hash it (it is in memory anyway)
            h = hashlib.sha256(np.ascontiguousarray(self.x).view(np.uint8).reshape(-1)).hexdigest()[:32]
            self._ident = f"array sha256:{h}"
        return f"{self._ident} shape={self.shape} dtype={self.dtype.str}"


def _file_ident(f, path: str) -> str:
    st = os.fstat(f.fileno())
    return f"{os.path.realpath(path)} size={st.st_size} mtime_ns={st.st_mtime_ns}"


class NpySource(DataSource):
    """A .npy file, memory-mapped from the descriptor that was checked (it cannot be swapped after)."""

    def __init__(self, path: str):
        self.name = path
        with open_regular(path, "data file") as f:
            shape, fortran, dtype, offset = _npy_header(f, f"data file {path}")
            _check_samples_shape(shape, f"data file {path}")
            nbytes = math.prod(shape) * dtype.itemsize
            held = os.fstat(f.fileno()).st_size - offset
            if held < nbytes:
                raise DataError(f"data file {path}: truncated (the header declares {nbytes} bytes of data, the file "
                                f"holds {held})")
            self._ident = _file_ident(f, path)
            self.x = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape,
                               order="F" if fortran else "C")
        self.shape, self.dtype = shape, dtype

    def read(self, start, stop):
        return np.array(self.x[start:stop])

    def fingerprint(self):
        return f"npy {self._ident} shape={self.shape} dtype={self.dtype.str}"

    def close(self):
        self.x = None


class NpzSource(DataSource):
    """One member of a .npz archive, streamed: a chunk is read (and, when compressed, inflated) on its own."""

    def __init__(self, path: str, key: str | None):
        self.name = f"{path}:{key}" if key else path
        self._f = open_regular(path, "data file")
        try:
            try:
                self._zip = zipfile.ZipFile(self._f)
                members = [i for i in self._zip.infolist() if i.filename.endswith(".npy")]
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise DataError(f"data file {path}: not a .npz archive ({e})") from None
            names = [m.filename[:-4] for m in members]
            if key is None:
                if len(members) != 1:
                    raise DataError(f"data file {path}: holds {len(members)} arrays ({', '.join(names) or 'none'}); "
                                    f"name one as {path}:KEY")
                info = members[0]
            else:
                if key not in names:
                    raise DataError(f"data file {path}: no array {key!r} (holds: {', '.join(names) or 'none'})")
                info = members[names.index(key)]
            self._info = info
            where = f"data file {self.name}"
            with self._zip.open(info) as m:
                shape, fortran, dtype, offset = _npy_header(m, where)
            _check_samples_shape(shape, where)
            if fortran and len(shape) > 1:
                raise DataError(f"{where}: stored in Fortran order, which cannot be read sample by sample "
                                f"(save it C-contiguous)")
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size - offset < nbytes:
                raise DataError(f"{where}: truncated (the header declares {nbytes} bytes of data, the archive "
                                f"holds {info.file_size - offset})")
            self._offset, self.shape, self.dtype = offset, shape, dtype
            self._ident = _file_ident(self._f, path) + f" member={info.filename}"
            self._stream = None
        except BaseException:
            self._f.close()
            raise

    def read(self, start, stop):
        per = self.sample_bytes
        want = (stop - start) * per
        try:
            if self._stream is None:
                self._stream = self._zip.open(self._info)
            self._stream.seek(self._offset + start * per)     # forward: reads through; backward: restarts
            raw = self._stream.read(want)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise DataError(f"data file {self.name}: cannot read samples {start}-{stop - 1} ({e})") from None
        if len(raw) != want:
            raise DataError(f"data file {self.name}: truncated at samples {start}-{stop - 1}")
        return np.frombuffer(raw, dtype=self.dtype).reshape((stop - start,) + self.sample_shape).copy()

    def fingerprint(self):
        return f"npz {self._ident} shape={self.shape} dtype={self.dtype.str}"

    def close(self):
        if self._stream is not None:
            self._stream.close()
        self._zip.close()
        self._f.close()


def _h5_dataset(f, path: str, key: str | None, where: str):
    """The dataset at ``key`` reached through hard links only, with its own storage, through known filters."""
    import h5py

    from .format import storage_problem

    if key is None:
        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found.append(name)
            return None if len(found) < 3 else True
        # visititems follows hard links only: a soft or external link is not visited
        f.visititems(visit)
        if len(found) != 1:
            raise DataError(f"{where}: holds {'more than one dataset' if found else 'no dataset'}; name one as "
                            f"{path}:/PATH")
        key = found[0]
    group = f
    parts = [p for p in key.split("/") if p]
    if not parts:
        raise DataError(f"{where}: {key!r} names no dataset")
    for i, part in enumerate(parts):
        sub = "/" + "/".join(parts[:i + 1])
        try:
            link = group.get(part, getlink=True)
        except TypeError:
            raise DataError(f"{where}: {sub} is a user-defined link; data must be in the file itself") from None
        if link is None:
            raise DataError(f"{where}: no dataset {sub}")
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{where}: {sub} is an external link to {link.filename!r}; data must be in the file itself")
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{where}: {sub} is a soft link; name the dataset by its own path")
        group = group[part]
        if i < len(parts) - 1 and not isinstance(group, h5py.Group):
            raise DataError(f"{where}: {sub} is not a group")
    ds = group
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{where}: /{'/'.join(parts)} is not a dataset")
    problem = storage_problem(ds)
    if problem:
        tail = "" if "filter" in problem else "; data must be in the file itself"
        raise DataError(f"{where}: /{key} {problem}{tail}")
    if ds.id.get_type().get_class() not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT) or ds.shape is None:
        raise DataError(f"{where}: /{key} does not hold real numbers (HDF5 type {ds.dtype})")
    _check_dtype(ds.dtype, f"{where}: /{key}")
    return ds, "/" + "/".join(parts)


class H5Source(DataSource):
    """One dataset of an HDF5 file, read slice by slice."""

    def __init__(self, path: str, key: str | None):
        import h5py

        from .format import HDF5_ERRORS
        self._errors = HDF5_ERRORS
        self._f = open_regular(path, "data file")
        try:
            try:
                self._h5 = h5py.File(self._f, "r")
            except HDF5_ERRORS:
                raise DataError(f"data file {path}: not an HDF5 file") from None
            try:
                self.ds, key = _h5_dataset(self._h5, path, key, f"data file {path}")
            except EvsimError:
                self._h5.close()
                raise
            except HDF5_ERRORS as e:
                self._h5.close()
                raise DataError(f"data file {path}: malformed HDF5 ({str(e).splitlines()[0] if str(e) else e})") \
                    from None
            self.name = f"{path}:{key}"
            self.shape = tuple(int(s) for s in self.ds.shape)
            self.dtype = self.ds.dtype
            _check_samples_shape(self.shape, f"data file {self.name}")
            self._ident = _file_ident(self._f, path) + f" dataset={key}"
        except BaseException:
            self._f.close()
            raise

    def read(self, start, stop):
        out = np.empty((stop - start,) + self.sample_shape, dtype=self.dtype)
        try:
            self.ds.read_direct(out, np.s_[start:stop])
        except self._errors as e:
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise DataError(f"data file {self.name}: cannot read samples {start}-{stop - 1} ({detail})") from None
        return out

    def fingerprint(self):
        return f"hdf5 {self._ident} shape={self.shape} dtype={self.dtype.str}"

    def close(self):
        self._h5.close()
        self._f.close()


def open_data(spec: str) -> DataSource:
    """A lazy reader of ``spec`` (see the module docstring); one :class:`DataError` line when it cannot be one."""
    from .datasets import DATASETS, load_dataset
    if spec in DATASETS:
        x, y = load_dataset(spec, "test")
        return ArraySource(x, spec, labels=y, ident=f"dataset {spec} test")
    path, key = _split_spec(spec)
    low = path.lower()
    try:
        if low.endswith(".npz"):
            return NpzSource(path, key)
        if low.endswith(H5_SUFFIXES):
            return H5Source(path, key)
        if key is not None:
            raise DataError(f"data file {path}: only .npz and HDF5 files take a :KEY")
        if low.endswith(".npy"):
            return NpySource(path)
    except FileError as e:
        raise DataError(str(e)) from None
    raise DataError(f"data {spec!r}: give a dataset name ({', '.join(DATASETS)}) or a .npy, .npz or HDF5 "
                    f"(.h5, .hdf5) file")


def load_labels(spec: str, n: int) -> np.ndarray:
    """Labels for ``n`` samples from any source :func:`open_data` reads: ``n`` integers, read whole."""
    with open_data(spec) as src:
        if src.dtype.kind not in "iu" or len(src.sample_shape) > 1 or math.prod(src.sample_shape) != 1:
            raise DataError(f"labels {spec}: must be {n} integers, one per sample; got shape {src.shape}, "
                            f"dtype {src.dtype}")
        if len(src) != n:
            raise DataError(f"labels {spec}: {len(src)} labels for {n} samples")
        Limits.from_env().check_bytes(f"labels {spec}", n * 8)
        return src.read(0, n).reshape(-1).astype(np.int64)


def check_chunk(network, x: np.ndarray, chunk: int, start: int, name: str) -> None:
    """Refuse a chunk that the engine would refuse, naming the chunk and the first bad sample's index."""
    where = f"{name}: chunk {chunk}"
    if x.dtype.kind not in "biuf":
        raise InputError(f"{where}: dtype {x.dtype} is not numeric")
    lead = (network.timesteps,) if network.encoding == "spikes" else ()
    if x.shape[1:] != lead + tuple(network.input_shape):
        raise InputError(f"{where}: samples of shape {x.shape[1:]} do not fit the network (expected "
                         f"{lead + tuple(network.input_shape)}"
                         + (f" with T={network.timesteps}" if lead else "") + ")")
    flat = x.reshape(len(x), -1)
    bad = np.zeros(len(x), dtype=bool)
    what = ""
    if x.dtype.kind == "f":
        bad = ~np.isfinite(flat).all(axis=1)
        what = "holds NaN or inf"
    if not bad.any():
        if network.encoding == "spikes":
            bad = ~((flat == 0) | (flat == 1) | (flat == -1)).all(axis=1)
            what = "holds values other than -1, 0 and 1 (spike-encoded input)"
        elif network.input_range is not None:
            lo, hi = network.input_range
            bad = (flat.min(axis=1) < lo) | (flat.max(axis=1) > hi)
            what = f"holds values outside the network's input range [{lo:g}, {hi:g}]"
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{where}: sample {start + i} {what}; nothing of this chunk was counted")

"""Fuzzing what evsim reads from a user: the shipped network file and a shipped sample, mutated.

Every outcome must be a result or one of evsim's documented errors: an :class:`evsim.errors.EvsimError`
with a one-line message from the Python API; through the command line, exit code 0, or 1 with one line
on stderr starting with "Error:". Never another exception, a crash or a hang.

* byte-level mutations (flip a bit, overwrite, insert or delete bytes, truncate) of
  models/fmnist-resnet8-ternary/folded.h5, at offsets drawn from its HDF5 metadata (where almost all
  of the interesting damage is) or anywhere, and of samples/sample0.npy;
* structured mutations made with h5py: attributes rewritten with hostile values (wrong types, NaN,
  inf, huge, negative, text, complex, arrays of the wrong length) or deleted, datasets deleted or
  replaced with the wrong dtype or shape, external links, soft links, hard-link aliases, external
  storage.

A network that still reads is compiled for float32 and run on one sample when it is small enough
(the memory budget of :mod:`evsim.limits` keeps everything else bounded).

Time: each example runs under a per-example alarm (``HANG_S``) and hypothesis's ``deadline``; a
hang inside C code, which no alarm interrupts, is caught by a faulthandler watchdog that dumps the
stacks and ends the process, so CI fails instead of stalling. By default each property runs
``EVSIM_FUZZ_EXAMPLES`` = 200 examples (the file takes well under a minute on 2 cores); a nightly
run raises it, e.g. ``EVSIM_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py``. With ``CI``
set the examples are derandomized (the same every run) and no example database is kept.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
import signal
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings, strategies as st

import evsim
from evsim import compile_network, read_network
from evsim.cli import load_array, main
from evsim.errors import EvsimError

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist-resnet8-ternary"
SHIPPED = MODEL / "folded.h5"
SAMPLE = MODEL / "samples" / "sample0.npy"
SHIPPED_BYTES = SHIPPED.read_bytes()
SAMPLE_BYTES = SAMPLE.read_bytes()

EXAMPLES = int(os.environ.get("EVSIM_FUZZ_EXAMPLES", "200"))
# One example: reading + compiling + running one sample takes milliseconds; a corrupted string length
# can make HDF5 allocate (and touch) up to 4 GiB before it refuses the file, which takes seconds.
HANG_S = 30
CI = bool(os.environ.get("CI"))
settings.register_profile(
    "evsim-fuzz", max_examples=EXAMPLES, deadline=timedelta(seconds=HANG_S / 2), derandomize=CI,
    **({"database": None} if CI else {}),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
FUZZ = settings.get_profile("evsim-fuzz")
FEW = settings(FUZZ, max_examples=max(5, EXAMPLES // 10))     # through the CLI: slower, fewer


class Hang(BaseException):
    """An example ran past HANG_S (BaseException: no ``except OSError`` in evsim can swallow it)."""


@contextlib.contextmanager
def bounded(seconds: float = HANG_S):
    """Raise Hang in an example that runs past ``seconds``; a hang inside C (HDF5), which the alarm
    cannot interrupt, is ended at twice that by faulthandler: every stack dumped, the process gone."""
    def hang(signum, frame):
        raise Hang(f"example still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield tmp_path_factory.mktemp("fuzz")
    assert SHIPPED.read_bytes() == SHIPPED_BYTES, "a mutation reached the shipped network file"
    assert SAMPLE.read_bytes() == SAMPLE_BYTES, "a mutation reached the shipped sample"


@functools.lru_cache(maxsize=None)
def shipped_compiled():
    return compile_network(read_network(SHIPPED), "float32")


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Compile and run the shipped network once, so that no example pays for the JIT."""
    evsim.run(shipped_compiled(), np.load(SAMPLE)[None])


def _metadata_ranges() -> list[tuple[int, int]]:
    """Byte ranges of the shipped file that hold HDF5 metadata (everything but the arrays' data)."""
    data = []
    with h5py.File(SHIPPED, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                data.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    ranges, at = [], 0
    for lo, hi in sorted(data):
        if lo > at:
            ranges.append((at, lo - 1))
        at = max(at, hi)
    if at < len(SHIPPED_BYTES):
        ranges.append((at, len(SHIPPED_BYTES) - 1))
    return ranges


def _offsets(size: int, ranges=None):
    anywhere = st.integers(0, size - 1)
    if not ranges:
        return anywhere
    return st.one_of(st.sampled_from(ranges).flatmap(lambda r: st.integers(*r)), anywhere)


def byte_mutations(size: int, ranges=None):
    at = _offsets(size, ranges)
    one = st.one_of(
        st.tuples(st.just("flip"), at, st.integers(0, 7)),
        st.tuples(st.just("overwrite"), at, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), at, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), at, st.integers(1, 8)),
        st.tuples(st.just("truncate"), at, st.none()),
    )
    return st.lists(one, min_size=1, max_size=4)


def mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, at, arg in mutations:
        at = min(at, len(b))
        if kind == "flip" and at < len(b):
            b[at] ^= 1 << arg
        elif kind == "overwrite":
            b[at:at + len(arg)] = arg
        elif kind == "insert":
            b[at:at] = arg
        elif kind == "delete":
            del b[at:at + arg]
        elif kind == "truncate":
            del b[at:]
    return bytes(b)


def sample_for(net) -> np.ndarray:
    """One valid sample for ``net``: the shipped one when it fits, else the low end of the input range."""
    if net.encoding == "spikes":
        return np.zeros((1, net.timesteps) + net.input_shape, dtype=np.int8)
    x = np.load(SAMPLE)
    if x.shape == net.input_shape and net.input_range in (None, (0.0, 1.0)):
        return x[None]
    return np.full((1,) + net.input_shape, net.input_range[0] if net.input_range else 0.0)


def small(net) -> bool:
    """Small enough to compile and run one sample within an example's time."""
    return (net.timesteps <= 64 and sum(p.size for p in net.populations) <= 1_000_000
            and net.n_params <= 2_000_000 and np.prod(net.input_shape) <= 100_000)


def outcome(path: Path) -> str:
    """'refused', 'read', or 'ran': anything else than an EvsimError fails the example."""
    try:
        net = read_network(path)
    except EvsimError as e:
        assert "\n" not in str(e), str(e)
        return "refused"
    if not small(net):
        return "read"
    try:
        result = evsim.run(compile_network(net, "float32"), sample_for(net))
    except EvsimError as e:
        assert "\n" not in str(e), str(e)
        return "refused"
    assert np.isfinite(result.outputs).all(), "a float32 run printed a non-finite score as a result"
    return "ran"


def assert_cli_outcome(result):
    """Exit 0, or 1 with one line 'Error: ...' on stderr; never a traceback."""
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    if result.exit_code:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


# ------------------------------------------------------------------ byte level
@FUZZ
@given(byte_mutations(len(SHIPPED_BYTES), _metadata_ranges()))
def test_mutated_network_bytes(workdir, mutations):
    path = workdir / "bytes.h5"
    path.write_bytes(mutate(SHIPPED_BYTES, mutations))
    with bounded():
        event(outcome(path))        # --hypothesis-show-statistics tells how many were refused, read, ran


@FUZZ
@given(byte_mutations(len(SAMPLE_BYTES), [(0, 127)]))
def test_mutated_sample_bytes(workdir, mutations):
    path = workdir / "sample.npy"
    path.write_bytes(mutate(SAMPLE_BYTES, mutations))
    with bounded():
        try:
            x = load_array(str(path))
            net = shipped_compiled()
            evsim.run(net, x if x.shape != net.network.input_shape else x[None])
        except EvsimError as e:
            assert "\n" not in str(e), str(e)


@FEW
@given(byte_mutations(len(SHIPPED_BYTES), _metadata_ranges()), st.sampled_from(["info", "info --json", "run"]))
def test_mutated_network_bytes_cli(workdir, mutations, command):
    path = workdir / "cli.h5"
    path.write_bytes(mutate(SHIPPED_BYTES, mutations))
    args = command.split() + [str(path)] if command != "run" else ["run", "-w", str(path), "-i", str(SAMPLE)]
    with bounded():
        assert_cli_outcome(_runner().invoke(main, args))


# ------------------------------------------------------------------ structured
with h5py.File(SHIPPED, "r") as _f:
    POPULATIONS = sorted(_f["populations"])
    PROJECTIONS = sorted(_f["projections"])

OBJECTS = st.one_of(st.just("/"), st.sampled_from([f"populations/{n}" for n in POPULATIONS]),
                    st.sampled_from([f"projections/{n}" for n in PROJECTIONS]))
ATTRIBUTES = st.sampled_from(["format", "format_version", "timesteps", "input_shape", "encoding", "readout",
                              "input_range", "provenance", "index", "shape", "model", "tau", "v_threshold",
                              "source", "target", "kind", "stride", "padding", "scale", "k_alpha", "extra"])
VALUES = st.one_of(
    st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 1, -1, 2, 10**12, 2**31, 2**62]),
    st.floats(), st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 2.5, 1.9, 16.6, 5e-324]),
    st.booleans(), st.complex_numbers(allow_nan=False), st.text(max_size=12), st.binary(max_size=12),
    st.sampled_from(["input", "readout", "layers.2", "conv2d", "linear", "identity", "ternary_lif", "spikes",
                     "[1, 2]", '"text"', "{}", "{not json"]),
    st.lists(st.integers(-3, 2**40), min_size=0, max_size=5).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.floats(), min_size=1, max_size=4).map(np.array),
)
DTYPES = st.sampled_from(["f8", "f4", "f2", "i8", "u1", "bool", "c16", "S3"])
SHAPES = st.one_of(st.just(()), st.lists(st.integers(0, 40), min_size=1, max_size=5).map(tuple))


def _edit_attribute(f, obj, key, value):
    f[obj].attrs[key] = value


def _delete_attribute(f, obj, key):
    if key in f[obj].attrs:
        del f[obj].attrs[key]


def _replace_dataset(f, proj, label, dtype, shape, declared):
    g = f[f"projections/{proj}"]
    if label in g:
        del g[label]
    if declared:                              # a huge shape that stores nothing
        g.create_dataset(label, shape=declared, dtype="f8", chunks=True, fillvalue=1.0)
    elif dtype == "S3":
        g.create_dataset(label, data=np.full(shape, b"abc"))
    else:
        g.create_dataset(label, data=np.ones(shape, dtype=dtype))


def _delete_member(f, path):
    if path in f:
        del f[path]


def _link_member(f, path, kind):
    if path in f:
        del f[path]
    if kind == "soft":
        f[path] = h5py.SoftLink("/" + path)                    # a link to itself
    elif kind == "soft-elsewhere":
        f[path] = h5py.SoftLink("/populations/layers.2")
    elif kind == "external":                  # to a copy: h5py would follow a link opened r+ and write there
        other = Path(f.filename).with_name("other.h5")
        other.write_bytes(SHIPPED_BYTES)
        f[path] = h5py.ExternalLink(str(other), "/" + path)
    else:
        f[path] = f["populations/layers.2"]                    # a hard-link alias


def _external_storage(f, proj):
    g = f[f"projections/{proj}"]
    shape = getattr(g.get("weight"), "shape", None) or (10, 3136)      # "weight" may be a link by now
    if "weight" in g:
        del g["weight"]
    outside = Path(f.filename).with_name("outside.bin")
    outside.write_bytes(b"not part of any network\n" * 4)
    g.create_dataset("weight", shape=shape, dtype="f8", fill_time="never",
                     external=[(str(outside), 0, h5py.h5f.UNLIMITED)])


MEMBERS = st.one_of(st.sampled_from(["populations", "projections", "class_names"]),
                    st.sampled_from([f"populations/{n}" for n in POPULATIONS]),
                    st.sampled_from([f"projections/{n}/{d}" for n in PROJECTIONS for d in ("weight", "bias")]))
EDITS = st.one_of(
    st.tuples(st.just(_edit_attribute), OBJECTS, ATTRIBUTES, VALUES),
    st.tuples(st.just(_delete_attribute), OBJECTS, ATTRIBUTES),
    st.tuples(st.just(_replace_dataset), st.sampled_from(PROJECTIONS), st.sampled_from(["weight", "bias"]), DTYPES,
              SHAPES, st.one_of(st.none(), st.sampled_from([(170000, 3136), (10**6, 10**6), (2**40,)]))),
    st.tuples(st.just(_delete_member), MEMBERS),
    st.tuples(st.just(_link_member), MEMBERS, st.sampled_from(["soft", "soft-elsewhere", "external", "hard"])),
    st.tuples(st.just(_external_storage), st.sampled_from(PROJECTIONS)),
)


@FUZZ
@given(st.lists(EDITS, min_size=1, max_size=3))
def test_structured_mutations(workdir, edits):
    path = workdir / "edited.h5"
    path.write_bytes(SHIPPED_BYTES)
    with h5py.File(path, "r+") as f:
        for edit, *args in edits:
            with contextlib.suppress(TypeError, ValueError, KeyError, OSError, RuntimeError):
                edit(f, *args)               # h5py refuses to write some values; the file keeps the rest
    with bounded():
        event(outcome(path))


@FEW
@given(st.lists(EDITS, min_size=1, max_size=2))
def test_structured_mutations_cli(workdir, edits):
    path = workdir / "edited-cli.h5"
    path.write_bytes(SHIPPED_BYTES)
    with h5py.File(path, "r+") as f:
        for edit, *args in edits:
            with contextlib.suppress(TypeError, ValueError, KeyError, OSError, RuntimeError):
                edit(f, *args)
    with bounded():
        assert_cli_outcome(_runner().invoke(main, ["info", str(path)]))


# ------------------------------------------------------------------ a pooled conv (format v3)
@functools.lru_cache(maxsize=None)
def pooled_bytes() -> bytes:
    """A small version-3 file: spike input -> a pooled conv (AvgPool2d(3, 2, 1) then 3x3) -> readout."""
    import tempfile

    from evsim import write_network
    from evsim.graph import Network, Population, Projection
    from evsim.pooling import AvgPool
    rng = np.random.default_rng(0)
    net = Network([Population("a", (3, 4, 4), "ternary_lif", {"tau": 0.5, "v_threshold": 1.0})],
                  [Projection("pc", "input", "a", "conv2d", rng.normal(size=(3, 2, 3, 3)), None, (1, 1), (1, 1),
                              pool=AvgPool((3, 3), (2, 2), (1, 1))),
                   Projection("fc", "a", "readout", "linear", rng.normal(size=(4, 48)))],
                  2, (2, 8, 8), encoding="spikes")
    with tempfile.TemporaryDirectory() as d:
        return write_network(net, f"{d}/pooled.h5").read_bytes()


POOL_ATTRIBUTES = st.sampled_from(["pool_kernel", "pool_stride", "pool_padding", "pool_ceil_mode",
                                   "pool_count_include_pad", "format_version", "stride", "padding"])
POOL_EDITS = st.one_of(
    st.tuples(st.just(_edit_attribute), st.sampled_from(["/", "projections/pc", "projections/fc"]), POOL_ATTRIBUTES,
              VALUES),
    st.tuples(st.just(_delete_attribute), st.sampled_from(["/", "projections/pc"]), POOL_ATTRIBUTES),
)


@FUZZ
@given(st.lists(POOL_EDITS, min_size=1, max_size=3))
def test_structured_mutations_of_a_pooled_conv(workdir, edits):
    path = workdir / "pooled.h5"
    path.write_bytes(pooled_bytes())
    with h5py.File(path, "r+") as f:
        for edit, *args in edits:
            with contextlib.suppress(TypeError, ValueError, KeyError, OSError, RuntimeError):
                edit(f, *args)
    with bounded():
        event(outcome(path))

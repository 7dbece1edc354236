"""Hostile files, one test per case the audit of issue 11 ("Trust") found or the fuzzer (tests/test_fuzz.py)
turned up: each is refused with the exact kind of one-line error, promptly, without reading anything
outside the file and without allocating what the file merely declares.

Every case edits a copy of the shipped models/fmnist-resnet8-ternary/folded.h5 with h5py. Through the
command line, a refusal is exit code 1 and one line on stderr starting with "Error:"; a usage error is 2.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import evsim
from evsim import compile_network, read_network
from evsim.cli import load_array, main
from evsim.errors import EvsimError, FormatError, InputError, LimitError, NetworkError
from evsim.files import FileError
from evsim.graph import Network, Population, Projection

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist-resnet8-ternary"
SHIPPED = MODEL / "folded.h5"
SAMPLE = MODEL / "samples" / "sample0.npy"


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)      # click < 8.2: keep stderr apart
    except TypeError:
        return CliRunner()                      # click >= 8.2: always apart


def invoke(*args, env=None):
    return _runner().invoke(main, [str(a) for a in args], env=env)


def assert_one_line(result, *fragments, code=1):
    """The CLI's refusal: exit code ``code``, one line 'Error: ...' on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def edited(tmp_path, edit, name="hostile.h5") -> Path:
    path = tmp_path / name
    shutil.copy(SHIPPED, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _set(path, key, value):
    return lambda f: f[path].attrs.__setitem__(key, value)


def _replace(path, data=None, **kw):
    def edit(f):
        del f[path]
        if data is None:
            f.create_dataset(path, **kw)
        else:
            f.create_dataset(path, data=data, **kw)
    return edit


def _link(path, link):
    def edit(f):
        del f[path]
        f[path] = link
    return edit


def _scale_one(path, index, value):
    def edit(f):
        w = f[path][()]
        w[index] = value
        f[path][...] = w
    return edit


def _external_link(f):
    other = Path(f.filename).with_name("other.h5")
    shutil.copy(SHIPPED, other)
    _link("populations/layers.2", h5py.ExternalLink(str(other), "/populations/layers.2"))(f)


def _weight_in_etc_hostname(f):
    del f["projections/layers.0/weight"]
    f["projections/layers.0"].create_dataset("weight", shape=(16, 1, 3, 3), dtype="f8", fill_time="never",
                                             external=[("/etc/hostname", 0, h5py.h5f.UNLIMITED)])


def _virtual_weight(f):
    layout = h5py.VirtualLayout(shape=(16, 1, 3, 3), dtype="f8")
    layout[:] = h5py.VirtualSource(str(SHIPPED), "projections/layers.0/weight", shape=(16, 1, 3, 3))
    del f["projections/layers.0/weight"]
    f["projections/layers.0"].create_virtual_dataset("weight", layout)


def _hard_alias(f):
    f["populations/alias"] = f["populations/layers.2"]          # a second name for one group


def _hard_cycle(f):
    f["populations/loop"] = f["populations"]                    # a group that contains itself


def _declared_weight(shape):
    """A weight that declares ``shape`` but stores no chunk: the file stays tiny."""
    def edit(f):
        del f["projections/layers.6/weight"]
        f["projections/layers.6"].create_dataset("weight", shape=shape, dtype="f8", chunks=(1024, 64),
                                                 fillvalue=0.5)
    return edit


def _many_constants(f):
    for i in range(100):
        f["populations/layers.2"].attrs[f"c{i}"] = 1.0


def _provenance(value):
    return _set("/", "provenance", value)


# name -> (edit, error, pattern). The pattern is matched against the message after the file name.
CASES = {
    # integers are integers
    "format_version_1.9": (_set("/", "format_version", 1.9), FormatError,
                           r"attribute 'format_version' must be an integer, got 1\.9 \(float64\)"),
    "format_version_inf": (_set("/", "format_version", np.inf), FormatError,
                           r"'format_version' must be an integer, got inf"),
    "format_version_nan": (_set("/", "format_version", np.nan), FormatError, r"must be an integer, got nan"),
    "format_version_text": (_set("/", "format_version", "1"), FormatError, r"must be an integer, got text '1'"),
    "format_version_bool": (_set("/", "format_version", True), FormatError,
                            r"'format_version' has an HDF5 enum \(bool\) type, which evsim does not read"),
    "format_version_complex": (_set("/", "format_version", 1 + 0j), FormatError, r"HDF5 compound \(complex128\)"),
    "format_version_array": (_set("/", "format_version", [1]), FormatError,
                             r"must be an integer, got an array of shape \(1,\)"),
    "timesteps_2.5": (_set("/", "timesteps", 2.5), FormatError, r"'timesteps' must be an integer, got 2\.5"),
    "timesteps_10**12": (_set("/", "timesteps", 10**12), LimitError,
                         r"timesteps 1000000000000 is over the limit of 10000 \(raise it with EVSIM_MAX_TIMESTEPS\)"),
    "timesteps_0": (_set("/", "timesteps", 0), NetworkError, r"timesteps must be >= 1, got 0"),
    "timesteps_-1": (_set("/", "timesteps", -1), NetworkError, r"timesteps must be >= 1, got -1"),
    "index_0.5": (_set("populations/layers.3.sn1", "index", 0.5), FormatError,
                  r"/populations/layers.3.sn1: attribute 'index' must be an integer, got 0\.5"),
    "index_out_of_range": (_set("projections/layers.6", "index", 99), FormatError,
                           r"/projections/layers.6: index 99 is not one of 0\.\.10"),
    "index_duplicate": (_set("projections/layers.6", "index", 0), FormatError,
                        r"/projections/layers.6: index 0 is also the index of 'layers.0'"),
    # shapes
    "shape_16.6": (_set("populations/layers.2", "shape", [16.6, 28.0, 28.0]), FormatError,
                   r"/populations/layers.2: attribute 'shape' must hold 1 or 3 integers, got an array of shape "
                   r"\(3,\) \(float64\)"),
    "shape_inf": (_set("populations/layers.2", "shape", [np.inf, 28.0, 28.0]), FormatError,
                  r"'shape' must hold 1 or 3 integers"),
    "shape_negative": (_set("populations/layers.2", "shape", [-16, 28, 28]), FormatError,
                       r"'shape' must be positive, got \(-16, 28, 28\)"),
    "shape_two_axes": (_set("populations/layers.2", "shape", [16, 784]), FormatError, r"must hold 1 or 3 integers"),
    "shape_int64_overflow": (_set("populations/layers.2", "shape", np.array([2**62, 4, 4], dtype=np.int64)),
                             LimitError, r"population 'layers.2' of shape \(4611686018427387904, 4, 4\) needs "
                                         r"[0-9.e+]+ PiB, over the 4 GiB memory budget \(raise it with EVSIM_MAX_BYTES\)"),
    "shape_over_budget": (_set("populations/layers.2", "shape", [16, 28000, 28000]), LimitError,
                          r"population 'layers.2' of shape \(16, 28000, 28000\) needs 374 GiB, over the 4 GiB"),
    "input_shape_float": (_set("/", "input_shape", [1.0, 28.0, 28.0]), FormatError,
                          r"'input_shape' must hold 1 or 3 integers"),
    # stride, padding, kernel
    "stride_one_element": (_set("projections/layers.0", "stride", [1]), FormatError,
                           r"/projections/layers.0: attribute 'stride' must hold 2 integers, got an array of shape \(1,\)"),
    "stride_three_elements": (_set("projections/layers.0", "stride", [1, 1, 1]), FormatError,
                              r"'stride' must hold 2 integers, got an array of shape \(3,\)"),
    "stride_10**9": (_set("projections/layers.4.conv1", "stride", [10**9, 10**9]), NetworkError,
                     r"projection 'layers.4.conv1': stride \(1000000000, 1000000000\) is longer than the padded "
                     r"input 30x30"),
    "stride_float": (_set("projections/layers.0", "stride", [1.5, 1.5]), FormatError, r"'stride' must hold 2 integers"),
    "padding_one_element": (_set("projections/layers.0", "padding", [1]), FormatError,
                            r"'padding' must hold 2 integers, got an array of shape \(1,\)"),
    "padding_10**9": (_set("projections/layers.0", "padding", [10**9, 10**9]), NetworkError,
                      r"padding \(1000000000, 1000000000\) is larger than the input 28x28"),
    "kernel_0x0": (_replace("projections/layers.0/weight", np.zeros((16, 1, 0, 0))), NetworkError,
                   r"projection 'layers.0': kernel must be at least 1x1, got 0x0"),
    # dtypes
    "complex_weight": (_replace("projections/layers.0/weight", np.ones((16, 1, 3, 3), dtype=complex)), FormatError,
                       r"/projections/layers.0/weight has an HDF5 compound \(complex128\) type; weights and biases "
                       r"are real numbers"),
    "complex_constant": (_set("populations/layers.2", "tau", 0.25 + 1j), FormatError,
                         r"/populations/layers.2: attribute 'tau' has an HDF5 compound \(complex128\) type"),
    "complex_scale": (_set("projections/layers.3.shortcut", "scale", 0.9 + 1j), FormatError, r"attribute 'scale'"),
    "string_weight": (_replace("projections/layers.0/weight", "abc"), FormatError,
                      r"/projections/layers.0/weight has an HDF5 string .* type"),
    "bytes_weight": (_replace("projections/layers.0/weight", np.full((16, 1, 3, 3), b"abc")), FormatError,
                     r"weight has an HDF5 string \(\|S3\) type"),
    "bool_weight": (_replace("projections/layers.0/weight", np.ones((16, 1, 3, 3), dtype=bool)), FormatError,
                    r"weight has an HDF5 enum \(bool\) type"),
    "vlen_weight": (_replace("projections/layers.0/weight", shape=(2,), dtype=h5py.vlen_dtype(np.float64)),
                    FormatError, r"weight has an HDF5 variable-length sequence"),
    "compound_weight": (_replace("projections/layers.0/weight", np.zeros(3, dtype=[("a", "f8"), ("b", "i4")])),
                        FormatError, r"weight has an HDF5 compound"),
    "scalar_weight": (_replace("projections/layers.0/weight", 1.0), NetworkError, r"conv2d weight must be 4-D"),
    "empty_dataspace_weight": (_replace("projections/layers.0/weight", h5py.Empty("f8")), FormatError,
                               r"weight holds no array \(an empty dataspace\)"),
    "text_constant": (_set("populations/layers.2", "tau", "0.25"), FormatError,
                      r"attribute 'tau' must be a real number, got text '0.25'"),
    "nan_constant": (_set("populations/layers.2", "tau", np.nan), FormatError, r"attribute 'tau' must be finite"),
    "model_not_text": (_set("populations/layers.2", "model", 3), FormatError, r"'model' must be UTF-8 text, got 3"),
    "class_names_numbers": (_replace("class_names", np.arange(10)), FormatError,
                            r"/class_names has an HDF5 integer \(int64\) type; it must hold strings"),
    "class_name_newline": (_replace("class_names", np.array([f"c{i}\nx" for i in range(10)], dtype=object),
                                    dtype=h5py.string_dtype()), FormatError, r"class name 'c0\\nx' is not printable"),
    "many_constants": (_many_constants, FormatError, r"/populations/layers.2: 105 attributes, more than the 64"),
    # provenance
    "provenance_list": (_provenance(json.dumps([1, 2])), FormatError, r"provenance must be a JSON object, got list"),
    "provenance_string": (_provenance(json.dumps("made by hand")), FormatError,
                          r"provenance must be a JSON object, got str"),
    "provenance_not_json": (_provenance("{not json"), FormatError, r"provenance attribute is not valid JSON"),
    "provenance_deep": (_provenance("[" * 100_000 + "]" * 100_000), FormatError, r"provenance attribute is not valid JSON"),
    "provenance_nested": (_provenance('{"a": ' * 150 + "1" + "}" * 150), FormatError,
                          r"provenance is nested more than 100 levels deep"),
    "provenance_surrogate": (_provenance('{"a": "\\ud800"}'), FormatError,
                             r"provenance holds text that is not valid Unicode"),
    # nothing outside the file
    "external_link": (_external_link, FormatError,
                      r"/populations/layers.2 is an external link to '.*other.h5'; a network file holds only its own"),
    "external_link_group": (_link("projections", h5py.ExternalLink("/tmp/elsewhere.h5", "/projections")), FormatError,
                            r"/projections is an external link"),
    "external_storage_etc_hostname": (_weight_in_etc_hostname, FormatError,
                                      r"/projections/layers.0/weight keeps its data in the external file "
                                      r"'/etc/hostname'; a network file holds its own data"),
    "virtual_dataset": (_virtual_weight, FormatError, r"weight is a virtual dataset"),
    "soft_link": (_link("populations/layers.2", h5py.SoftLink("/populations/layers.3.sn1")), FormatError,
                  r"/populations/layers.2 is a soft link to '/populations/layers.3.sn1'"),
    "soft_link_cycle": (_link("populations/layers.2", h5py.SoftLink("/populations/layers.2")), FormatError,
                        r"/populations/layers.2 is a soft link"),
    "soft_link_weight": (_link("projections/layers.0/weight", h5py.SoftLink("/projections/layers.3.conv1/weight")),
                         FormatError, r"/projections/layers.0/weight is a soft link"),
    "soft_link_group": (_link("projections", h5py.SoftLink("/populations")), FormatError, r"/projections is a soft link"),
    "hard_link_alias": (_hard_alias, FormatError, r"/populations/layers.2: index 0 is also the index of 'alias'"),
    "hard_link_cycle": (_hard_cycle, FormatError, r"/populations/loop: missing attribute 'index'"),
    # format v3 (a pooled conv): its attributes need version 3, and version 3 needs one of them
    "pool_in_version_1": (_set("projections/layers.3.conv1", "pool_kernel", np.array([3, 3])), FormatError,
                          r"/projections/layers.3.conv1: attribute 'pool_kernel' \(a pooled conv\) needs format "
                          r"version 3, the file says 1"),
    "version_3_without_pool": (_set("/", "format_version", 3), FormatError,
                               r"format version 3 is for networks with a pooled conv, but no projection has pool "
                               r"attributes"),
    # sizes declared, not stored
    "declared_weight_170000x3136": (_declared_weight((170000, 3136)), NetworkError,
                                    r"projection 'layers.6': bias shape \(10,\), expected \(170000,\)"),
    "declared_weight_on_identity": (lambda f: f["projections/layers.3.shortcut"].create_dataset(
        "weight", shape=(170000, 3136), dtype="f8", chunks=(1024, 64), fillvalue=0.5), NetworkError,
        r"projection 'layers.3.shortcut': an identity projection takes no weight or bias"),
    "declared_weight_over_budget": (_declared_weight((200000, 3136)), LimitError,
                                    r"projection 'layers.6' weight of shape \(200000, 3136\) \(as float64\) needs "
                                    r"4.67 GiB, over the 4 GiB memory budget"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file(tmp_path, name):
    edit, error, pattern = CASES[name]
    path = edited(tmp_path, edit)
    t0 = time.perf_counter()
    with pytest.raises(error, match=pattern) as info:
        read_network(path)
    assert time.perf_counter() - t0 < 2.0
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")


def test_control_reads_and_runs():
    """The unedited shipped file: the control for every case above."""
    net = read_network(SHIPPED)
    out = evsim.run(compile_network(net, "float32"), np.load(SAMPLE)[None])
    assert np.isfinite(out.outputs).all()


def test_declared_weight_is_refused_before_it_is_read(tmp_path):
    """A (170000, 3136) float64 weight is 4 GB; the file holds none of it and reading allocates none of it."""
    path = edited(tmp_path, _declared_weight((170000, 3136)))
    assert path.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(NetworkError):
        read_network(path)
    assert time.perf_counter() - t0 < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 << 10                 # well under the 4 GB a read would take


def test_memory_budget_override(tmp_path, monkeypatch):
    monkeypatch.setenv("EVSIM_MAX_BYTES", "1M")
    with pytest.raises(LimitError, match=r"the network as a whole needs [\d.]+ MiB, over the 1 MiB memory budget"):
        read_network(SHIPPED)
    monkeypatch.setenv("EVSIM_MAX_BYTES", "a lot")
    with pytest.raises(EvsimError, match=r"EVSIM_MAX_BYTES must be a positive integer .* got 'a lot'"):
        read_network(SHIPPED)
    monkeypatch.setenv("EVSIM_MAX_BYTES", "8G")
    path = edited(tmp_path, _set("/", "timesteps", 20_000))
    with pytest.raises(LimitError, match="EVSIM_MAX_TIMESTEPS"):
        read_network(path)
    monkeypatch.setenv("EVSIM_MAX_TIMESTEPS", "20000")
    assert read_network(path).timesteps == 20_000
    assert read_network(path, limits=evsim.limits.Limits(max_timesteps=20_000)).timesteps == 20_000


# -------------------------------------------------------------- the global heap
def _global_heap_object(data: bytes) -> int:
    """Byte offset of the first object in the first global heap collection of a file."""
    at = data.index(b"GCOL")
    return at + 16


def test_zero_size_global_heap_object_is_refused(tmp_path):
    """HDF5 2.0 loops forever decoding a heap object of index 0 and size 0 (the `evsim info` spin);
    evsim walks the heap itself first, with a bounded loop."""
    data = bytearray(SHIPPED.read_bytes())
    p = _global_heap_object(data)
    data[p:p + 16] = bytes(16)
    path = tmp_path / "spin.h5"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match=r"corrupted HDF5 global heap at byte \d+ \(object 0 at byte \d+ has size 0\)"):
        read_network(path)
    assert time.perf_counter() - t0 < 2.0
    assert_one_line(invoke("info", path), "corrupted HDF5 global heap")


def test_byte_inserted_into_provenance_is_refused(tmp_path):
    """The audit's spin: one byte inserted into the provenance text shifts every later heap object."""
    data = bytearray(SHIPPED.read_bytes())
    at = data.index(b'"epoch"')
    data[at:at] = b"{"
    path = tmp_path / "shifted.h5"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=r"corrupted HDF5 global heap"):
        read_network(path)


def test_string_turned_into_byte_sequence_is_refused(tmp_path):
    """A bit flip that makes a string attribute a variable-length sequence of bytes crashed h5py's conversion."""
    def edit(f):
        value = np.empty((), dtype=object)
        value[()] = np.frombuffer(b"mean", np.uint8)
        del f.attrs["readout"]
        f.attrs.create("readout", value, dtype=h5py.vlen_dtype(np.uint8))

    path = edited(tmp_path, edit)
    with pytest.raises(FormatError, match=r"attribute 'readout' has an HDF5 variable-length sequence"):
        read_network(path)


# ------------------------------------------------------------------ big graphs
def chain(n: int) -> Network:
    lif = {"tau": 0.5, "v_threshold": 0.5}
    pops = [Population(f"p{i}", (1,), "ternary_lif", lif) for i in range(n)]
    projs = [Projection(f"w{i}", "input" if i == 0 else f"p{i - 1}", f"p{i}", "linear", np.ones((1, 1)))
             for i in range(n)]
    projs.append(Projection("out", f"p{n - 1}", "readout", "linear", np.ones((2, 1))))
    return Network(pops, projs, timesteps=2, input_shape=(1,))


def test_deep_chain_validates_quickly():
    """20 000 populations in a chain: accepted in memory, in O(V + E) and without recursion."""
    net = chain(20_000)
    t0 = time.perf_counter()
    net.validate()
    order = net.topological_order()
    assert time.perf_counter() - t0 < 2.0
    assert order == [p.name for p in net.populations]


def test_deep_cycle_is_named_briefly():
    net = chain(20_000)
    net.projections[0].source = "p19999"
    with pytest.raises(NetworkError, match=r"cycle through populations p0, p1, p10, .* and 19990 more$"):
        net.validate()


def test_chain_file_at_the_object_limit_reads(tmp_path):
    """1 999 populations and 2 000 projections in a chain, the most the default EVSIM_MAX_OBJECTS allows:
    read in seconds (about 5 s on a quiet 2-core machine, h5py's ~0.1 ms per attribute; the bound is a guard
    against a hang or a quadratic walk, loose enough for a loaded CI machine)."""
    path = evsim.write_network(chain(1_999), tmp_path / "chain.h5")
    t0 = time.perf_counter()
    assert len(read_network(path).projections) == 2_000
    assert time.perf_counter() - t0 < 30.0


def test_deep_chain_file_is_refused_by_the_object_limit(tmp_path):
    """A file with 20 000 populations is refused by count before any of them is read (EVSIM_MAX_OBJECTS)."""
    path = edited(tmp_path, lambda f: [f["populations"].create_group(f"p{i}") for i in range(20_000)])
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match=r"/populations holds 20007 populations, over the limit of 2000 "
                                         r"\(raise it with EVSIM_MAX_OBJECTS\)"):
        read_network(path)
    assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------- run dtype range
@pytest.mark.parametrize("edit, pattern", [
    (_scale_one("projections/layers.3.conv1/weight", (0, 0, 1, 1), 1e300),
     r"projection 'layers.3.conv1': weights up to 1e\+300 over a fan-in of 144 .*can reach 1.44e\+302, beyond "
     r"the range of float32"),
    (_scale_one("projections/layers.6/bias", 3, 1e300), r"projection 'layers.6': .* biases up to 1e\+300 .* float32"),
    (_set("populations/layers.4.sn1", "tau", 1e300), r"population 'layers.4.sn1': constant tau = 1e\+300 is beyond "
                                                       r"the range of float32"),
    (_set("projections/layers.3.shortcut", "scale", 1e300), r"'layers.3.shortcut': scale 1e\+300 is beyond the range"),
], ids=["weight", "bias", "constant", "scale"])
def test_values_beyond_float32_are_refused_for_float32(tmp_path, edit, pattern):
    """1e300 is finite in float64 and reads fine; compiled for float32 it would be inf, so that is refused.
    Compiled for float64 it runs (the bound is float64's range)."""
    path = edited(tmp_path, edit)
    net = read_network(path)
    with pytest.raises(NetworkError, match=pattern):
        compile_network(net, "float32")
    compile_network(net, "float64")
    assert_one_line(invoke("run", "-w", path, "-i", SAMPLE), "beyond the range of float32")


def test_compiler_refuses_offset_maps_over_the_budget():
    """A long row and a wide kernel: each small, but the conv's offset maps (input x kernel) would be 8 GB."""
    w_in, kw = 2_000_000, 1_000
    pops = [Population("wide", (1, 1, w_in - kw + 1), "ternary_lif", {"tau": 0.5, "v_threshold": 0.5})]
    projs = [Projection("conv", "input", "wide", "conv2d", np.ones((1, 1, 1, kw))),
             Projection("out", "wide", "readout", "linear", np.ones((2, w_in - kw + 1)))]
    net = Network(pops, projs, timesteps=2, input_shape=(1, 1, w_in), encoding="spikes")
    with pytest.raises(LimitError, match=r"compiling projection 'conv': its offset maps \(1x1 \+ 2000000x1000 "
                                         r"int32\) needs 7.45 GiB, over the 4 GiB memory budget"):
        compile_network(net, "float32")


# ------------------------------------------------------------------ special files
@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_fifo_as_weights(fifo):
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match=r"network file .*pipe: is a named pipe, not a regular file"):
        read_network(fifo)
    assert_one_line(invoke("run", "-w", fifo, "-i", SAMPLE), "is a named pipe, not a regular file")
    assert_one_line(invoke("info", fifo), "is a named pipe")
    assert time.perf_counter() - t0 < 5.0


def test_fifo_as_input(fifo):
    t0 = time.perf_counter()
    with pytest.raises(FileError, match=r"input file .*pipe: is a named pipe, not a regular file"):
        load_array(str(fifo))
    assert_one_line(invoke("run", "-w", SHIPPED, "-i", fifo), "input file", "is a named pipe")
    assert_one_line(invoke("run", "-w", SHIPPED, "-i", SAMPLE, "--labels", fifo), "labels file", "is a named pipe")
    assert time.perf_counter() - t0 < 5.0


def test_directory_as_weights(tmp_path):
    with pytest.raises(FormatError, match="is a directory"):
        read_network(tmp_path)


# ------------------------------------------------------------------- .npy inputs
def _npy(path: Path, header: dict, data: bytes = b"") -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return path


@pytest.mark.parametrize("make, error, pattern", [
    (lambda p: _npy(p, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}), LimitError,
     r"an array of shape \(1000000, 1000000\) \(float64\) needs 7.28 TiB, over the 4 GiB memory budget"),
    (lambda p: _npy(p, {"descr": "<f8", "fortran_order": False, "shape": (1000, 1, 28, 28)}, bytes(64)), InputError,
     r"truncated: the header declares 6272000 bytes of data, the file holds 64"),
    (lambda p: np.save(p, np.ones((1, 28, 28), dtype=complex)), InputError, r"input dtype <c16 is not numeric"),
    (lambda p: np.save(p, np.zeros(3, dtype=[("a", "f8"), ("b", "i4")])), InputError, r"is not numeric"),
    (lambda p: np.save(p, np.array(["a"], dtype=object), allow_pickle=True), InputError,
     r"Object arrays cannot be loaded"),
    (lambda p: np.save(p, np.array(["2020-01-01"], dtype="datetime64[D]")), InputError, r"input dtype <M8\[D\] is not"),
    (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\xff\xff{'descr': '<f8'"), InputError,
     r"cannot read as a .npy array"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x07\x00"), InputError, r"cannot read as a .npy array"),
], ids=["declared_7TiB", "truncated", "complex", "structured", "object", "datetime", "bad_header", "bad_version"])
def test_hostile_npy(tmp_path, make, error, pattern):
    path = tmp_path / "x.npy"
    make(path)
    t0 = time.perf_counter()
    with pytest.raises(error, match=pattern):
        load_array(str(path))
    assert time.perf_counter() - t0 < 1.0
    assert_one_line(invoke("run", "-w", SHIPPED, "-i", path))


# --------------------------------------------------------------- the CLI as such
@pytest.mark.parametrize("name", ["provenance_list", "provenance_string", "external_link", "soft_link",
                                  "external_storage_etc_hostname", "shape_int64_overflow", "timesteps_10**12"])
def test_cli_info_refuses_in_one_line(tmp_path, name):
    path = edited(tmp_path, CASES[name][0])
    assert_one_line(invoke("info", path), str(path))
    assert_one_line(invoke("info", path, "--json"), str(path))


def test_cli_bad_environment_is_one_line():
    assert_one_line(invoke("info", SHIPPED, env={"EVSIM_MAX_BYTES": "-3"}), "EVSIM_MAX_BYTES must be a positive")


def test_cli_usage_error_is_exit_code_2():
    result = invoke("info", SHIPPED, "--no-such-option")
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_out_of_memory_names_the_allocation(monkeypatch):
    """A MemoryError is 'out of memory' and what NumPy could not allocate, not advice about --batch-size."""
    import evsim.format

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.2 GiB for an array with shape (430000000,) and data type float64")

    monkeypatch.setattr(evsim.format, "_read", exhausted)
    result = invoke("info", SHIPPED)
    assert_one_line(result, "out of memory: Unable to allocate 3.2 GiB for an array with shape (430000000,)")
    assert "batch-size" not in result.stderr

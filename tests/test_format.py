"""HDF5 format v1: round trip, overwrite protection, and one clear error per kind of bad file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

import networks
from evsim import read_network, write_network
from evsim.errors import EvsimError, FormatError, NetworkError
from evsim.graph import Network, Population, Projection


def assert_same_network(a: Network, b: Network):
    assert b.timesteps == a.timesteps
    assert b.input_shape == a.input_shape
    assert b.encoding == a.encoding
    assert b.readout == a.readout
    assert b.class_names == a.class_names
    assert b.input_range == a.input_range
    assert b.provenance == a.provenance
    assert [p.name for p in b.populations] == [p.name for p in a.populations]
    assert [p.name for p in b.projections] == [p.name for p in a.projections]
    for pa, pb in zip(a.populations, b.populations):
        assert (pb.shape, pb.model, pb.params) == (pa.shape, pa.model, pa.params)
    for pa, pb in zip(a.projections, b.projections):
        assert (pb.source, pb.target, pb.kind, pb.stride, pb.padding, pb.scale) == \
               (pa.source, pa.target, pa.kind, pa.stride, pa.padding, pa.scale)
        for attr in ("weight", "bias"):
            wa, wb = getattr(pa, attr), getattr(pb, attr)
            if wa is None:
                assert wb is None
            else:
                assert wb.dtype == np.float64 and wb.shape == wa.shape
                assert wb.tobytes() == wa.tobytes()           # bit-exact


@pytest.mark.parametrize("make", [
    lambda: networks.residual_net(model="ctsn_static"),              # class names, input_range, provenance
    lambda: networks.residual_net(model="binary_lif", encoding="spikes"),
    lambda: networks.mlp_net(model="ctsn_event"),                    # none of the optional fields
])
def test_round_trip(tmp_path, make):
    net = make()
    path = write_network(net, tmp_path / "net.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.h5"]      # no temporary file left
    back = read_network(path)
    assert_same_network(net, back)


def test_round_trip_keeps_order_beyond_ten(tmp_path):
    """HDF5 lists groups alphabetically (p0, p1, p10, p11, p2...); the file keeps the writer's order."""
    lif = {"tau": 0.5, "v_threshold": 0.25}
    names = [f"p{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    pops = [Population(n, (3,), "ternary_lif", lif) for n in names]
    projs = [Projection(f"w{i}", "input" if i == 0 else names[i - 1], names[i], "linear", rng.normal(size=(3, 3)))
             for i in range(12)]
    projs.append(Projection("z.out", names[-1], "readout", "linear", rng.normal(size=(2, 3)), np.array([0.1, -0.2])))
    net = Network(pops, projs, timesteps=2, input_shape=(3,), class_names=["yes", "ñø"],
                  input_range=(-1.0, 1.0), provenance={"nested": {"a": [1, 2]}, "text": "ünïcode"})
    back = read_network(write_network(net, tmp_path / "chain.h5"))
    assert [p.name for p in back.populations] == names
    assert [p.name for p in back.projections] == [f"w{i}" for i in range(12)] + ["z.out"]
    assert_same_network(net, back)


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "net.h5"
    write_network(networks.mlp_net(seed=0), path)
    with pytest.raises(EvsimError, match="already exists .*--force"):
        write_network(networks.mlp_net(seed=1), path)
    assert_same_network(networks.mlp_net(seed=0), read_network(path))    # untouched
    write_network(networks.mlp_net(seed=1), path, overwrite=True)
    assert_same_network(networks.mlp_net(seed=1), read_network(path))


def test_write_validates_first(tmp_path):
    net = networks.mlp_net()
    net.projections[1].weight[0, 0] = np.nan
    with pytest.raises(NetworkError, match="NaN"):
        write_network(net, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


# ---------------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.h5"
    write_network(networks.residual_net(), path)
    return path


def _replace(f, path, data):
    del f[path]
    f[path] = data


def _set(path, key, value):
    return lambda f: f[path].attrs.__setitem__(key, value)


def _del_attr(path, key):
    return lambda f: f[path].attrs.__delitem__(key)


BAD = {
    "no_format_attr": (_del_attr("/", "format"), FormatError, r"not an evsim network file"),
    "wrong_format_attr": (_set("/", "format", "something-else"), FormatError, r"not an evsim network file"),
    "future_version": (_set("/", "format_version", 99), FormatError, r"format version 99 is not supported"),
    "unknown_model": (_set("populations/stem", "model", "izhikevich"), FormatError,
                      r"population 'stem' uses unknown neuron model 'izhikevich' \(known: ternary_lif"),
    "dangling_source": (_set("projections/b1.conv1", "source", "nowhere"), NetworkError,
                        r"projection 'b1.conv1': source 'nowhere' .*dangling"),
    "dangling_target": (_set("projections/fc", "target", "nowhere"), NetworkError,
                        r"projection 'fc': target 'nowhere' .*dangling"),
    "cycle": (_set("projections/b1.conv1", "source", "b1.out"), NetworkError, r"cycle through populations b1.mid"),
    "self_loop": (_set("projections/b1.conv1", "source", "b1.mid"), NetworkError, r"connects 'b1.mid' to itself"),
    "linear_weight_shape": (lambda f: _replace(f, "projections/fc/weight", np.zeros((5, 7))), NetworkError,
                            r"projection 'fc': weight shape \(5, 7\) expects 7 source neurons"),
    "conv_weight_shape": (lambda f: _replace(f, "projections/b1.conv1/weight", np.zeros((4, 3, 3, 3))), NetworkError,
                          r"weight shape \(4, 3, 3, 3\) expects 3 input channels"),
    "conv_weight_ndim": (lambda f: _replace(f, "projections/b1.conv1/weight", np.zeros((4, 36))), NetworkError,
                         r"conv2d weight must be 4-D"),
    "nan_weight": (lambda f: f["projections/b1.conv2/weight"].__setitem__((1, 2, 0, 1), np.nan), NetworkError,
                   r"projection 'b1.conv2': weight contains NaN"),
    "inf_bias": (lambda f: f["projections/fc/bias"].__setitem__(0, np.inf), NetworkError, r"bias contains NaN or inf"),
    "missing_timesteps": (_del_attr("/", "timesteps"), FormatError, r"missing attribute 'timesteps'"),
    "missing_version": (_del_attr("/", "format_version"), FormatError, r"missing attribute 'format_version'"),
    "missing_shape": (_del_attr("populations/b1.mid", "shape"), FormatError,
                      r"h5: /populations/b1.mid: missing attribute 'shape'"),
    "missing_kind": (_del_attr("projections/fc", "kind"), FormatError, r"h5: /projections/fc: missing attribute 'kind'"),
    "missing_index": (_del_attr("projections/fc", "index"), FormatError, r"missing attribute 'index'"),
    "missing_constant": (_del_attr("populations/stem", "tau"), NetworkError, r"'stem': .* misses constants tau"),
    "missing_weight": (lambda f: f["projections/fc"].__delitem__("weight"), NetworkError,
                       r"'fc': linear projection has no weight"),
    "missing_group": (lambda f: f.__delitem__("projections"), FormatError, r"missing group /projections"),
    "group_is_dataset": (lambda f: (f.__delitem__("populations"), f.create_dataset("populations", data=[1])),
                         FormatError, r"/populations must be a group"),
    "bad_provenance": (_set("/", "provenance", "{not json"), FormatError, r"provenance .* not valid JSON"),
    "class_names_count": (lambda f: _replace(f, "class_names", np.array([b"a", b"b"])), NetworkError,
                          r"2 class names for 5 outputs"),
    "input_range_three": (_set("/", "input_range", [0.0, 1.0, 2.0]), FormatError,
                          r"input_range must hold two numbers"),
    "input_range_nan": (_set("/", "input_range", [np.nan, 1.0]), NetworkError, r"input_range must be finite"),
    "input_range_reversed": (_set("/", "input_range", [1.0, 0.0]), NetworkError, r"lo <= hi"),
    "zero_timesteps": (_set("/", "timesteps", 0), NetworkError, r"timesteps must be >= 1"),
    "unknown_encoding": (_set("/", "encoding", "rate"), NetworkError, r"unknown input encoding 'rate'"),
    "unknown_kind": (_set("projections/fc", "kind", "maxpool"), NetworkError, r"unknown kind 'maxpool'"),
    "zero_stride": (_set("projections/b1.conv1", "stride", [0, 1]), NetworkError, r"invalid stride \(0, 1\)"),
    "negative_threshold": (_set("populations/stem", "v_threshold", -1.0), NetworkError, r"v_threshold must be > 0"),
    "index_not_int": (_set("projections/fc", "index", "first"), FormatError,
                      r"/projections/fc: attribute 'index' must be an integer, got text 'first'"),
    "weight_not_numeric": (lambda f: _replace(f, "projections/fc/weight", "abc"), FormatError,
                           r"/projections/fc/weight has an HDF5 string .* type; weights and biases are real numbers"),
}


def assert_edit_refused(tmp_path, base_file, name, edit, error, pattern):
    """A copy of ``base_file`` changed by ``edit(h5 file)`` is refused on reading with ``error`` matching
    ``pattern``, in one line that names the file first."""
    path = tmp_path / f"{name}.h5"
    shutil.copy(base_file, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(error, match=pattern) as info:
        read_network(path)
    assert "\n" not in str(info.value)                     # one line for the command line
    assert str(info.value).startswith(f"{path}: ")          # names the file first


@pytest.mark.parametrize("name", list(BAD))
def test_bad_file(tmp_path, good_file, name):
    assert_edit_refused(tmp_path, good_file, name, *BAD[name])


def test_good_file_reads(good_file):
    """The control for test_bad_file: the unedited copy reads."""
    assert_same_network(networks.residual_net(), read_network(good_file))


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=r"nothere\.h5: no such file"):
        read_network(tmp_path / "nothere.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(FormatError, match=r"text\.h5: not an HDF5 file"):
        read_network(path)


def test_hdf5_without_format_attr(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(FormatError, match=r"not an evsim network file \(attribute format != 'evsim-network'\)"):
        read_network(path)

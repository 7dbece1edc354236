"""Writes land exactly where asked (never through a planted link), and reads refuse special files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

import networks
from evsim import read_network, write_network
from evsim.cli import main
from evsim.files import FileError, atomic_write, open_regular


def _write(path, data: bytes, force=False):
    with atomic_write(path, force=force) as f:
        f.write(data)


def test_atomic_write_leaves_only_the_target(tmp_path):
    _write(tmp_path / "out.bin", b"abc")
    assert (tmp_path / "out.bin").read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert oct((tmp_path / "out.bin").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_existing_target_needs_force(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileError, match="already exists .*--force"):
        _write(target, b"new")
    assert target.read_bytes() == b"old"
    _write(target, b"new", force=True)
    assert target.read_bytes() == b"new"


def test_planted_tmp_symlink_is_never_written_through(tmp_path):
    """The old fixed name OUT.tmp is not used; a symlink there (or anywhere) is left alone."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "linked.h5.tmp").symlink_to(victim)
    write_network(networks.mlp_net(), tmp_path / "linked.h5")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "linked.h5.tmp").is_symlink()
    read_network(tmp_path / "linked.h5")


def test_symlink_as_target_replaces_the_link_not_its_file(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.h5"
    link.symlink_to(victim)
    with pytest.raises(FileError, match="already exists"):
        write_network(networks.mlp_net(), link)
    write_network(networks.mlp_net(), link, overwrite=True)
    assert victim.read_bytes() == b"precious"
    assert not link.is_symlink()
    read_network(link)


def test_dangling_symlink_counts_as_existing(tmp_path):
    link = tmp_path / "out.h5"
    link.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(FileError, match="already exists"):
        write_network(networks.mlp_net(), link)


@pytest.mark.parametrize("where, message", [
    ("missing/out.h5", "does not exist"),
    ("afile/out.h5", "is not a directory"),
    ("adir", "is a directory"),
])
def test_bad_destinations_are_one_line(tmp_path, where, message):
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    with pytest.raises(FileError, match=message):
        write_network(networks.mlp_net(), tmp_path / where)


def test_unwritable_place_is_one_line():
    with pytest.raises(FileError, match="cannot write"):
        write_network(networks.mlp_net(), "/proc/evsim-out.h5")


def test_failed_write_removes_its_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"partial")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["file", "link", "dangling", "none"]), min_size=1, max_size=4), st.booleans())
def test_atomic_write_property(kinds, force):
    """Whatever occupies the target and nearby names, only the target changes, and only with force."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        victim = os.path.join(d, "victim")
        with open(victim, "wb") as f:
            f.write(b"v")
        names = ["out", "out.tmp", ".out.tmp", "out~"][:len(kinds)]
        for name, kind in zip(names, kinds):
            p = os.path.join(d, name)
            if kind == "file":
                with open(p, "wb") as f:
                    f.write(b"x")
            elif kind == "link":
                os.symlink(victim, p)
            elif kind == "dangling":
                os.symlink(os.path.join(d, "gone"), p)
        before = sorted(os.listdir(d))
        target_existed = kinds[0] != "none"
        try:
            _write(os.path.join(d, "out"), b"new", force=force)
            wrote = True
        except FileError:
            wrote = False
        assert wrote == (force or not target_existed)
        with open(victim, "rb") as f:
            assert f.read() == b"v"
        after = sorted(os.listdir(d))
        assert after == sorted(set(before) | {"out"})
        if wrote:
            assert not os.path.islink(os.path.join(d, "out"))
            with open(os.path.join(d, "out"), "rb") as f:
                assert f.read() == b"new"


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(FileError, open_regular, fifo)))
    t.start()
    t.join(5)
    assert done, "open_regular blocked on a named pipe"
    with pytest.raises(FileError, match="named pipe"):
        open_regular(fifo)
    with pytest.raises(FileError, match="directory"):
        open_regular(tmp_path)


def test_export_refuses_a_missing_directory_in_one_line(tmp_path):
    ckpt = Path(__file__).resolve().parents[1] / "models" / "fmnist-resnet8-ternary" / "model.pt"
    r = CliRunner().invoke(main, ["export", "-c", str(ckpt),
                                  "-o", str(tmp_path / "missing" / "x.h5")])
    if "needs PyTorch" in r.output:
        pytest.skip("torch extra not installed")
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and "does not exist" in r.output

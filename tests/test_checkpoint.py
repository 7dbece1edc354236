"""Checkpoints load as data: no pickle code runs, a hostile config allocates nothing, old files convert once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from evsim.bridge.checkpoint import CheckpointError, convert_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from evsim.bridge.models import build_model  # noqa: E402
from evsim.cli import main  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fmnist-resnet8-ternary"
SMALL = dict(arch="convnet", neuron="ternary", timesteps=2, in_channels=1, num_classes=10, image_size=28,
             width=4, encoding="direct")


class _Touch:
    """Pickles to a call that creates ``marker`` when unpickled: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _small_ckpt(path, **extra):
    model = build_model(**SMALL)
    torch.save(dict({"config": dict(SMALL), "state_dict": model.state_dict(), "record": {}}, **extra), path)
    return path


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "pwned"
    path = _small_ckpt(tmp_path / "evil.pt", record={"x": _Touch(marker)})
    return path, marker


def test_shipped_checkpoints_load_weights_only():
    for path in SHIPPED.parent.glob("*/*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)      # raises on any non-data global
        model, ckpt = load_checkpoint(path)
        assert isinstance(ckpt["record"]["torch_version"], str)


@pytest.mark.parametrize("command", [
    ["export", "-c", "{ckpt}", "-o", "{tmp}/out.h5"],
    ["verify", "-w", str(SHIPPED / "folded.h5"), "-c", "{ckpt}", "-i", str(SHIPPED / "samples" / "sample0.npy")],
    ["train", "--init", "{ckpt}", "--arch", "convnet", "--width", "4", "-T", "2", "--epochs", "1",
     "--train-limit", "8", "--test-limit", "8", "-o", "{tmp}/t.pt"],
])
def test_no_command_runs_a_checkpoints_pickle(hostile, tmp_path, command):
    path, marker = hostile
    args = [a.format(ckpt=path, tmp=tmp_path) for a in command]
    r = CliRunner().invoke(main, args)
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert "\n" not in line and "convert-checkpoint --trust" in line and "Traceback" not in line
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "t.pt").exists()


def test_convert_needs_trust_and_then_loads_safely(hostile, tmp_path):
    path, marker = hostile
    out = tmp_path / "converted.pt"
    r = CliRunner().invoke(main, ["convert-checkpoint", str(path), "--out", str(out)])
    assert r.exit_code == 2 and not marker.exists() and not out.exists()
    with pytest.raises(CheckpointError, match="--trust"):
        convert_checkpoint(path, out, trust=False)
    # with --trust the user vouches for the file: it is unpickled (its code runs: the marker appears) and
    # what it produced is stored as plain data, which then loads the safe way
    convert_checkpoint(path, out, trust=True)
    assert marker.exists()
    assert load_checkpoint(out)[1]["record"] == {"x": None}


def test_convert_an_old_style_checkpoint(tmp_path):
    """evsim before weights-only loading stored torch.__version__ (a TorchVersion) in the record."""
    old = _small_ckpt(tmp_path / "old.pt", record={"torch_version": torch.__version__, "history": [(1, 0.5)]})
    with pytest.raises(CheckpointError, match="convert-checkpoint --trust"):
        load_checkpoint(old)
    r = CliRunner().invoke(main, ["convert-checkpoint", "--trust", str(old), "--out", str(tmp_path / "new.pt")])
    assert r.exit_code == 0, r.output
    model, ckpt = load_checkpoint(tmp_path / "new.pt")
    assert ckpt["record"] == {"torch_version": str(torch.__version__), "history": [[1, 0.5]]}
    ref = build_model(**SMALL)
    ref.load_state_dict(torch.load(old, weights_only=False)["state_dict"])
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    r = CliRunner().invoke(main, ["convert-checkpoint", "--trust", str(old), "--out", str(tmp_path / "new.pt")])
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(config=dict(SMALL, width=10**9)), "width"),
    (lambda c: c.update(config=dict(SMALL, width=2.5)), "width"),
    (lambda c: c.update(config=dict(SMALL, arch="alexnet")), "arch"),
    (lambda c: c.update(config=dict(SMALL, evil=1)), "unknown config"),
    (lambda c: c.update(config=[1, 2]), "config"),
    (lambda c: c.update(state_dict={"x": 1}), "state_dict"),
    (lambda c: c["state_dict"].popitem(), "missing"),
    (lambda c: c["state_dict"].update(extra=torch.zeros(1)), "unexpected"),
    (lambda c: c["state_dict"].update({k: torch.zeros(3) for k in list(c["state_dict"])[:1]}), "shape"),
    (lambda c: c["state_dict"].update({k: v.to(torch.complex64) for k, v in list(c["state_dict"].items())[:1]}),
     "dtype"),
    (lambda c: c["state_dict"].update({k: v.fill_(float("nan")) for k, v in list(c["state_dict"].items())[:1]}),
     "NaN"),
    (lambda c: c.update(record=[1]), "record"),
    (lambda c: c.pop("config"), "not an evsim checkpoint"),
])
def test_bad_checkpoints_are_one_line(tmp_path, mutate, message):
    ckpt = {"config": dict(SMALL), "state_dict": build_model(**SMALL).state_dict(), "record": {}}
    mutate(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def test_non_checkpoint_files_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(200))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(Exception, match="named pipe"):
        load_checkpoint(tmp_path / "pipe.pt")


def test_save_refuses_non_plain_records(tmp_path):
    with pytest.raises(CheckpointError, match="not plain data"):
        save_checkpoint(tmp_path / "c.pt", build_model(**SMALL), {"f": object()})
    save_checkpoint(tmp_path / "c.pt", build_model(**SMALL), {"v": torch.__version__, "p": tmp_path})
    with pytest.raises(Exception, match="already exists"):
        save_checkpoint(tmp_path / "c.pt", build_model(**SMALL), {})
    assert load_checkpoint(tmp_path / "c.pt")[1]["record"] == {"v": str(torch.__version__), "p": str(tmp_path)}

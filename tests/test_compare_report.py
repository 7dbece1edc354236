"""models/compare.py's report: the papers' claims judged against the seed-to-seed spread, from results alone."""

import argparse
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("scipy")
ROOT = Path(__file__).resolve().parents[1]


def _compare():
    spec = importlib.util.spec_from_file_location("models_compare", ROOT / "models/compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(variant, acc):
    return {"variant": variant, "accuracy_evsim": acc, "accuracy_torch": acc, "firing_rate": 0.5,
            "neg_spike_share": 0.4, "synaptic_ops": 1e6, "macs": 5e4, "update_mults": 7e4, "energy_uj": 1.0,
            "ann_energy_uj": 4.0, "verify_passed": True}


def _args(**kw):
    base = dict(dataset="fashion-mnist", timesteps=4, train_limit=None, arch="convnet", width=16, epochs=4,
                batch_size=64, grad_clip=1.0, seeds=[0, 1, 2])
    base.update(kw)
    return argparse.Namespace(**base)


def _claims(text):
    lines = text.split("The papers' claims", 1)[1].splitlines()
    return {c[1].strip(): c[-2].strip() for c in (l.split("|") for l in lines if l.startswith("| ") and "claim" not in l)}


def test_claims_are_judged_against_the_spread():
    m = _compare()
    accs = {"binary LIF": [0.900, 0.901, 0.902],             # ahead of learnable a, beyond the spread
            "ternary, a = 1 fixed": [0.880, 0.881, 0.882],
            "ternary, learnable a": [0.890, 0.891, 0.892],   # beats a = 1 beyond the spread
            "CTSN": [0.889, 0.893, 0.891],                     # level with learnable a
            "CTSN + TMPR": [0.870, 0.871, 0.872]}             # below CTSN beyond the spread
    rows = [_row(v, a) for v, accs_v in accs.items() for a in accs_v]
    text = m.render({"command": "c", "date": "d", "machine": "x", "rows": rows}, _args())
    verdicts = _claims(text)
    assert verdicts == {"a learnable amplitude beats a = 1 (Ternary Spike)": "yes",
                        "ternary spikes beat binary ones (Ternary Spike)": "no: the other way",
                        "CTSN beats Ternary Spike (CTSN)": "no: level",
                        "TMPR improves CTSN (CTSN)": "no: the other way"}


def test_event_claims_and_one_seed():
    m = _compare()
    rows = [_row(v, a) for v, a in (("binary LIF", 0.85), ("ternary, learnable a", 0.86), ("CTSN event", 0.87))]
    text = m.render({"command": "c", "date": "d", "machine": "x", "rows": rows}, _args(dataset="nfashion-mnist"))
    assert "The papers' claims" not in text and "With one seed" in text      # no spread from one seed: no verdicts
    rows = [_row(v, a + 0.001 * s) for s in range(3)
            for v, a in (("binary LIF", 0.85), ("ternary, learnable a", 0.86), ("CTSN event", 0.87))]
    verdicts = _claims(m.render({"command": "c", "date": "d", "machine": "x", "rows": rows},
                                _args(dataset="nfashion-mnist")))
    assert verdicts == {"ternary spikes beat binary ones (Ternary Spike)": "yes",
                        "CTSN beats Ternary Spike on event data (CTSN)": "yes"}

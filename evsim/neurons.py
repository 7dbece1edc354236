"""The closed, named set of neuron models evsim simulates.

Each model is a name in the file format, a set of per-population constants
and an integer code the engine's update kernel switches on (outside its
inner loop). Equations (docs/REFERENCES.md sections 1-2, effective threshold
``v_threshold``):

ternary_lif   u[t] = tau * u[t-1] * (1 - |o[t-1]|) + x[t]
              o[t] = +1 if u >= v_th, -1 if u <= -v_th, else 0
binary_lif    u[t] = tau * u[t-1] * (1 - o[t-1]) + x[t]
              o[t] = 1 if u >= v_th else 0            (the {0,1} baseline)
ctsn_static   u[t] = tau * u~[t-1] * (1 - |o[t-1]|)
              h[t] = k_alpha*max(h[t-1],0) + k_beta*min(h[t-1],0) + k_gamma*u[t]
              u~[t] = h[t] + x[t];  o[t] = sign(u~) if |u~| >= v_th
ctsn_event    as ctsn_static but
              h[t] = k_alpha*h[t-1] + k_beta*max(u[t],0) + k_gamma*min(u[t],0)
binary_lif_sub u[t] = tau * u[t-1] - v_th * o[t-1] + x[t]
              o[t] = 1 if u >= v_th else 0            (reset by subtraction; IF when tau = 1)
cuba_lif      i[t] = k_syn * i[t-1] + x[t]            (current-based: synaptic state i)
              u[t] = tau * u[t-1] * (1 - o[t-1]) + i[t];  o[t] = 1 if u >= v_th else 0
cuba_lif_sub  as cuba_lif with u[t] = tau * u[t-1] - v_th * o[t-1] + i[t]

``k_*`` are the logistic sigmoids of the trained alpha, beta, gamma, stored
already evaluated so that the engine and PyTorch use the very same constants.
``x[t]`` is the synaptic input plus the folded bias. Only ``x`` travels the
synaptic path (additions only); the products above are neuron-update
operations by per-population constants and are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass

LIF_TERNARY = 0
LIF_BINARY = 1
CTSN_STATIC = 2
CTSN_EVENT = 3
LIF_BINARY_SUB = 4
CUBA_LIF = 5
CUBA_LIF_SUB = 6


@dataclass(frozen=True)
class NeuronModel:
    name: str
    code: int
    params: tuple[str, ...]
    defaults: dict
    ternary: bool          # can emit -1 spikes
    has_complement: bool   # keeps the CTSN complemental state h
    mults_per_update: int  # multiplications by constants in one neuron update
    adds_per_update: int   # additions in one neuron update (bias/drive, h terms)
    doc: str

    def check_params(self, params: dict) -> None:
        missing = [p for p in self.params if p not in params]
        if missing:
            raise ValueError(f"neuron model {self.name!r} misses constants {', '.join(missing)}")
        unknown = [p for p in params if p not in self.params]
        if unknown:
            raise ValueError(f"neuron model {self.name!r} has no constants {', '.join(unknown)}")
        for k, v in params.items():
            if not (v == v) or v in (float("inf"), float("-inf")):
                raise ValueError(f"constant {k} is not finite")
        if params["v_threshold"] <= 0:
            raise ValueError(f"v_threshold must be > 0, got {params['v_threshold']}")

    def vector(self, params: dict) -> list[float]:
        """Constants in the fixed order the engine expects:
        [tau, v_threshold, k_alpha, k_beta, k_gamma] (zeros where unused; the CUBA models' k_syn takes
        k_alpha's place)."""
        return [float(params.get(k, params.get("k_syn", 0.0) if k == "k_alpha" else 0.0))
                for k in ("tau", "v_threshold", "k_alpha", "k_beta", "k_gamma")]


_LIF = ("tau", "v_threshold")
_CTSN = ("tau", "v_threshold", "k_alpha", "k_beta", "k_gamma")
_CUBA = ("tau", "v_threshold", "k_syn")

NEURON_MODELS: dict[str, NeuronModel] = {
    m.name: m
    for m in (
        NeuronModel("ternary_lif", LIF_TERNARY, _LIF, {"tau": 0.25, "v_threshold": 0.5}, True, False, 1, 1,
                    "ternary LIF, hard reset on either sign (Guo et al. 2024)"),
        NeuronModel("binary_lif", LIF_BINARY, _LIF, {"tau": 0.25, "v_threshold": 0.5}, False, False, 1, 1,
                    "binary {0,1} LIF with hard reset, the baseline"),
        NeuronModel("ctsn_static", CTSN_STATIC, _CTSN,
                    {"tau": 0.25, "v_threshold": 0.5, "k_alpha": 0.5, "k_beta": 0.5, "k_gamma": 0.5}, True, True, 3, 3,
                    "complemented ternary neuron, static-image form (Zhang et al. 2026)"),
        NeuronModel("ctsn_event", CTSN_EVENT, _CTSN,
                    {"tau": 0.25, "v_threshold": 0.5, "k_alpha": 0.5, "k_beta": 0.5, "k_gamma": 0.5}, True, True, 3, 3,
                    "complemented ternary neuron, event-data form (Zhang et al. 2026)"),
        # the NIR models (evsim/bridge/nir.py): snnTorch's Leaky/Synaptic reset mechanisms, NIR's IF and CubaLIF.
        # cuba_*: h holds the membrane's own part (leak and reset), so that i[t] = u[t] - h.
        NeuronModel("binary_lif_sub", LIF_BINARY_SUB, _LIF, {"tau": 0.9, "v_threshold": 1.0}, False, False, 1, 2,
                    "binary {0,1} LIF with reset by subtraction (snnTorch's default); IF when tau = 1"),
        NeuronModel("cuba_lif", CUBA_LIF, _CUBA, {"tau": 0.9, "v_threshold": 1.0, "k_syn": 0.8}, False, True, 2, 3,
                    "current-based binary LIF (NIR CubaLIF, snnTorch Synaptic), reset to zero"),
        NeuronModel("cuba_lif_sub", CUBA_LIF_SUB, _CUBA, {"tau": 0.9, "v_threshold": 1.0, "k_syn": 0.8}, False, True,
                    2, 4, "current-based binary LIF with reset by subtraction (snnTorch Synaptic's default)"),
    )
}


def neuron_model(name: str) -> NeuronModel:
    try:
        return NEURON_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown neuron model {name!r} (known: {', '.join(NEURON_MODELS)})") from None

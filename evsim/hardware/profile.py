"""Hardware profiles: a chip's published limits and costs, from a small TOML file.

A profile is data, not code, so that anyone can check each number against its source (written beside it
in the file) and describe a chip of their own. The built-in ones live in ``evsim/hardware/profiles/``;
``--hardware`` takes one of their names or a path to a ``.toml`` file. A profile file is untrusted input:
it is opened as a regular file only, refused above :data:`MAX_PROFILE_BYTES`, and every key is checked
for its type and bounds; anything wrong is one :class:`ProfileError` line naming the file and the key.

A number a source does not publish is simply absent (and listed under ``unknown``): the mapping then does
not check that limit, and the traffic report leaves the corresponding energy or latency out, saying so.
The schema is in docs/HARDWARE.md.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from importlib import resources

from ..errors import EvsimError

try:                                   # the standard library from Python 3.11; the same parser before
    import tomllib
except ImportError:                    # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

MAX_PROFILE_BYTES = 64 * 1024
BUILTIN_PROFILES = ("loihi", "loihi2", "truenorth", "spinnaker2", "dynapcnn")
WEIGHT_STORAGE = ("per_synapse", "shared_kernel", "crossbar")
NEGATIVE_SPIKES = ("graded", "mirror")
_MAX_COUNT = 10**12          # any per-core or per-chip count
_MAX_CORES = 1 << 20


class ProfileError(EvsimError):
    """A hardware profile that cannot be used as given."""


# key -> (kind, required); kinds: "int", "ints" (an int, or one per core), "float", "bool", "str", "strs", a tuple of choices
_SCHEMA: dict[str, tuple] = {
    "name": ("str", True),
    "chip": ("str", True),
    "sources": ("strs", True),
    "notes": ("str", False),
    "unknown": ("strs", False),
    "cores": ("int", True),
    "neurons_per_core": ("ints", False),
    "synaptic_memory_bits_per_core": ("ints", False),
    "synaptic_memory_weights_per_core": ("ints", False),
    "weight_storage": (WEIGHT_STORAGE, True),
    "split_populations": ("bool", False),
    "fan_in_per_core": ("int", False),
    "fan_out_per_core": ("int", False),
    "fan_out_cores_per_neuron": ("int", False),
    "weight_values_per_neuron": ("int", False),
    "neurons_per_chip": ("int", False),
    "synapses_per_chip": ("int", False),
    "weight_bits": ("int", False),
    "membrane_bits": ("int", False),
    "signed_spikes": ("bool", True),
    "negative_spikes": (NEGATIVE_SPIKES, False),
    "energy_synaptic_op_pj": ("float", False),
    "energy_neuron_update_pj": ("float", False),
    "energy_packet_pj": ("float", False),
    "synaptic_op_ns": ("float", False),
    "neuron_update_ns": ("float", False),
}
_BITS = ("weight_bits", "membrane_bits")
_POSITIVE_TIMES = ("synaptic_op_ns", "neuron_update_ns")


@dataclass(frozen=True)
class HardwareProfile:
    """One chip. Limits that are ``None`` are not published (not checked); see docs/HARDWARE.md."""

    name: str
    chip: str
    sources: tuple[str, ...]
    cores: int
    weight_storage: str
    signed_spikes: bool
    negative_spikes: str | None = None        # "graded" or "mirror" when spikes are unsigned
    neurons_per_core: tuple[int, ...] | None = None             # one per core
    synaptic_memory_bits_per_core: tuple[int, ...] | None = None
    synaptic_memory_weights_per_core: tuple[int, ...] | None = None
    split_populations: bool = True
    fan_in_per_core: int | None = None          # distinct input axons (source neurons) into a core
    fan_out_per_core: int | None = None         # (neuron, destination core) edges out of a core
    fan_out_cores_per_neuron: int | None = None  # distinct destination cores of one neuron
    weight_values_per_neuron: int | None = None  # distinct weight values one neuron can use (TrueNorth's axon types)
    neurons_per_chip: int | None = None
    synapses_per_chip: int | None = None
    weight_bits: int | None = None
    membrane_bits: int | None = None
    energy_synaptic_op_pj: float | None = None
    energy_neuron_update_pj: float | None = None
    energy_packet_pj: float | None = None
    synaptic_op_ns: float | None = None
    neuron_update_ns: float | None = None
    unknown: tuple[str, ...] = ()
    notes: str = ""
    origin: str = ""                           # the built-in name or the file it came from

    @property
    def mirror(self) -> bool:
        """-1 spikes travel as spikes of a mirrored OFF copy of the population (doubling it)."""
        return not self.signed_spikes and self.negative_spikes == "mirror"

    def core_limit(self, key: str, core: int) -> int | None:
        """The per-core limit ``key`` for core ``core`` (cores beyond the chip's repeat the last one's)."""
        values = getattr(self, key)
        if values is None:
            return None
        return values[min(core, len(values) - 1)]

    @property
    def heterogeneous(self) -> bool:
        return any(v is not None and len(set(v)) > 1
                   for v in (self.neurons_per_core, self.synaptic_memory_bits_per_core,
                             self.synaptic_memory_weights_per_core))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in _SCHEMA if k not in ("sources", "unknown", "notes")}
        for k in ("neurons_per_core", "synaptic_memory_bits_per_core", "synaptic_memory_weights_per_core"):
            v = d[k]
            d[k] = None if v is None else (v[0] if len(set(v)) == 1 else list(v))
        d.update(sources=list(self.sources), unknown=list(self.unknown), notes=self.notes, origin=self.origin)
        return d


def _check_value(key: str, kind, value, where: str, cores: int | None):
    def bad(what: str):
        raise ProfileError(f"{where}: {key} {what}")

    if isinstance(kind, tuple):
        if not isinstance(value, str) or value not in kind:
            bad(f"must be one of {', '.join(kind)}, got {value!r}"[:300])
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            bad(f"must be true or false, got {type(value).__name__}")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > 2000:
            bad("must be a string of at most 2000 characters")
        if key == "name" and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            bad(f"must be 1-64 letters, digits, '_', '.' or '-', got {value[:80]!r}")
        return value
    if kind == "strs":
        if (not isinstance(value, list) or len(value) > 100
                or not all(isinstance(s, str) and 0 < len(s) <= 1000 for s in value)):
            bad("must be a list of at most 100 non-empty strings of at most 1000 characters")
        if key == "sources" and not value:
            bad("must name at least one public source")
        return tuple(value)
    if kind in ("int", "ints"):
        if kind == "ints" and isinstance(value, list):
            if cores is None or len(value) != cores:
                bad(f"as a list must give one value per core ({cores}), got {len(value)}")
            return tuple(_check_value(key, "int", v, where, cores) for v in value)
        if isinstance(value, bool) or not isinstance(value, int):
            bad(f"must be an integer, got {type(value).__name__}")
        top = _MAX_CORES if key == "cores" else 64 if key in _BITS else _MAX_COUNT
        if not 1 <= value <= top:
            bad(f"must be between 1 and {top}, got {value}")
        return (value,) if kind == "ints" else value
    # float
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        bad(f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > 1e12 or (key in _POSITIVE_TIMES and value == 0):
        bad(f"must be a finite number in {'(0' if key in _POSITIVE_TIMES else '[0'}, 1e12], got {value}")
    return value


def parse_profile(text: str, where: str) -> HardwareProfile:
    """Parse and check one profile's TOML text; ``where`` names it in every error."""
    if tomllib is None:
        raise ProfileError("hardware profiles need Python 3.11 or later (tomllib), or: pip install tomli")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{where}: not valid TOML ({str(e).splitlines()[0][:200]})") from None
    except RecursionError:
        raise ProfileError(f"{where}: not valid TOML (nested too deeply)") from None
    unknown_keys = sorted(set(doc) - set(_SCHEMA))
    if unknown_keys:
        shown = ", ".join(repr(k[:40]) for k in unknown_keys[:5])
        raise ProfileError(f"{where}: unknown key {shown} (known: {', '.join(_SCHEMA)})")
    missing = [k for k, (_, req) in _SCHEMA.items() if req and k not in doc]
    if missing:
        raise ProfileError(f"{where}: missing required key {', '.join(missing)}")
    cores = _check_value("cores", "int", doc["cores"], where, None)
    values = {k: _check_value(k, _SCHEMA[k][0], v, where, cores) for k, v in doc.items()}
    if values["signed_spikes"] and "negative_spikes" in values:
        raise ProfileError(f"{where}: negative_spikes only applies when signed_spikes = false")
    if not values["signed_spikes"] and "negative_spikes" not in values:
        raise ProfileError(f"{where}: signed_spikes = false needs negative_spikes = \"graded\" or \"mirror\" "
                           f"(how a -1 spike travels)")
    for k in values.get("unknown", ()):
        if k not in _SCHEMA:
            raise ProfileError(f"{where}: unknown lists {k[:40]!r}, which is not a profile key")
        if k in values:
            raise ProfileError(f"{where}: {k} is both given and listed as unknown")
    if values["weight_storage"] == "shared_kernel" and "synaptic_memory_bits_per_core" in values:
        raise ProfileError(f"{where}: a shared_kernel chip gives its memory as synaptic_memory_weights_per_core")
    return HardwareProfile(**values, origin=where)


def load_profile(spec: str) -> HardwareProfile:
    """A built-in profile by name (``loihi2``) or a user's profile file (``path/to/chip.toml``)."""
    from ..files import open_regular
    if not isinstance(spec, str) or not spec:
        raise ProfileError("--hardware needs a built-in profile name or a .toml file")
    if spec in BUILTIN_PROFILES:
        text = resources.files(__package__).joinpath("profiles", f"{spec}.toml").read_text(encoding="utf-8")
        return parse_profile(text, f"hardware profile {spec}")
    if os.sep not in spec and not spec.lower().endswith(".toml") and not os.path.lexists(spec):
        raise ProfileError(f"unknown hardware profile {spec[:80]!r} (built-in: {', '.join(BUILTIN_PROFILES)}; "
                           f"or a path to a .toml profile file)")
    where = f"hardware profile {spec}"
    with open_regular(spec, "hardware profile") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_PROFILE_BYTES:
            raise ProfileError(f"{where}: {size} bytes, over the {MAX_PROFILE_BYTES}-byte limit for a profile")
        raw = f.read(MAX_PROFILE_BYTES + 1)
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{where}: over the {MAX_PROFILE_BYTES}-byte limit for a profile")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{where}: not UTF-8 text") from None
    return parse_profile(text, where)

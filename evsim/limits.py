"""The limits that keep a hostile file from taking the machine: memory, timesteps, object counts.

A network file declares its own sizes, so every size is checked against these
limits *before* anything is allocated or looped over (docs/FORMAT.md, "Checks
on reading"). Each limit has a default and an environment variable, read at
call time so that the command line and the Python API share them:

* ``EVSIM_MAX_BYTES`` (default 4 GiB): the arrays a file declares (weights and
  biases as float64, 32 bytes of engine state per neuron for one sample), and
  each array the compiler builds;
* ``EVSIM_MAX_TIMESTEPS`` (default 10 000): a network's ``timesteps``;
* ``EVSIM_MAX_OBJECTS`` (default 2 000): populations, and projections, in one file (HDF5
  costs about half a millisecond a group, so a file at the limit reads in about 2 s).

``EVSIM_MAX_BYTES`` takes a number of bytes with an optional binary suffix
(``K``, ``M``, ``G``, ``T``: ``512M``, ``16G``). The Python API also takes a
:class:`Limits` (``read_network(path, limits=Limits(max_bytes=2**34))``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import EvsimError, LimitError

DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_TIMESTEPS = 10_000
DEFAULT_MAX_OBJECTS = 2_000
# Engine state per neuron and sample: drive, membrane and complement (8 bytes each in float64),
# the spike frame and event sign (1 each) and the event index (4), rounded up.
NEURON_BYTES = 32

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def human_bytes(n: float) -> str:
    """``12.3 GiB``: sizes in messages, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _env_int(name: str, default: int, suffixes: bool = False) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?" if suffixes else r"(\d+)()", text, re.IGNORECASE)
    value = int(m.group(1)) * _SUFFIX[m.group(2).upper()] if m else 0
    if value < 1:
        unit = " (a number of bytes, optionally with K, M, G or T)" if suffixes else ""
        raise EvsimError(f"{name} must be a positive integer{unit}, got {text!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """What one network may ask for; see the module docstring for the defaults."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_timesteps: int = DEFAULT_MAX_TIMESTEPS
    max_objects: int = DEFAULT_MAX_OBJECTS

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, overridden by ``EVSIM_MAX_BYTES``, ``EVSIM_MAX_TIMESTEPS``, ``EVSIM_MAX_OBJECTS``."""
        return cls(_env_int("EVSIM_MAX_BYTES", DEFAULT_MAX_BYTES, suffixes=True),
                   _env_int("EVSIM_MAX_TIMESTEPS", DEFAULT_MAX_TIMESTEPS),
                   _env_int("EVSIM_MAX_OBJECTS", DEFAULT_MAX_OBJECTS))

    def check_bytes(self, what: str, nbytes: int) -> None:
        """Refuse ``what`` (e.g. "population 'x' shape (..)") when it needs more than the memory budget."""
        if nbytes > self.max_bytes:
            raise LimitError(f"{what} needs {human_bytes(nbytes)}, over the {human_bytes(self.max_bytes)} memory "
                             f"budget (raise it with EVSIM_MAX_BYTES)")

"""The chip in the loop: hardware profiles, mapping a network onto cores, spike traffic between them.

* :mod:`.profile`: a chip's published limits and costs, read from a TOML file (built-in or the user's),
  every field checked like any untrusted input;
* :mod:`.mapping`: a greedy partitioner that lays every population over cores within those limits and
  says whether the network fits and, if not, which resource runs out first and by how much;
* :mod:`.traffic`: packets and synaptic operations per core, per timestep, counted from the spikes a
  run recorded, and the latency and energy the profile's numbers give for them.

docs/HARDWARE.md describes the schema, the mapping rules and the sources of every built-in number.
"""

from .profile import BUILTIN_PROFILES, HardwareProfile, load_profile  # noqa: F401

"""evsim: an event-driven CPU emulator of neuromorphic hardware for ternary spiking networks.

Data flows one way: PyTorch model -> fold (:mod:`evsim.bridge`) -> HDF5
(:mod:`evsim.format`) -> graph (:mod:`evsim.graph`) -> compiled network
(:mod:`evsim.compiler`) -> engine (:mod:`evsim.engine`, kernels in
:mod:`evsim.kernels`) -> reports (:mod:`evsim.reports`). The simulator side
imports no PyTorch.
"""

from .compiler import compile_network
from .engine import run, simulate
from .errors import EvsimError, FormatError, InputError, LimitError, NetworkError
from .format import read_network, write_network
from .graph import Network, Population, Projection

__version__ = "0.1.0"
__all__ = ["compile_network", "run", "simulate", "read_network", "write_network", "Network", "Population",
           "Projection", "EvsimError", "FormatError", "InputError", "LimitError", "NetworkError", "__version__"]

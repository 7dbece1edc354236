"""Exceptions that carry a one-line message meant for the user.

The command line turns any :class:`EvsimError` into that line on stderr and
a non-zero exit code; everything else is a bug and keeps its traceback.
"""


class EvsimError(ValueError):
    """Base class: the message names the problem in one line."""


class NetworkError(EvsimError):
    """A network description that cannot be simulated."""


class FormatError(EvsimError):
    """A file that is not a readable evsim network."""


class InputError(EvsimError):
    """An input sample that does not fit the network."""


class LimitError(EvsimError):
    """A file or request that asks for more memory, timesteps or objects than the limits allow.

    The limits (see :mod:`evsim.limits`) are there so that a hostile or corrupted file is refused
    before evsim allocates or loops; the message says what was asked and how to raise the limit.
    """

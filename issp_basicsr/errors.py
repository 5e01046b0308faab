"""Every error that means bad input, in one place: ``basicsr`` prints them as one line, without a traceback.

Nothing here imports anything, so the pruning core can use these without pulling in BasicSR.
"""


class InputError(ValueError):
    """Bad input from the user (an option, a file, a saved state); the message names the key or the file."""


class SparsityConfigError(InputError):
    """A bad value in the sparsity block; the message names the key."""


class SparsityStateError(InputError):
    """A saved sparsifier state that does not fit this model or these options."""


class OptionError(InputError):
    """A bad option value or a missing input file; the message names the key or the path."""


class CompressedFormatError(InputError):
    """A file that is not a readable (compressed or plain) checkpoint; the message names the file."""


__all__ = ['InputError', 'SparsityConfigError', 'SparsityStateError', 'OptionError', 'CompressedFormatError']

"""Every error that means bad input, in one place: ``basicsr`` prints them as one line, without a traceback.

Nothing here imports anything but the standard library, so the pruning core can use these without BasicSR.
"""
import contextlib


class InputError(ValueError):
    """Bad input from the user (an option, a file, a saved state); the message names the key or the file."""


class SparsityError(InputError):
    """An error of the pruning core. ``key`` is the sparsity key the message starts with (``ratio``,
    ``ratios:conv``), or None; an adapter that reads the keys from a larger file puts its path in front
    (:func:`with_prefix`), so the core never needs to know where its keys were written."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


class SparsityConfigError(SparsityError):
    """A bad value in the sparsity block; the message names the key."""


class SparsityStateError(SparsityError):
    """A saved sparsifier state that does not fit this model or these options."""


def with_prefix(error, prefix):
    """The same error with ``prefix`` (``train:sparsity``) in front of its key: ``train:sparsity:ratio must ...``."""
    separator = ':' if error.key else ': '
    return type(error)(f'{prefix}{separator}{error}', error.key)


@contextlib.contextmanager
def keys_under(prefix):
    """Re-raise the core's errors of the block with the block's place in the option file in front of the key."""
    try:
        yield
    except SparsityError as error:
        if str(error).startswith(f'{prefix}:'):
            raise
        raise with_prefix(error, prefix) from None


class OptionError(InputError):
    """A bad option value or a missing input file; the message names the key or the path."""


class CompressedFormatError(InputError):
    """A file that is not a readable (compressed or plain) checkpoint; the message names the file."""


__all__ = ['InputError', 'SparsityError', 'SparsityConfigError', 'SparsityStateError', 'OptionError',
           'CompressedFormatError', 'with_prefix', 'keys_under']

"""Errors a user can fix: bad input, a missing file or model, an optional extra not installed.

Everything the library raises for such a cause derives from ``AltCLIPError``; the command prints those as one
line, and the server answers them with a 4xx status. Any other exception is a bug: the command shows its
traceback, and the server answers 500 and logs it. Each class also derives from the built-in exception of the
same meaning, so ``except ValueError`` keeps working for callers who used it.

Floor: imports nothing of altclip.
"""

from __future__ import annotations


class AltCLIPError(Exception):
    """The base: an error whose message says what to change."""


class InputError(AltCLIPError, ValueError):
    """An argument, a file's contents or a request that is not what it must be (HTTP 400)."""


class MissingFileError(AltCLIPError, FileNotFoundError):
    """A file or folder the user named that is not there, or lacks what it must hold."""


class NotFoundError(AltCLIPError, LookupError):
    """A thing asked for by name or id that does not exist: an index, an image id (HTTP 404)."""


class MissingExtraError(AltCLIPError, ImportError):
    """An optional dependency (an extra such as ``altclip[serve]``) that is not installed."""

"""One base for the errors a user can fix; each also is the built-in exception of the same meaning."""

from __future__ import annotations

import pytest

from altclip.errors import AltCLIPError, InputError, MissingExtraError, MissingFileError, NotFoundError
from altclip.evaluate.datasets import BenchmarkError
from altclip.processing.image import ImageLoadError
from altclip.serve.catalog import NotFound


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InputError, ValueError),
        (MissingFileError, FileNotFoundError),
        (NotFoundError, LookupError),
        (MissingExtraError, ImportError),
        (ImageLoadError, ValueError),
        (BenchmarkError, ValueError),
        (NotFound, LookupError),
    ],
)
def test_every_kind_is_an_altclip_error_and_its_builtin(error, builtin):
    assert issubclass(error, AltCLIPError) and issubclass(error, builtin)


def test_a_foreign_value_error_is_not_ours():
    """pyarrow's ArrowInvalid is a ValueError: a bug there must not pass for the user's bad input."""
    import pyarrow as pa

    assert issubclass(pa.ArrowInvalid, ValueError) and not issubclass(pa.ArrowInvalid, AltCLIPError)

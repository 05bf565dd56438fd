"""One-line messages and the exception family."""

from __future__ import annotations

import pytest

from mae.large.errors import DeviceError, InvalidArgumentError, MAEError, first_line, invalid_argument


def test_first_line_cuts_at_a_word_and_says_so() -> None:
    long = "word " * 100
    cut = first_line(long, limit=40)
    assert cut.endswith(" ...") and len(cut) <= 44 and "wor ..." not in cut
    assert first_line("one\ntwo") == "one" and first_line("  ") == "no details" and first_line("", default="") == ""


def test_argument_errors_are_value_errors_that_name_the_argument() -> None:
    error = invalid_argument("samples", "samples must be positive")
    assert isinstance(error, (MAEError, ValueError, InvalidArgumentError)) and error.argument == "samples"
    assert issubclass(DeviceError, ValueError) and DeviceError.argument == "device"
    with pytest.raises(ValueError, match="positive"):
        raise error

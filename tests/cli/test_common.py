"""The CLI's spelling of library messages: API arguments become flags."""

from __future__ import annotations

import pytest

from cli.errors import with_flag


@pytest.mark.parametrize(("message", "argument", "expected"), [
    ("or pass allow_random_decoder=True to draw it anyway", "allow_random_decoder",
     "or pass --allow-random-decoder to draw it anyway"),
    ("use device='cpu' or 'auto'", "device", "use --device cpu or 'auto'"),
    ("raise the limit with max_patches=65536 if", "max_patches", "raise the limit with --max-patches 65536 if"),
    ("samples must be a positive integer, got 0", "samples", "samples must be a positive integer, got 0 (command line: "
                                                             "--samples)"),
    ("no argument here", None, "no argument here"),
    ("an argument the CLI has no flag for", "imgs", "an argument the CLI has no flag for"),
])
def test_api_arguments_become_flags(message, argument, expected) -> None:
    assert with_flag(message, argument) == expected

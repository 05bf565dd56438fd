"""JSON from outside files (a model folder's config.json, a shard index, a safetensors header, a run's log), parsed
with bounds: every failure is one short reason in words that never quotes the text.

`parse_json` raises `JSONProblem` (a `ValueError`) saying what was wrong: not UTF-8, not JSON at line L column C,
nested deeper than `max_depth` levels (the standard parser would raise `RecursionError` on a deep enough file), a
number of more than `MAX_DIGITS` digits, NaN or Infinity (unless `allow_nan`), a string with an unpaired surrogate
escape. The caller names the file and what it should have been; its schema checks come after. Torch-free.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # far beyond any file this project reads (a config.json nests 3 levels, a header 3)
MAX_DIGITS = 1000  # a whole number longer than this is refused as text (Python's own limit is 4300)


class JSONProblem(ValueError):
    """JSON text that cannot be used: the message is a short reason, without the text itself."""


def parse_json(data: bytes | str, *, max_depth: int = MAX_DEPTH, allow_nan: bool = False) -> Any:
    """`data` (UTF-8 bytes or text) as a Python value; `JSONProblem` when it is not JSON within the bounds above."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONProblem(f"not UTF-8 text (byte {exc.start} is not)") from None
    else:
        text = data

    def constant(name: str) -> float:  # NaN, Infinity, -Infinity: Python's json writes them, JSON has none
        if not allow_nan:
            raise JSONProblem(f"{name.lstrip('-')} is not a JSON number")
        return float(name)

    def number(literal: str) -> float:
        value = float(literal)
        if not allow_nan and value in (float("inf"), float("-inf")):
            raise JSONProblem("a number beyond the range of a 64-bit float")
        return value

    def whole(literal: str) -> int:
        if len(literal) > MAX_DIGITS:
            raise JSONProblem(f"a whole number of more than {MAX_DIGITS} digits")
        return int(literal)

    try:
        value = json.loads(text, parse_constant=constant, parse_float=number, parse_int=whole)
    except JSONProblem:
        raise
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise JSONProblem(f"nested more than {max_depth} levels deep") from None
    except ValueError:  # pragma: no cover - the hooks above raise JSONProblem; json itself raises JSONDecodeError
        raise JSONProblem("not valid JSON") from None
    _check_nesting(value, max_depth)
    return value


def _check_nesting(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` (walked without recursion) and strings that cannot be written
    as UTF-8 (an unpaired surrogate escape such as \\ud800)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONProblem("a string with an unpaired surrogate escape (\\ud800 to \\udfff)") from None
            continue
        if isinstance(item, dict):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= max_depth:
            raise JSONProblem(f"nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)

"""The JSON readers of the loading chain under generated input: a model folder's `config.json` and shard index
(`checkpoints.folders`, then `load.check_folder_config` and `models.target`), and the safetensors header
(`checkpoints.read`). Valid-looking files, random JSON, deep nesting, wrong types, huge numbers, NaN, non-UTF-8 bytes
and byte-level mutations of real files: each read gives a result or one `MAEError` (`CheckpointError`) line naming
the file, never another exception (RecursionError, TypeError, OverflowError, a raw json or torch message)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mae.large.checkpoints.folders import open_folder
from mae.large.checkpoints.load import check_folder_config
from mae.large.checkpoints.read import SAFETENSORS_DTYPES, CheckpointData, read_checkpoint
from mae.large.errors import MAEError
from mae.large.models.target import known_target
from tests.helpers import HF_FIXTURES, tiny_config

# MAE_FUZZ_SCALE=20 runs twenty times the examples (a longer hunt than the suite's few seconds).
SCALE = max(1, int(os.environ.get("MAE_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=500 * SCALE, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
_names = itertools.count()

# ---- generated JSON ---------------------------------------------------------------------------------------
HUGE = st.one_of(st.integers(-(10**400), 10**400), st.integers(2**63 - 2, 2**64 + 2), st.integers(-3, 3))
SCALARS = st.one_of(st.none(), st.booleans(), HUGE, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def deep(depth: int, opener: str = "[") -> str:
    closer = {"[": "]", "{\"a\":": "}"}[opener]
    return opener * depth + "0" + closer * depth


DEEP_TEXT = st.builds(deep, st.sampled_from([1, 63, 64, 65, 500, 5000, 100_000]), st.sampled_from(["[", "{\"a\":"]))


def encoded(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN / Infinity as Python writes them (not JSON)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with a few bytes replaced, inserted or cut: damage as a disk or a bad download makes it."""
    @st.composite
    def edit(draw) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, max(0, len(out) - 1)))
            action = draw(st.sampled_from(["replace", "insert", "cut"]))
            byte = draw(st.sampled_from([*b'{}[]",:0123456789-eE.tfn\\ ', 0x00, 0x80, 0xFF]))
            if action == "replace" and out:
                out[at] = byte
            elif action == "insert":
                out.insert(at, byte)
            elif out:
                del out[at:at + draw(st.integers(1, 40))]
        return bytes(out)

    return edit()


def check_message(error: MAEError, path: Path) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) < 2000, message
    assert str(path) in message, (path, message)
    for raw in ("Traceback", "Expecting ", "RecursionError", "line 1 column", "Errno"):
        assert raw not in message, message


# ---- config.json --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    for name in ("pretraining-safetensors", "pretraining-sharded"):
        shutil.copytree(HF_FIXTURES / "tf4" / name, root / name)
    return {"single": root / "pretraining-safetensors", "sharded": root / "pretraining-sharded"}


@pytest.fixture(scope="module")
def single_data(folders) -> CheckpointData:
    return read_checkpoint(folders["single"])


def valid_config() -> dict:
    return json.loads((HF_FIXTURES / "tf4" / "pretraining-safetensors" / "config.json").read_text())


CONFIG_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                 "num_channels", "image_size", "decoder_hidden_size", "layer_norm_eps", "hidden_act", "norm_pix_loss",
                 "transformers_version", "decoder_num_attention_heads"]


@st.composite
def config_texts(draw) -> bytes:
    """A config.json: the real one with fields given generated values, random JSON, deep nesting, or damage."""
    kind = draw(st.sampled_from(["fields", "fields", "value", "deep", "bytes", "mutated"]))
    if kind == "fields":
        config = valid_config()
        for name in draw(st.lists(st.sampled_from(CONFIG_FIELDS), min_size=1, max_size=4)):
            config[name] = draw(st.one_of(VALUES, st.integers(1, 64), st.just(config.get(name))))
        return encoded(config)
    if kind == "value":
        return encoded(draw(VALUES))
    if kind == "deep":
        return draw(DEEP_TEXT).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return draw(mutated(encoded(valid_config())))


def read_config(folder: Path, data: CheckpointData) -> None:
    """What the loaders do with a folder's config.json: open the folder, check the config, read the target."""
    try:
        found = open_folder(folder)
        check_folder_config(dataclasses.replace(data, folder_config=found.config), tiny_config())
        known_target(folder, "full")
    except MAEError as exc:
        check_message(exc, folder)


@FUZZ
@given(text=config_texts())
def test_a_config_json_is_read_or_refused_in_one_line(folders, single_data, text: bytes) -> None:
    (folders["single"] / "config.json").write_bytes(text)
    read_config(folders["single"], single_data)


# ---- the shard index ----------------------------------------------------------------------------------
def valid_index() -> dict:
    return json.loads((HF_FIXTURES / "tf4" / "pretraining-sharded" / "model.safetensors.index.json").read_text())


@st.composite
def index_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["map", "map", "value", "deep", "bytes", "mutated"]))
    if kind == "map":
        index = valid_index()
        weight_map = index["weight_map"]
        for _ in range(draw(st.integers(1, 3))):
            choice = draw(st.sampled_from(["shard", "name", "drop", "whole", "metadata"]))
            key = draw(st.sampled_from(sorted(weight_map))) if weight_map else "x"
            if choice == "shard":
                weight_map[key] = draw(st.one_of(VALUES, st.sampled_from(["../x", "", ".", "a/b", "x\x00y", "é" * 200,
                                                                          "model-00001-of-00002.safetensors"])))
            elif choice == "name":
                weight_map[draw(st.text(max_size=10))] = "model-00001-of-00002.safetensors"
            elif choice == "drop":
                weight_map.pop(key, None)
            elif choice == "whole":
                index["weight_map"] = draw(VALUES)
                break
            else:
                index["metadata"] = draw(VALUES)
        return encoded(index)
    if kind == "value":
        return encoded(draw(VALUES))
    if kind == "deep":
        return ('{"weight_map": ' + draw(DEEP_TEXT) + "}").encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return draw(mutated(encoded(valid_index())))


@FUZZ
@given(text=index_texts())
def test_a_shard_index_is_read_or_refused_in_one_line(folders, text: bytes) -> None:
    folder = folders["sharded"]
    (folder / "model.safetensors.index.json").write_bytes(text)
    try:
        data = read_checkpoint(folder)
    except MAEError as exc:
        check_message(exc, folder)
    else:
        assert data.state_dict and data.layout == "hf-folder"


# ---- safetensors headers ------------------------------------------------------------------------------
@st.composite
def tensor_files(draw) -> tuple[bytes, bytes]:
    """(header, data) of a safetensors file: mostly well formed, with one field given a generated value."""
    count = draw(st.integers(0, 4))
    header: dict = {}
    offset = 0
    for i in range(count):
        dtype = draw(st.sampled_from(sorted(SAFETENSORS_DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), VALUES))
    if header and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(header)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "drop"]))
        if field == "entry":
            header[name] = draw(VALUES)
        elif field == "drop" and isinstance(header[name], dict):
            header[name].pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif isinstance(header[name], dict):
            header[name][field] = draw(st.one_of(VALUES, st.lists(HUGE, max_size=3),
                                                 st.sampled_from([["F32"], "Q32", "f32", [0, 4, 8], [4, 0]])))
    data = bytes(offset + draw(st.sampled_from([0, 0, 0, 1, -1])) if offset else draw(st.sampled_from([0, 0, 3])))
    return encoded(header), data


def safetensors_bytes(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


@st.composite
def safetensors_files(draw) -> bytes:
    kind = draw(st.sampled_from(["tensors", "tensors", "tensors", "value", "deep", "bytes", "length", "mutated"]))
    if kind == "tensors":
        return safetensors_bytes(*draw(tensor_files()))
    if kind == "value":
        return safetensors_bytes(b"{" + encoded(draw(VALUES)), b"")  # `{` first: sniffed as safetensors
    if kind == "deep":
        return safetensors_bytes(b'{"a":' + draw(DEEP_TEXT).encode() + b"}", b"")
    if kind == "bytes":
        return safetensors_bytes(b"{" + draw(st.binary(max_size=64)), b"")
    if kind == "length":
        header, data = draw(tensor_files())
        return safetensors_bytes(header, data, draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 200))))
    return draw(mutated(safetensors_bytes(*draw(tensor_files()))))


@FUZZ
@given(content=safetensors_files())
def test_a_safetensors_header_is_read_or_refused_in_one_line(tmp_path_factory, content: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / f"fuzz-{next(_names)}.safetensors"  # a new name: no map of an old one
    path.write_bytes(content)
    try:
        data = read_checkpoint(path)
    except MAEError as exc:
        check_message(exc, path)
    else:
        assert all(isinstance(t, torch.Tensor) for t in data.state_dict.values())
        sizes = sum(t.numel() * t.element_size() for t in data.state_dict.values())
        assert 8 + sizes <= len(content)
    finally:
        del path

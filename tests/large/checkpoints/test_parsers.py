"""Outside JSON and pickles behind one rule: a parse failure is one `CheckpointError` naming the path and what the file
should have been (no RecursionError, no raw library text, never the file's bytes), and the schema is checked before use.

Each case here is one a hostile run found: a 100,000-deep JSON in a folder's config.json, its shard index and a
safetensors header; a dtype that is a list; a size that is a string or 300 digits (refused by the loaders, and by
`inspect`'s verdict as well as by its `loadable`); a run checkpoint that carries code (`train.state`)."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT
from mae.large.checkpoints.read import read_checkpoint
from mae.large.errors import CheckpointError, IncompatibleCheckpointError, UnsafeCheckpointError
from mae.large.jobs.inspect import summarize
from mae.large.utils.jsontext import JSONProblem, parse_json
from tests.helpers import HF_FIXTURES, tiny_config

DEEP = "[" * 100_000 + "]" * 100_000  # deep enough for json's RecursionError


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text and "Expecting" not in text, text
    return text


def folder_copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(HF_FIXTURES / "tf4" / name, target)
    return target


def safetensors_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


# ---- the bounded JSON reader ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "reason"), [
    (DEEP, "nested more than 64 levels deep"),
    ("[" * 70 + "]" * 70, "nested more than 64 levels deep"),  # under the recursion limit, over the bound
    (b"\xff\xfe{}", "not UTF-8 text"),
    ("{\"a\": NaN}", "NaN is not a JSON number"),
    ("[1e400]", "beyond the range of a 64-bit float"),
    ("[" + "9" * 2000 + "]", "more than 1000 digits"),
    ("{\"a\": 1,}", "not valid JSON (line 1, column 9)"),
    ('["\\ud800"]', "unpaired surrogate"),
])
def test_bounded_json_says_why_in_words(text, reason) -> None:
    with pytest.raises(JSONProblem) as caught:
        parse_json(text)
    assert reason in one_line(caught.value)


def test_bounded_json_reads_what_json_reads() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json("[NaN]", allow_nan=True)[0] != parse_json("[NaN]", allow_nan=True)[0]


# ---- model folders ------------------------------------------------------------------------------------------
def test_a_deep_config_json_is_one_line(tmp_path) -> None:
    folder = folder_copy(tmp_path, "pretraining-safetensors")
    (folder / "config.json").write_text(DEEP)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(folder)
    message = one_line(caught.value)
    assert str(folder / "config.json") in message and "JSON object of the model's settings" in message
    assert "nested more than 64 levels" in message


def test_a_deep_shard_index_is_one_line(tmp_path) -> None:
    folder = folder_copy(tmp_path, "pretraining-sharded")
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": ' + DEEP + "}")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(folder)
    message = one_line(caught.value)
    assert str(index) in message and "shard index" in message and "nested more than 64 levels" in message


@pytest.mark.parametrize(("weight_map", "found"), [
    ([["a", "b"]], "a weight_map that is a JSON array"),
    ({"a": 3}, "a shard name that is not a string"),
    (None, "a weight_map that is a JSON null"),
])
def test_a_shard_index_of_the_wrong_types_is_refused(tmp_path, weight_map, found) -> None:
    folder = folder_copy(tmp_path, "pretraining-sharded")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=found) as caught:
        read_checkpoint(folder)
    assert str(index) in one_line(caught.value)


def test_a_shard_name_with_a_nul_is_refused(tmp_path) -> None:
    folder = folder_copy(tmp_path, "pretraining-sharded")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "x\u0000y"}}))
    with pytest.raises(CheckpointError, match="not a file name inside its folder"):
        read_checkpoint(folder)


@pytest.mark.parametrize(("value", "said"), [
    ("16", "hidden_size as a string"),
    (int("1" * 300), "hidden_size as a number of 300 digits"),
    (16.0, "hidden_size as 16.0"),
    (True, "hidden_size as true"),
    ([16], "hidden_size as an array"),
])
def test_a_size_that_is_not_a_whole_number_is_refused_by_the_loaders(tmp_path, value, said) -> None:
    folder = folder_copy(tmp_path, "pretraining-safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": value}))
    with pytest.raises(IncompatibleCheckpointError, match=said) as caught:
        MaskedAutoencoderViT.from_pretrained(folder, tiny_config())
    assert len(one_line(caught.value)) < 400
    model = MaskedAutoencoderViT(tiny_config())
    with pytest.raises(IncompatibleCheckpointError, match=said):
        model.load_pretrained(folder)


@pytest.mark.parametrize("value", ["16", int("1" * 300)])
def test_inspect_says_not_loadable_in_the_verdict_too(tmp_path, value) -> None:
    folder = folder_copy(tmp_path, "pretraining-safetensors")
    assert summarize(folder, config=tiny_config()).verdict().startswith("loadable as is")  # the folder as written
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": value}))
    summary = summarize(folder, config=tiny_config())
    assert summary.kind == "full" and not summary.loadable  # the tensors are all there; the config is not usable
    verdict = summary.verdict()
    assert "loadable as is" not in verdict and verdict.startswith("not loadable") and "hidden_size" in verdict
    assert summary.to_dict()["verdict"] == verdict


@pytest.mark.parametrize(("field", "value", "said"), [
    ("layer_norm_eps", int("9" * 400), "layer_norm_eps as a number of 400 digits"),  # float() of it overflowed
    ("layer_norm_eps", "1e-6", "layer_norm_eps as a string"),
    ("hidden_act", ["gelu"] * 3, "hidden_act=an array"),
])
def test_other_config_fields_of_the_wrong_type_are_one_line(tmp_path, field, value, said) -> None:
    folder = folder_copy(tmp_path, "pretraining-safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(IncompatibleCheckpointError, match=said) as caught:
        MaskedAutoencoderViT.from_pretrained(folder, tiny_config())
    one_line(caught.value)


def test_a_hub_ref_that_is_a_path_is_not_followed(tmp_path) -> None:
    root = tmp_path / "models--x--y"
    shutil.copytree(HF_FIXTURES / "hub" / "models--facebook--vit-mae-large", root, symlinks=True)
    snapshots = sorted((root / "snapshots").iterdir())
    (root / "refs" / "main").write_bytes(b"../../../..\xff")
    if len(snapshots) == 1:
        assert read_checkpoint(root).path == root  # the only snapshot, not the path the ref names
    else:
        with pytest.raises(CheckpointError, match="no usable refs/main"):
            read_checkpoint(root)


# ---- safetensors headers ----------------------------------------------------------------------------------
def test_a_deep_safetensors_header_is_one_line(tmp_path) -> None:
    path = safetensors_file(tmp_path / "deep.safetensors", b'{"a":' + DEEP.encode() + b"}")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = one_line(caught.value)
    assert str(path) in message and "corrupt safetensors header (nested more than 64 levels deep)" in message


@pytest.mark.parametrize(("entry", "said"), [
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "dtype that is not a type name"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape that is not a list of non-negative"),
    ({"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}, "shape that is not a list of non-negative"),
    ({"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}, "65 dimensions"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "data_offsets that are not two"),
    ({"dtype": "F32", "shape": [1], "data_offsets": {"0": 4}}, "data_offsets that are not two"),
    ({"dtype": "F32", "shape": [1]}, "data_offsets that are not two"),
    ([1, 2], "not an object of dtype, shape and data_offsets"),
])
def test_a_safetensors_header_of_the_wrong_types_is_refused(tmp_path, entry, said) -> None:
    path = safetensors_file(tmp_path / "t.safetensors", json.dumps({"a": entry}).encode(), bytes(4))
    with pytest.raises(CheckpointError, match=said) as caught:
        read_checkpoint(path)
    assert str(path) in one_line(caught.value)


def test_a_header_length_beyond_the_file_is_refused(tmp_path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')
    with pytest.raises(CheckpointError, match="its length field says 1000000000000 bytes"):
        read_checkpoint(path)


def test_a_long_unknown_dtype_is_not_echoed(tmp_path) -> None:
    header = json.dumps({"a": {"dtype": "Q" * 5000, "shape": [1], "data_offsets": [0, 4]}}).encode()
    with pytest.raises(CheckpointError, match="which this tool does not read") as caught:
        read_checkpoint(safetensors_file(tmp_path / "t.safetensors", header, bytes(4)))
    assert len(one_line(caught.value)) < 300


# ---- pickles that carry code, read by the runs ------------------------------------------------------------
class _Carrier:  # a global torch's weights_only unpickler refuses
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_a_run_checkpoint_that_carries_code_names_the_global(tmp_path) -> None:
    from mae.large.train.state import load_run_checkpoint

    path = tmp_path / "run.pth"
    torch.save({"model": {}, "hook": _Carrier()}, path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_run_checkpoint(path)
    message = one_line(caught.value)
    assert str(path) in message and "builtins.print" in message and "resume from one written by a run" in message
    assert "weights_only" not in message and "Re-running" not in message and "trust=True" not in message
    assert caught.value.argument == "resume"


def test_a_damaged_run_checkpoint_is_one_line(tmp_path) -> None:
    from mae.large.train.state import load_run_checkpoint

    path = tmp_path / "run.pth"
    path.write_bytes(pickle.dumps({"model": 1}, protocol=2)[:-3])
    with pytest.raises(CheckpointError, match="is truncated or corrupt") as caught:
        load_run_checkpoint(path)
    assert "Re-running" not in one_line(caught.value)

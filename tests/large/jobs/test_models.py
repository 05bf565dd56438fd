"""jobs.models: where a job's model comes from, and the defaults the commands share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT, VisionTransformer
from mae.large.errors import CheckpointNotFoundError, EncoderOnlyCheckpointError
from mae.large.jobs.models import ModelSource, as_source, checkpoint_kind, encoder_view_checkpoint, require_decoder
from tests.helpers import encoder_only, save_official, small_model, small_state_dict, use_small_architecture


def test_a_model_given_is_used_as_it_is() -> None:
    model = small_model()
    source = as_source(model)
    assert source.mae() is model and source.device == torch.device("cpu")
    with pytest.raises(TypeError, match="VisionTransformer"):
        source.encoder()


def test_a_path_is_loaded_as_the_commands_load_it(tmp_path: Path, monkeypatch) -> None:
    use_small_architecture(monkeypatch)
    full = save_official(tmp_path / "full.pth", small_state_dict())
    model = as_source(str(full)).mae()
    assert isinstance(model, MaskedAutoencoderViT) and not model.training and checkpoint_kind(model) == "full"
    for name, tensor in small_state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    encoder = as_source(full).encoder(pool="cls")
    assert isinstance(encoder, VisionTransformer) and not encoder.global_pool


def test_no_checkpoint_is_the_seeded_random_init(monkeypatch) -> None:
    use_small_architecture(monkeypatch)
    a, b = ModelSource(seed=3).mae(), ModelSource(seed=3).mae()
    c = ModelSource(seed=4).mae()
    assert checkpoint_kind(a) == "random-init"
    assert torch.equal(a.blocks[0].mlp.fc1.weight, b.blocks[0].mlp.fc1.weight)
    assert not torch.equal(a.blocks[0].mlp.fc1.weight, c.blocks[0].mlp.fc1.weight)
    with pytest.raises(CheckpointNotFoundError, match="trained encoder"):
        ModelSource().encoder()


def test_the_random_decoder_warning_is_kept_or_left_to_the_caller(tmp_path: Path, monkeypatch) -> None:
    use_small_architecture(monkeypatch)
    enc = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    with pytest.warns(UserWarning, match="encoder only"):
        model = ModelSource(enc).mae()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = ModelSource(enc, warn=False).mae()  # the report still says it
    assert any("encoder only" in w for w in quiet.load_report.warnings)
    with pytest.raises(EncoderOnlyCheckpointError, match="allow_random_decoder=True"):
        require_decoder(model, allow_random_decoder=False)
    require_decoder(model, allow_random_decoder=True)


def test_the_encoder_view_takes_the_first_file_present(tmp_path: Path, monkeypatch) -> None:
    from mae.large import catalog

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint was named") as info:
        encoder_view_checkpoint(None)
    assert info.value.argument == "checkpoint"
    second = catalog.ENCODER_VIEW[1].default_path
    second.parent.mkdir(parents=True, exist_ok=True)
    second.write_bytes(b"x")
    found, note = encoder_view_checkpoint(None)
    assert found == second and note is not None and str(second) in note
    assert encoder_view_checkpoint("given.pth") == (Path("given.pth"), None)

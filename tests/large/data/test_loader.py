"""The data module: sources (files, list file, ImageFolder tree of real digits), the dataset's failure markers, and a
DataLoader whose worker count changes no row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mae.large import VisionTransformer, ViTConfig
from mae.large.data.images import ImageFailure, load_image
from mae.large.data.loader import (
    ImageDataset,
    default_workers,
    image_loader,
    image_source,
    loader_batches,
)
from mae.large.evaluate.features import FeatureResult, classifier_for_pool, extract_features
from tests.helpers import encoder_only, save_official, small_config, small_state_dict


def test_an_image_folder_tree_gives_sorted_classes_as_labels(digits_tree: Path) -> None:
    source = image_source([digits_tree])
    assert source.form == "image-folder" and source.classes == [str(i) for i in range(10)]
    assert len(source.paths) == 200 and source.failures == []
    assert source.labels == [i for i in range(10) for _ in range(20)]  # class by class, files sorted by name
    assert all(p.parent.name == str(label) for p, label in zip(source.paths, source.labels))
    plain = image_source([digits_tree], recursive=True)  # walked as a tree of images: no labels
    assert plain.form == "files" and plain.labels is None and plain.paths == source.paths


def test_a_list_file_names_images_relative_to_itself(digits_tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "val.txt"
    rel = [p.relative_to(digits_tree) for p in sorted((digits_tree / "3").iterdir())[:2]]
    listing.write_text(f"# two threes\n{digits_tree / rel[0]}\n\n{Path('..') / 'missing.png'}\n")
    source = image_source([listing])
    assert source.form == "list" and source.paths == [digits_tree / rel[0]] and source.labels is None
    assert len(source.failures) == 1 and "missing.png" in source.failures[0].reason


def test_a_bad_file_is_a_failure_marker_in_its_place_with_workers(digits_tree: Path, tmp_path: Path) -> None:
    good = sorted((digits_tree / "7").iterdir())[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    paths = [good[0], bad, good[1], good[2]]
    dataset = ImageDataset(paths, 32, "eval")
    assert isinstance(dataset[1][2], ImageFailure) and "broken.png" in dataset[1][2].reason
    for workers in (0, 2):
        loader = image_loader(paths, 32, "eval", 3, workers=workers)
        batches = list(loader_batches(loader))
        items = [item for b in batches for item in b.items]
        assert [i for i, _, _ in items] == [0, 1, 2, 3]
        assert [f is None for _, _, f in items] == [True, False, True, True]
        images = torch.cat([b.images for b in batches])  # (3, 3, 32, 32): the loaded ones, in order
        assert torch.equal(images, torch.stack([load_image(p, 32, "eval") for p in (good[0], good[1], good[2])]))


def test_indices_choose_the_positions_in_order(digits_tree: Path) -> None:
    paths = image_source([digits_tree]).paths[:10]
    loader = image_loader(paths, 32, "eval", 4, indices=range(1, 10, 3))
    assert [i for b in loader_batches(loader) for i, _, _ in b.items] == [1, 4, 7]


def test_default_workers_leave_a_core() -> None:
    assert default_workers(1) == 0 and default_workers(2) == 1 and default_workers(64) == 8
    assert default_workers(64, device_type="cpu") == 0  # the CPU forward pass needs every core


def test_worker_threads_are_set_for_an_accelerator_run_and_restored(digits_tree: Path) -> None:
    before = torch.get_num_threads()
    paths = image_source([digits_tree]).paths[:4]
    seen = [torch.get_num_threads() for _ in loader_batches(image_loader(paths, 32, "eval", 2, workers=1), "cuda")]
    assert torch.get_num_threads() == before
    assert all(n <= before for n in seen)


def test_a_cpu_forward_keeps_its_threads_whatever_the_workers(digits_tree: Path) -> None:
    # The thread count decides how MKL splits a product's sums: rows would change in their last bits with workers.
    before = torch.get_num_threads()
    paths = image_source([digits_tree]).paths[:4]
    seen = [torch.get_num_threads() for _ in loader_batches(image_loader(paths, 32, "eval", 2, workers=1), "cpu")]
    assert seen == [before, before] and torch.get_num_threads() == before


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> VisionTransformer:
    path = save_official(tmp_path_factory.mktemp("enc") / "enc.pth", encoder_only(small_state_dict()))
    return VisionTransformer.from_pretrained(path, classifier_for_pool("cls", ViTConfig.from_mae(small_config()))).eval()


def test_worker_count_changes_no_row(digits_tree: Path, tiny_encoder: VisionTransformer) -> None:
    """Real digits embedded by the tiny model: 0 and 2 workers give bit-identical rows, in input order."""
    paths = image_source([digits_tree]).paths[::4]  # 50 digits of every class
    runs = []
    for workers in (0, 2):
        results = list(extract_features(tiny_encoder, paths, batch_size=8, workers=workers))
        assert all(isinstance(r, FeatureResult) for r in results)
        assert [r.index for r in results] == list(range(len(paths)))
        runs.append(torch.stack([r.vector for r in results]))
    assert runs[0].shape == (50, 64) and torch.equal(runs[0], runs[1])

"""`data.sources`: parquet (the hub's layout), `save_to_disk` folders and WebDataset tars read in place, checked
against the digits tree they were written from and against pyarrow's and `datasets`' own readers."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mae.large.data import tables
from mae.large.data.images import open_image
from mae.large.data.labelled import labelled_source
from mae.large.data.loader import image_loader
from mae.large.data.sources import container_form, open_source
from mae.large.data.tars import expand_braces, shard_paths
from mae.large.errors import DatasetError, ImageError, InvalidArgumentError
from tests.data_formats import tree_samples, write_arrow_folder, write_hub_parquet, write_tar_shards
from tests.helpers import write_digits_tree

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tree = write_digits_tree(tmp_path_factory.mktemp("tree"), per_class=4)
    samples, classes = tree_samples(tree)
    return tree, samples, classes


def _bytes_of(source) -> list[bytes]:
    return [ref.read() for ref in source.paths]


def test_hub_parquet_rows_are_the_tree_in_order_with_its_labels_and_class_names(digits, tmp_path) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, [f"digit {c}" for c in classes], row_group=5)
    for given in (root, root / "data" / "train-*.parquet", root / "data" / "train-{00000..00001}-of-00002.parquet"):
        source = open_source([given])
        assert source.form == "parquet" and len(source.paths) == len(samples)
        assert _bytes_of(source) == [s.data for s in samples]
        assert source.labels == [s.label for s in samples]
        assert source.classes == [f"digit {c}" for c in classes]
    first = sorted((root / "data").iterdir())[0]
    assert str(source.paths[0]) == f"{first}#0" and str(source.paths[21]) == f"{sorted((root / 'data').iterdir())[1]}#1"
    assert source.describe()["files"] == [str(p) for p in sorted((root / "data").iterdir())]


def test_class_names_come_from_the_dataset_card_when_the_schema_has_none(digits, tmp_path) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, [f"n{c}" for c in classes], card=True)
    assert pq.read_schema(next((root / "data").iterdir())).metadata is None  # only the card names them
    assert open_source([root]).classes == [f"n{c}" for c in classes]


def test_parquet_is_read_by_row_group_and_only_the_image_column(digits, tmp_path, monkeypatch) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, classes, files=1, row_group=6)
    source = open_source([root])
    calls = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        calls.append((i, tuple(columns or ())))
        return real(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    tables._CACHE.group = None
    assert _bytes_of(source) == [s.data for s in samples]
    groups = pq.ParquetFile(next((root / "data").iterdir())).metadata.num_row_groups
    assert calls == [(g, ("image",)) for g in range(groups)]  # each group once, in order, the image column alone


def test_a_save_to_disk_folder_reads_as_datasets_reads_it(digits, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    _, samples, classes = digits
    folder = write_arrow_folder(tmp_path / "saved", samples, classes, shards=2)
    assert (folder / "state.json").is_file() and len(list(folder.glob("*.arrow"))) == 2
    source = open_source([folder])
    theirs = datasets.load_from_disk(str(folder)).cast_column("image", datasets.Image(decode=False))
    assert source.form == "arrow" and len(source.paths) == len(theirs)
    assert _bytes_of(source) == [row["bytes"] for row in theirs["image"]]
    assert source.labels == theirs["label"] and source.classes == classes
    assert np.array_equal(np.asarray(open_image(source.paths[7])), np.asarray(theirs.cast_column(
        "image", datasets.Image())[7]["image"].convert("RGB")))


def test_tar_shards_are_the_tree_in_order_by_pattern_glob_and_folder(digits, tmp_path) -> None:
    _, samples, _ = digits
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=3)
    for given in ([pattern], [str(tmp_path / "tars" / "digits-*.tar")], [tmp_path / "tars"],
                  sorted((tmp_path / "tars").iterdir())):
        source = open_source(given)
        assert source.form == "webdataset" and _bytes_of(source) == [s.data for s in samples]
        assert source.labels == [s.label for s in samples] and source.classes is None
        assert [b - a for a, b in source.pieces] == [14, 14, 12]  # the writer puts ceil(40 / 3) in each
    assert str(source.paths[0]) == f"{tmp_path / 'tars' / 'digits-0000.tar'}#c0_{Path(samples[0].name).stem}"


def test_tar_labels_from_json_and_a_chosen_image_extension(digits, tmp_path) -> None:
    _, samples, _ = digits
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=2, ext="webp.png", label="json")
    source = open_source([pattern], image_column="webp.png")
    assert source.labels == [s.label for s in samples] and _bytes_of(source) == [s.data for s in samples]


def test_brace_expansion_as_webdataset_spells_it() -> None:
    assert expand_braces("a-{0000..0002}.tar") == ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
    assert expand_braces("a-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert expand_braces("keep{this}.tar") == ["keep{this}.tar"]


def test_the_form_is_chosen_by_what_the_path_is(digits, tmp_path) -> None:
    tree, samples, classes = digits
    assert container_form([tree]) is None and open_source([tree]).form == "image-folder"
    assert container_form([write_hub_parquet(tmp_path / "p", samples, classes)]) == "parquet"
    assert container_form([write_tar_shards(tmp_path / "t", samples)]) == "webdataset"
    with pytest.raises(InvalidArgumentError, match="mix data set files and other inputs"):
        container_form([tmp_path / "t" / "digits-0000.tar", tree / "0" / sorted(os.listdir(tree / "0"))[0]])


def test_the_loader_decodes_records_in_worker_processes_as_files(digits, tmp_path) -> None:
    tree, samples, classes = digits
    files = open_source([tree]).paths
    records = open_source([write_hub_parquet(tmp_path / "hub", samples, classes, row_group=3)]).paths
    for workers in (0, 2):
        want = [b.images for b in image_loader(files, 16, "eval", 7)]
        got = [b.images for b in image_loader(records, 16, "eval", 7, workers=workers)]
        assert all(bool((a == b).all()) for a, b in zip(want, got)) and len(want) == len(got)


# ---- bad input: one sentence, or a failure of that one image -------------------------------------------------------
def test_a_truncated_parquet_file_is_one_sentence(digits, tmp_path) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, classes)
    victim = sorted((root / "data").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"{victim.name} is not a readable parquet file \(its footer is missing"):
        open_source([root])


def test_a_shard_list_with_a_missing_file_names_it(digits, tmp_path) -> None:
    _, samples, _ = digits
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=3)
    (tmp_path / "tars" / "digits-0001.tar").unlink()
    with pytest.raises(DatasetError, match=r"digits-0001.tar does not exist \(1 of the 3 files"):
        open_source([pattern])
    with pytest.raises(DatasetError, match="shard .*digits-0009.tar does not exist"):
        shard_paths([str(tmp_path / "tars" / "digits-0009.tar")])


def test_a_tar_with_a_truncated_member_keeps_the_samples_before_it(digits, tmp_path) -> None:
    _, samples, _ = digits
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=2)
    victim = tmp_path / "tars" / "digits-0001.tar"
    with tarfile.open(victim) as archive:
        members = archive.getmembers()
    cut = members[6]  # the image of the fourth sample of the shard
    victim.write_bytes(victim.read_bytes()[: cut.offset_data + cut.size // 2])
    source = open_source([pattern])
    assert len(source.paths) == 20 + 4 and _bytes_of_prefix(source, 23) == [s.data for s in samples[:23]]
    with pytest.raises(ImageError, match=r"digits-0001.tar#.* is truncated: the shard ends inside it"):
        source.paths[23].read()
    assert len(source.failures) == 1 and "digits-0001.tar is truncated" in source.failures[0].reason
    with pytest.raises(DatasetError, match="is truncated.*a training or evaluation run needs every sample"):
        labelled_source(pattern, "train")


def _bytes_of_prefix(source, n: int) -> list[bytes]:
    return [source.paths[i].read() for i in range(n)]


def test_a_tar_cut_between_members_is_a_failure_not_a_silent_end(digits, tmp_path) -> None:
    _, samples, _ = digits
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=1)
    victim = tmp_path / "tars" / "digits-0000.tar"
    with tarfile.open(victim) as archive:
        members = archive.getmembers()
    victim.write_bytes(victim.read_bytes()[: members[10].offset])  # five whole samples, then nothing
    source = open_source([pattern])
    assert len(source.paths) == 5 and "without the end-of-archive blocks" in source.failures[0].reason


def test_a_label_column_of_the_wrong_type_is_one_sentence(digits, tmp_path) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, classes, label_type="string")
    with pytest.raises(InvalidArgumentError, match="label column 'label' of .* holds string, not integer class numbers"):
        open_source([root])
    with pytest.raises(InvalidArgumentError, match="has no column label_column='lbl'"):
        open_source([write_hub_parquet(tmp_path / "ok", samples, classes)], label_column="lbl")
    with pytest.raises(InvalidArgumentError, match="column 'label' of .* holds int64, not images"):
        open_source([tmp_path / "ok"], image_column="label")


def test_an_image_column_of_paths_that_do_not_exist_fails_each_row(digits, tmp_path) -> None:
    tree, samples, _ = digits
    (tmp_path / "data").mkdir()
    real = sorted((tree / "0").iterdir())[0]
    shutil.copy(real, tmp_path / "data" / "real.png")
    pq.write_table(pa.table({"file": ["real.png", "gone.png"], "label": [0, 1]}), tmp_path / "data" / "x.parquet")
    source = open_source([tmp_path / "data" / "x.parquet"], image_column="file")
    assert source.paths[0].read() == real.read_bytes()  # a relative path: from the parquet file's folder
    with pytest.raises(ImageError, match=r"x.parquet#1 names the image file .*gone.png, which does not exist"):
        source.paths[1].read()


def test_splits_must_be_named(digits, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, classes)
    write_hub_parquet(tmp_path / "hub", samples[:4], classes, files=1, split="test")
    with pytest.raises(DatasetError, match=r"holds the splits test, train; name one, e\.g\. '.*data/test-\*\.parquet'"):
        open_source([root])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    part = datasets.Dataset.from_dict({"image": [{"bytes": s.data, "path": None} for s in samples[:2]],
                                       "label": [0, 1]}, features=features)
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match=r"holds the splits test, train \(a DatasetDict\); name one"):
        open_source([tmp_path / "dd"])


def test_unlabelled_rows_make_an_unlabelled_source_and_training_refuses_it(digits, tmp_path) -> None:
    _, samples, _ = digits
    pq.write_table(pa.table({"image": [s.data for s in samples[:3]], "label": [-1, -1, -1]}), tmp_path / "t.parquet")
    source = open_source([tmp_path / "t.parquet"])
    assert source.labels is None and json.dumps(source.describe())
    with pytest.raises(InvalidArgumentError, match="has no labels"):
        labelled_source(tmp_path / "t.parquet", "train")


def test_bytes_that_are_not_an_image_fail_behind_the_same_guards(tmp_path) -> None:
    pq.write_table(pa.table({"image": [b"not an image", b""]}), tmp_path / "x.parquet")
    source = open_source([tmp_path / "x.parquet"])
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'x.parquet'}#0 is not an image Pillow can read"):
        open_image(source.paths[0])
    with pytest.raises(ImageError, match=r"x.parquet#1 is empty \(0 bytes\)"):
        open_image(source.paths[1])


def test_without_pyarrow_parquet_and_arrow_paths_are_one_sentence(digits, tmp_path, monkeypatch) -> None:
    _, samples, classes = digits
    root = write_hub_parquet(tmp_path / "hub", samples, classes, files=1)
    pytest.importorskip("datasets")
    saved = write_arrow_folder(tmp_path / "saved", samples, classes, shards=1)
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as where pyarrow is not installed
    for given in (root, root / "data" / "train-00000-of-00001.parquet", saved):
        with pytest.raises(DatasetError, match=r"^reading parquet and arrow files needs pyarrow; install it with "
                                               r"pip install 'mae-large\[datasets\]'$"):
            open_source([given])


def test_a_forked_worker_does_not_inherit_a_held_read_lock() -> None:
    from mae.large.data import tars

    with tables._CACHE.lock, tars._LOCK:  # as when a read-ahead thread reads while the loader forks its workers
        pid = os.fork()
        if pid == 0:  # the child: both locks are its own, free
            free = tables._CACHE.lock.acquire(timeout=5) and tars._LOCK.acquire(timeout=5)
            os._exit(0 if free else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_each_parquet_file_is_read_by_its_own_image_layout(digits, tmp_path) -> None:
    """One file's `image` a struct {bytes, path} (as the hub writes it), the next plain binary: each file's rows are
    its own bytes (every file used to be read with the first file's layout)."""
    _, samples, _ = digits
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    first, second = samples[:5], samples[5:9]
    pq.write_table(pa.table({"image": pa.array([{"bytes": s.data, "path": s.name} for s in first], type=struct)}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"image": pa.array([s.data for s in second], type=pa.binary())}), tmp_path / "b.parquet")
    source = open_source([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert _bytes_of(source) == [s.data for s in first + second]
    assert source.pieces == ((0, 5), (5, 9))

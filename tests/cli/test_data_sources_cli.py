"""Every job on data sets as people keep them: the digits tree written as hub parquet, a `save_to_disk` folder and
WebDataset tars. `features` gives the tree's rows bit for bit (same bytes, same order, same batch size) named by each
image's identity; `knn`, `finetune`, `evaluate`, `pretrain` and `reconstruct` run on them; bad data is one line or a
failure of that image, and nothing half-written."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from cli.app import app
from mae.large.evaluate.store import open_features
from mae.large.models.vit import VisionTransformer, ViTConfig
from tests.data_formats import tree_samples, write_arrow_folder, write_hub_parquet, write_tar_shards
from tests.helpers import encoder_only, save_official, small_state_dict, write_digits_tree

pytest.importorskip("pyarrow")

FEATURES = ["--size", "32", "--batch-size", "7", "--device", "cpu"]
FINETUNE = ["--size", "32", "--batch-size", "10", "--accum-iter", "1", "--mixup", "0", "--cutmix", "0", "--aa", "none",
            "--reprob", "0", "--smoothing", "0", "--drop-path", "0", "--blr", "0.05", "--warmup-epochs", "1",
            "--device", "cpu", "--amp", "off", "--workers", "0", "--epochs", "1", "--no-checkpoints"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The digits tree (6 per class) and the same bytes as hub parquet, a save_to_disk folder and tar shards."""
    root = tmp_path_factory.mktemp("sets")
    tree = write_digits_tree(root / "tree", per_class=6)
    samples, classes = tree_samples(tree)
    forms = {"parquet": str(write_hub_parquet(root / "hub", samples, classes, row_group=8)),
             "webdataset": write_tar_shards(root / "tars", samples, shards=3)}
    if pytest.importorskip("datasets"):
        forms["arrow"] = str(write_arrow_folder(root / "saved", samples, classes))
    return tree, forms


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return save_official(tmp_path_factory.mktemp("enc") / "enc.pth", encoder_only(small_state_dict()))


def features(runner, inputs, out, *extra):
    return runner.invoke(app, ["features", *map(str, inputs), *map(str, extra), *FEATURES])


@pytest.mark.parametrize("form", ["parquet", "arrow", "webdataset"])
def test_features_are_the_image_folder_rows_bit_for_bit(runner, small_arch, sets, encoder, tmp_path, form) -> None:
    tree, forms = sets
    want = features(runner, [tree], tmp_path / "tree.safetensors", "-c", encoder, "--out", tmp_path / "tree.safetensors")
    assert want.exit_code == 0, want.output
    done = features(runner, [forms[form]], tmp_path / "f.safetensors", "-c", encoder, "--out", tmp_path / "f.safetensors")
    assert done.exit_code == 0, done.output
    a, b = open_features(tmp_path / "tree.safetensors"), open_features(tmp_path / "f.safetensors")
    assert torch.equal(a.materialize(), b.materialize()) and torch.equal(a.labels, b.labels)
    assert b.classes == (a.classes if form != "webdataset" else None)  # tar shards name no classes
    assert all("#" in name for name in b.names) and len(set(b.names)) == len(b.names) == 60
    source = json.loads(b.meta["source"])
    assert source["form"] == form and source["items"] == 60 and len(source["files"]) in (2, 3)
    knn = [runner.invoke(app, ["knn", str(f), str(f), "--k", "3", "--json"]) for f in (tmp_path / "tree.safetensors",
                                                                                       tmp_path / "f.safetensors")]
    assert all(done.exit_code == 0 for done in knn), [done.output for done in knn]
    want, got = ({k: v for k, v in json.loads(done.stdout).items() if k not in ("train", "val")} for done in knn)
    assert got == want


def test_a_shard_folder_from_tars_records_the_source_and_knn_runs_on_it(runner, small_arch, sets, encoder,
                                                                        tmp_path) -> None:
    tree, forms = sets
    out = tmp_path / "feats"
    done = runner.invoke(app, ["features", forms["webdataset"], "-c", str(encoder), "--out", str(out),
                               "--shard-size", "16", "--workers", "2", *FEATURES])
    assert done.exit_code == 0, done.output
    index = json.loads((out / "index.json").read_text())
    assert index["source"]["form"] == "webdataset" and index["files"][0].endswith("digits-0000.tar#c0_0000")
    parquet = tmp_path / "p.safetensors"
    assert features(runner, [forms["parquet"]], parquet, "-c", encoder, "--out", parquet).exit_code == 0
    assert torch.equal(open_features(out).materialize(), open_features(parquet).materialize())
    tree_rows = tmp_path / "tree.safetensors"
    assert features(runner, [tree], tree_rows, "-c", encoder, "--out", tree_rows).exit_code == 0
    knn = runner.invoke(app, ["knn", str(parquet), str(out), "--k", "3", "--json"])
    assert knn.exit_code == 0, knn.output
    reference = runner.invoke(app, ["knn", str(tree_rows), str(tree_rows), "--k", "3", "--json"])
    assert {k: v for k, v in json.loads(knn.stdout).items() if k not in ("train", "val")} == {
        k: v for k, v in json.loads(reference.stdout).items() if k not in ("train", "val")}


def test_finetune_and_evaluate_on_parquet_arrow_and_tars(runner, small_arch, sets, encoder, tmp_path) -> None:
    tree, forms = sets
    run = tmp_path / "run"
    done = runner.invoke(app, ["finetune", forms["parquet"], forms.get("arrow", forms["parquet"]), "-c", str(encoder),
                               "-o", str(run), *FINETUNE[:-1]])
    assert done.exit_code == 0, done.output
    config = json.loads((run / "config.json").read_text())
    assert config["sources"]["train"]["form"] == "parquet" and config["classes"] == [str(i) for i in range(10)]
    streamed = runner.invoke(app, ["finetune", forms["webdataset"], forms["webdataset"], "-c", str(encoder),
                                   "-o", str(tmp_path / "tars"), "--shuffle-buffer", "20", *FINETUNE])
    assert streamed.exit_code == 0, streamed.output
    assert json.loads((tmp_path / "tars" / "config.json").read_text())["stream"] == {"readers": 1, "shuffle_buffer": 20}
    results = {}
    for name, data in [("tree", str(tree)), *forms.items()]:
        done = runner.invoke(app, ["evaluate", data, "-c", str(run / "checkpoint-best.pth"), "--batch-size", "16",
                                   "--device", "cpu", "--json"])
        assert done.exit_code == 0, done.output
        results[name] = json.loads(done.stdout)
    assert all({k: v for k, v in r.items() if k != "val"} == {k: v for k, v in results["tree"].items() if k != "val"}
               for r in results.values())


def test_evaluate_on_unnamed_classes_checks_the_labels_fit_the_head(runner, small_arch, sets, tmp_path) -> None:
    _, forms = sets
    model = VisionTransformer(ViTConfig.from_architecture(None, num_classes=7))
    path = save_official(tmp_path / "ft7.pth", model.state_dict())
    done = runner.invoke(app, ["evaluate", forms["webdataset"], "-c", str(path), "--device", "cpu"])
    assert done.exit_code == 1 and "has label 9 and the classifier 7 classes" in done.output
    assert len(done.output.strip().splitlines()) == 1


def test_pretrain_and_reconstruct_on_data_sets(runner, small_arch, small_ckpts, sets, tmp_path) -> None:
    _, forms = sets
    run = tmp_path / "run"
    done = runner.invoke(app, ["pretrain", forms["webdataset"], "--from-scratch", "-o", str(run), "--epochs", "1",
                               "--size", "32", "--batch-size", "8", "--accum-iter", "1", "--device", "cpu", "--amp", "off",
                               "--preview-images", "2", "--no-checkpoints", "--workers", "2"])
    assert done.exit_code == 0, done.output
    assert json.loads((run / "config.json").read_text())["stream"]["readers"] == 2
    out = tmp_path / "figures"
    done = runner.invoke(app, ["reconstruct", forms["parquet"], "-c", str(small_ckpts[0]), "--out", str(out),
                               "--device", "cpu", "--json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)["images"]
    assert len(rows) == 60 and rows[0]["image"].endswith("train-00000-of-00002.parquet#0")
    assert (out / "train-00000-of-00002-0.png").is_file() and (out / "index.html").is_file()


# ---- bad input: one line (or that image's failure), nothing half-written ----------------------------------------
def one_line(done) -> str:
    lines = done.output.strip().splitlines()
    assert done.exit_code == 1 and len(lines) == 1 and "Traceback" not in done.output, done.output
    return lines[0]


def test_a_truncated_parquet_file_is_one_line_and_nothing_is_written(runner, small_arch, sets, encoder, tmp_path):
    tree, _ = sets
    samples, classes = tree_samples(tree)
    root = write_hub_parquet(tmp_path / "hub", samples, classes)
    victim = sorted((root / "data").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    out = tmp_path / "f.safetensors"
    line = one_line(features(runner, [root], out, "-c", encoder, "--out", out))
    assert "is not a readable parquet file (its footer is missing" in line and not out.exists()
    line = one_line(runner.invoke(app, ["finetune", str(root), str(root), "-c", str(encoder), "-o",
                                        str(tmp_path / "run"), *FINETUNE]))
    assert "footer is missing" in line and not (tmp_path / "run").exists()


def test_a_tar_with_a_truncated_member(runner, small_arch, sets, encoder, tmp_path) -> None:
    tree, _ = sets
    samples, _ = tree_samples(tree)
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=2)
    victim = tmp_path / "tars" / "digits-0001.tar"
    with tarfile.open(victim) as archive:
        cut = archive.getmembers()[4]  # the third sample's image
    victim.write_bytes(victim.read_bytes()[: cut.offset_data + 10])
    out = tmp_path / "f.safetensors"
    done = features(runner, [pattern], out, "-c", encoder, "--out", out, "--json")
    assert done.exit_code == 1
    result = json.loads(done.stdout)
    assert result["count"] == 32 and open_features(out).rows == 32  # the samples before the cut are written
    errors = [f["error"] for f in result["failed"]]
    assert any("digits-0001.tar is truncated" in e for e in errors)
    assert any("#c" in f["image"] and "is truncated: the shard ends inside it" in f["error"] for f in result["failed"])
    line = one_line(runner.invoke(app, ["pretrain", pattern, "--from-scratch", "-o", str(tmp_path / "run"),
                                        "--size", "32", "--device", "cpu"]))
    assert "is truncated" in line and "a training run needs every sample" in line and not (tmp_path / "run").exists()


def test_a_shard_list_with_a_missing_file_is_one_line(runner, small_arch, sets, encoder, tmp_path) -> None:
    tree, _ = sets
    samples, _ = tree_samples(tree)
    pattern = write_tar_shards(tmp_path / "tars", samples, shards=3)
    (tmp_path / "tars" / "digits-0002.tar").unlink()
    out = tmp_path / "feats"
    line = one_line(features(runner, [pattern], out, "-c", encoder, "--out", out))
    assert "digits-0002.tar does not exist (1 of the 3 files" in line and not out.exists()


def test_a_label_column_of_the_wrong_type_names_the_flag(runner, small_arch, sets, encoder, tmp_path) -> None:
    tree, _ = sets
    samples, classes = tree_samples(tree)
    root = write_hub_parquet(tmp_path / "hub", samples, classes, label_type="string")
    line = one_line(runner.invoke(app, ["finetune", str(root), str(root), "-c", str(encoder), "-o",
                                        str(tmp_path / "run"), *FINETUNE]))
    assert "holds string, not integer class numbers; name an integer column with --label-column NAME" in line
    out = tmp_path / "f.safetensors"
    line = one_line(features(runner, [root], out, "-c", encoder, "--out", out, "--label-column", "nope"))
    assert "has no column --label-column nope" in line and not out.exists()


def test_without_pyarrow_a_parquet_path_is_one_line(runner, small_arch, sets, encoder, tmp_path, monkeypatch) -> None:
    _, forms = sets
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as where pyarrow is not installed
    out = tmp_path / "f.safetensors"
    line = one_line(features(runner, [forms["parquet"]], out, "-c", encoder, "--out", out))
    assert "needs pyarrow; install it with pip install 'mae-large[datasets]'" in line and not out.exists()
    done = features(runner, [forms["webdataset"]], out, "-c", encoder, "--out", out)  # tars need no pyarrow
    assert done.exit_code == 0, done.output


def test_an_image_column_of_missing_paths_fails_each_image(runner, small_arch, encoder, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": ["a.png", "b.png"], "label": [0, 1]}), tmp_path / "x.parquet")
    out = tmp_path / "f.safetensors"
    done = features(runner, [tmp_path / "x.parquet"], out, "-c", encoder, "--out", out, "--image-column", "file")
    assert done.exit_code == 1 and not out.exists() and "Traceback" not in done.output
    assert "x.parquet#0 names the image file" in done.output and "b.png, which does not exist" in done.output
    assert "every image failed, nothing was written" in done.output
    line = one_line(features(runner, [tmp_path / "x.parquet"], out, "-c", encoder, "--out", out))
    assert "no image column" in line and "--image-column NAME" in line


def _tar(path, members) -> str:
    """A plain tar of (name, bytes) members in the order given."""
    import io

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("label", [10**9, 2**64 - 1, 10**40])
def test_a_label_no_classifier_could_have_is_one_line_before_any_work(runner, small_arch, sets, encoder, tmp_path,
                                                                      label) -> None:
    """A label of 1e9 sized a list of a billion class names (the kernel killed `finetune`); a 40-digit `.cls` was an
    OverflowError; a uint64 label 2**64-1 was written into the features. Each is one line naming where it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tree, _ = sets
    samples, _ = tree_samples(tree)
    if label < 2**64:
        kind = pa.uint64()
        table = pa.table({"image": [{"bytes": s.data, "path": s.name} for s in samples[:4]],
                          "label": pa.array([0, 1, label, 1], type=kind)})
        given = tmp_path / "big.parquet"
        pq.write_table(table, given)
        where = "the largest label of column 'label'"
    else:
        given = _tar(tmp_path / "big.tar", [("k0.png", samples[0].data), ("k0.cls", str(label).encode())])
        where = "member k0.cls of"
    out = tmp_path / "f.safetensors"
    line = one_line(features(runner, [given], out, "-c", encoder, "--out", out))
    assert where in line and "not a class number (at most 1,048,575)" in line and not out.exists()
    if label == 10**9:
        run = tmp_path / "run"
        line = one_line(runner.invoke(app, ["finetune", str(given), str(given), "-c", str(encoder), "-o", str(run),
                                            *FINETUNE]))
        assert "not a class number" in line and "--label-column NAME" in line and not run.exists()


def test_a_samples_files_apart_or_a_key_used_twice_refuse_the_shard(runner, small_arch, sets, encoder, tmp_path) -> None:
    """WebDataset groups a sample's files in a row: k0.png, k1.png, k0.cls, k1.cls lost both labels without a word,
    and a key used twice dropped its first image. Both are one line naming the shard and the key."""
    tree, _ = sets
    samples, _ = tree_samples(tree)
    a, b = samples[0].data, samples[1].data
    for name, members in (("split", [("k0.png", a), ("k1.png", b), ("k0.cls", b"0"), ("k1.cls", b"1")]),
                          ("twice", [("k0.png", a), ("k0.cls", b"0"), ("k1.png", b), ("k1.cls", b"1"), ("k0.png", b),
                                     ("k0.cls", b"1")])):
        given = _tar(tmp_path / f"{name}.tar", members)
        out = tmp_path / f"{name}.safetensors"
        line = one_line(features(runner, [given], out, "-c", encoder, "--out", out))
        assert f"{name}.tar: the files of sample 'k0' are not next to each other" in line and not out.exists(), line


def test_a_compressed_tar_under_a_tar_name_is_said_so(runner, small_arch, sets, encoder, tmp_path) -> None:
    import gzip

    tree, _ = sets
    samples, _ = tree_samples(tree)
    plain = _tar(tmp_path / "plain.tar", [("k0.png", samples[0].data), ("k0.cls", b"0")])
    disguised = tmp_path / "disguised.tar"
    disguised.write_bytes(gzip.compress(Path(plain).read_bytes()))
    out = tmp_path / "f.safetensors"
    line = one_line(features(runner, [disguised], out, "-c", encoder, "--out", out))
    assert "disguised.tar is a compressed tar" in line and "decompress the shards" in line and not out.exists()

"""The digits tree (`helpers.write_digits_tree`) written again as the data sets people keep: parquet in the Hugging
Face hub's layout (pyarrow), a `datasets.save_to_disk` folder (made by `datasets` itself), WebDataset tar shards.

Every writer takes the tree's samples in ImageFolder order (class folders sorted, files sorted by name) and stores the
same encoded bytes, so a job over any of them must give what it gives over the tree.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    name: str  # the file's name in the tree
    data: bytes  # its encoded bytes (PNG)
    label: int  # its class folder's position


def tree_samples(tree: Path) -> tuple[list[Sample], list[str]]:
    """The tree's samples in ImageFolder order, and its class names."""
    classes = sorted(p.name for p in tree.iterdir() if p.is_dir())
    samples = [Sample(f.name, f.read_bytes(), k) for k, c in enumerate(classes) for f in sorted((tree / c).iterdir())]
    return samples, classes


def hf_metadata(classes: list[str]) -> dict[bytes, bytes]:
    """The schema metadata `datasets` writes: the features, the label a ClassLabel with names."""
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_hub_parquet(root: Path, samples: list[Sample], classes: list[str] | None, *, files: int = 2,
                      row_group: int = 16, split: str = "train", label_type: str = "int64",
                      card: bool = False) -> Path:
    """`root/data/{split}-0000k-of-0000N.parquet` (the hub's layout): an `image` struct {bytes, path} and a `label`
    column, row groups of `row_group` rows, the class names in the schema metadata (`classes`), or only in a dataset
    card `root/README.md` (`card`). Returns `root`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    labels = pa.string() if label_type == "string" else pa.int64()
    meta = hf_metadata(classes) if classes is not None and not card else None
    schema = pa.schema([("image", image), ("label", labels)], metadata=meta)
    (root / "data").mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // files)
    for k in range(files):
        part = samples[k * per:(k + 1) * per]
        table = pa.table({"image": [{"bytes": s.data, "path": s.name} for s in part],
                          "label": [str(s.label) if label_type == "string" else s.label for s in part]}, schema=schema)
        pq.write_table(table, root / "data" / f"{split}-{k:05d}-of-{files:05d}.parquet", row_group_size=row_group)
    if card and classes is not None:
        names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(classes))
        (root / "README.md").write_text("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n"
                                        f"  - name: label\n    dtype:\n      class_label:\n        names:\n{names}\n"
                                        "---\n# digits\n")
    return root


def write_arrow_folder(folder: Path, samples: list[Sample], classes: list[str], *, shards: int = 2) -> Path:
    """A `datasets.save_to_disk` folder of the samples (an Image and a ClassLabel column), written by `datasets`."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    data = {"image": [{"bytes": s.data, "path": s.name} for s in samples], "label": [s.label for s in samples]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(folder), num_shards=shards)
    return folder


def write_tar_shards(root: Path, samples: list[Sample], *, shards: int = 3, ext: str = "png",
                     label: str = "cls") -> str:
    """WebDataset shards `root/digits-{0000..000K}.tar` holding the samples in order, each `key.png` + `key.cls` (or a
    `key.json` {"label": n} with `label="json"`); returns the brace pattern."""
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // shards)
    for k in range(shards):
        with tarfile.open(root / f"digits-{k:04d}.tar", "w", format=tarfile.USTAR_FORMAT) as archive:
            for s in samples[k * per:(k + 1) * per]:
                key = f"c{s.label}_{Path(s.name).stem}"
                extra = (("cls", str(s.label).encode()) if label == "cls" else
                         ("json", json.dumps({"label": s.label}).encode()))
                for suffix, data in ((ext, s.data), extra):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return str(root / f"digits-{{0000..{shards - 1:04d}}}.tar")

"""Class tables: what the label values stored in a labelled scan mean.

A ``ClassTable`` pairs label values (a labels PLY's vertex ``label``, ...) with class names. Built in:

- ``nyu40``: the NYU40 ids 1..40 of ScanNet's ``*_vh_clean_2.labels.ply``.
- ``scannet20``: the ScanNet benchmark's 20 classes, by their NYU40 ids. The other NYU40 ids are not scored (the
  benchmark's protocol).
- ``scannet200``: the ScanNet200 benchmark's 200 classes, by their ScanNet label ids (the ``id`` column of
  ``scannetv2-labels.combined.tsv``). Other ids are not scored.

In all three, 0 is "unannotated". A table can also come from a file:

- ``labels.tsv``: one ``value<TAB>name`` per line (``#`` comments, an optional ``index``/``id`` header).
- A JSON list of names: the value of a name is its position.

A file table scores every value it lists and refuses a value it does not list (``ClassTable.indices``): a scan
labelled with another table is refused rather than scored against the wrong names. ScanNet's
``scannetv2-labels.combined.tsv`` maps the raw category names of the annotations (``aggregation.json``) to these ids
(``read_category_ids``), for scans that are scored from their annotations rather than a labels PLY.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .scannet import NYU40_CLASS_NAMES

__all__ = ["ClassTable", "BUILTIN_TABLES", "class_table", "read_category_ids", "SCANNET20_IDS", "SCANNET200_IDS"]

# The ScanNet benchmark's 20 classes (NYU40 ids), and ScanNet200's 200 classes (ScanNet label ids), in benchmark
# order; facts of the benchmarks (ScanNet, Dai et al. 2017; ScanNet200, Rozenberszki et al. 2022).
SCANNET20_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_NAMES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                   "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
                   "bathtub", "otherfurniture")
SCANNET200_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33, 34,
    35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63, 64, 65, 66, 67,
    68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100,
    101, 102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134, 136,
    138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188,
    191, 193, 195, 202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312,
    323, 325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163,
    1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182,
    1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191)


@dataclass(frozen=True)
class ClassTable:
    """``values[i]`` is the stored label of class ``names[i]``. ``unannotated``: values that mean "no label";
    ``ignore_unlisted``: other values up to ``max_value`` (0 = any) are not scored (a benchmark's subset of a
    larger table) instead of refused; ``source``: where the table came from, for messages."""

    names: tuple[str, ...]
    values: tuple[int, ...]
    unannotated: tuple[int, ...] = ()
    ignore_unlisted: bool = False
    max_value: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.names) != len(self.values) or not self.names:
            raise ValueError(f"class table {self.source}: needs one value per name, and at least one class")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"class table {self.source}: a label value is listed twice")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class table {self.source}: a class name is listed twice")

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, labels: np.ndarray, where: str = "labels") -> np.ndarray:
        """Stored label values -> class indices into ``names`` (-1: unannotated, or unlisted with
        ``ignore_unlisted``); ValueError naming the values a table of its own does not list."""
        labels = np.asarray(labels).astype(np.int64)
        values = np.asarray(self.values, dtype=np.int64)
        order = np.argsort(values)
        rank = np.clip(np.searchsorted(values[order], labels), 0, len(values) - 1)
        listed = values[order][rank] == labels
        out = np.where(listed, order[rank], -1)
        unlisted = np.unique(labels[~listed & ~np.isin(labels, self.unannotated) & (labels >= 0)])
        if self.ignore_unlisted:
            unlisted = unlisted[unlisted > self.max_value] if self.max_value else unlisted[:0]
        if len(unlisted):
            shown = ", ".join(map(str, unlisted[:8].tolist())) + (" ..." if len(unlisted) > 8 else "")
            raise ValueError(f"{where} hold label values {shown} that class table {self.source} does not list "
                             f"({len(self)} classes, values {min(self.values)}..{max(self.values)}): were they "
                             "written with another table?")
        return out.astype(np.int32)


def _builtin_names(name: str) -> tuple[str, ...]:
    if name == "scannet200":  # shipped as data/scannet200.txt (also the labeller's default vocabulary)
        text = resources.files(__package__).joinpath("scannet200.txt").read_text(encoding="utf-8")
        return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {"nyu40": NYU40_CLASS_NAMES, "scannet20": SCANNET20_NAMES}[name]


BUILTIN_TABLES = {"nyu40": tuple(range(1, 41)), "scannet20": SCANNET20_IDS, "scannet200": SCANNET200_IDS}


def class_table(spec: str | Path) -> ClassTable:
    """A built-in table (``nyu40``, ``scannet20``, ``scannet200``), a ``labels.tsv`` (``value<TAB>name``) or a
    ``.json`` list of names; ValueError naming the file when it cannot be read as one."""
    if str(spec) in BUILTIN_TABLES:
        name = str(spec)
        return ClassTable(_builtin_names(name), BUILTIN_TABLES[name], unannotated=(0,),
                          ignore_unlisted=name != "nyu40", max_value=40 if name == "scannet20" else 0, source=name)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"class table {spec}: not a built-in table ({', '.join(BUILTIN_TABLES)}) and no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"class table {path}: not JSON: {exc}") from None
        if isinstance(names, dict):
            names = names.get("class_names")  # a classes.json of write_scannet_scene
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"class table {path}: must be a JSON list of class names")
        return ClassTable(tuple(n.strip() for n in names), tuple(range(len(names))), source=str(path))
    names, values = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 2 or not fields[1].strip():
            raise ValueError(f"class table {path}, line {number}: expected 'value<TAB>name', got {line!r}")
        try:
            values.append(int(fields[0]))
        except ValueError:
            if not names and fields[0].strip().lower() in ("index", "id", "value", "label"):
                continue  # a header line
            raise ValueError(f"class table {path}, line {number}: '{fields[0]}' is not an integer label value")
        names.append(fields[1].strip())
    return ClassTable(tuple(names), tuple(values), source=str(path))


def read_category_ids(tsv_path: str | Path, column: str = "id") -> dict[str, int]:
    """ScanNet's ``scannetv2-labels.combined.tsv``: raw category name -> ``column`` (``id`` for ScanNet200,
    ``nyu40id`` for NYU40 and ScanNet20)."""
    path = Path(tsv_path).expanduser()
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as exc:
        raise ValueError(f"label map {path}: {exc}") from None
    if not rows or "raw_category" not in rows[0] or column not in rows[0]:
        raise ValueError(f"label map {path}: needs the columns raw_category and {column} "
                         "(ScanNet's scannetv2-labels.combined.tsv)")
    out = {}
    for row in rows:
        try:
            out[row["raw_category"].strip()] = int(row[column])
        except (TypeError, ValueError):
            continue  # a category without an id in this column
    return out

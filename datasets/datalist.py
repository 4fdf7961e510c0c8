"""`datalist`: images listed in a CSV or JSON file (image path, label, split).

Accepted files (see docs/data.md):

* JSON in MONAI's datalist form, `{"training": [{"image": "a.png", "label": 1}, ...],
  "validation": [...], "test": [...]}` (also `train`/`val`/`valid`/`testing` as keys), or a
  plain list of entries, each with an optional `"split"`. A label is a class name, an integer
  (names from an optional top-level `"classes"` list, else "0", "1", ...) or a one-hot list.
* CSV with a header: an image column (`image`, `image_path`, `path`, `file`, `filename`) and
  either a `label` (or `class`, `target`) column, or one 0/1 column per class, as in the ISIC
  ground-truth files (`image,MEL,NV,BCC,...`; a class column that is never 1, such as ISIC
  2019's `UNK`, is dropped with a note). An optional `split` column says train/val/test.

Image paths are relative to `--data-dir` (default: the list's own folder), or absolute; a name
without an image extension (`ISIC_0000000`) is looked up by file stem anywhere below that
folder. Entries without a split are training images; val and test, when not listed, are carved
per class from training with `--data-seed`, as for `imagefolder` (`build_from_listing`), and the
table of what went where is reported and recorded in `info["allocation"]`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt

from .base import DATASETS, DataDir, DataSeed, ImageSize, LTDataset, SkipMissing
from .decode import IMAGE_EXTENSIONS, find_image, index_images
from .imagefolder import (
    Listing,
    ResampleRatio,
    TestPerClass,
    ValPerClass,
    build_from_listing,
    check_image_size,
)

MAX_LIST_BYTES = 512 * 2**20
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")
LABEL_COLUMNS = ("label", "class", "target")
DatalistPath = Annotated[
    str | None,
    opt("CSV or JSON file listing image path, label and (optionally) split", path="file"),
]

Entry = tuple[str, Any, str | None, str]  # (image, label, split or None, where in the file)


def _split_of(value: Any, where: str, source: str) -> str:
    key = str(value).strip().lower()
    if key not in SPLIT_NAMES:
        raise FlexsampleError(
            f"{source}: {where} has split '{value}'; accepted: train, val, test "
            "(or training, valid, validation, testing)"
        )
    return SPLIT_NAMES[key]


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise FlexsampleError(f"datalist {path} is larger than {MAX_LIST_BYTES >> 20} MiB")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FlexsampleError(f"datalist {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise FlexsampleError(f"cannot read datalist {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- JSON


def _json_entries(path: Path) -> tuple[list[Entry], list[str] | None]:
    source = str(path)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise FlexsampleError(
            f"datalist {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    names: list[str] | None = None
    entries: list[Entry] = []
    if isinstance(doc, list):
        for i, e in enumerate(doc):
            entries.append(_json_entry(e, f"entry {i + 1}", None, source))
    elif isinstance(doc, dict):
        classes = doc.get("classes", doc.get("class_names"))
        if classes is not None:
            if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                raise FlexsampleError(f"{source}: 'classes' must be a list of class names")
            names = list(classes)
        found = False
        for key, value in doc.items():
            split = SPLIT_NAMES.get(key.lower())
            if split is None:
                if (
                    isinstance(value, list)
                    and value
                    and isinstance(value[0], dict)
                    and "image" in value[0]
                ):
                    raise FlexsampleError(
                        f"{source}: key '{key}' lists images but is not a split; use "
                        "training, validation or test"
                    )
                continue
            if not isinstance(value, list):
                raise FlexsampleError(f"{source}: '{key}' must be a list of entries")
            found = True
            for i, e in enumerate(value):
                entries.append(_json_entry(e, f"'{key}' entry {i + 1}", split, source))
        if not found:
            raise FlexsampleError(
                f"{source}: no 'training', 'validation' or 'test' list (MONAI datalist form: "
                '{"training": [{"image": "a.png", "label": 0}, ...]})'
            )
    else:
        raise FlexsampleError(f"{source}: expected a JSON object or list of entries")
    return entries, names


def _json_entry(e: Any, where: str, split: str | None, source: str) -> Entry:
    if not isinstance(e, dict) or "image" not in e:
        raise FlexsampleError(
            f"{source}: {where} is not an entry with an image and a label "
            '({"image": "a.png", "label": 0}); evaluation needs a label for every image'
        )
    image = e["image"]
    if not isinstance(image, str) or not image:
        raise FlexsampleError(f"{source}: {where} must have one image path (a string)")
    if "label" not in e:
        raise FlexsampleError(f"{source}: {where} ({image}) has no label")
    label = e["label"]
    if isinstance(label, list):
        label = _one_hot(label, where, image, source)
    if "split" in e:
        if split is not None:
            raise FlexsampleError(f"{source}: {where} has a 'split' inside a split list")
        split = _split_of(e["split"], where, source)
    return image, label, split, where


def _one_hot(values: list[Any], where: str, image: str, source: str) -> int:
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        raise FlexsampleError(f"{source}: {where} ({image}): label list is not numeric") from None
    hot = [i for i, x in enumerate(v) if x == 1.0]
    if len(hot) != 1 or any(x not in (0.0, 1.0) for x in v):
        raise FlexsampleError(
            f"{source}: {where} ({image}): label {values} is not one-hot (exactly one 1, "
            "the rest 0)"
        )
    return hot[0]


# ---------------------------------------------------------------- CSV


def _csv_entries(path: Path) -> tuple[list[Entry], list[str] | None, list[str]]:
    source = str(path)
    rows = list(csv.reader(_read_text(path).splitlines()))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise FlexsampleError(f"datalist {path}: needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]

    def column(candidates: tuple[str, ...]) -> int | None:
        return next((lower.index(c) for c in candidates if c in lower), None)

    img = column(IMAGE_COLUMNS)
    if img is None:
        raise FlexsampleError(
            f"datalist {path}: no image column; the header has {', '.join(header)}; name "
            f"it one of {', '.join(IMAGE_COLUMNS)}"
        )
    lab = column(LABEL_COLUMNS)
    spl = column(("split",))
    body = rows[1:]
    for n, r in enumerate(body, 2):
        if len(r) != len(header):
            raise FlexsampleError(
                f"datalist {path}: line {n} has {len(r)} field(s), the header {len(header)}"
            )
    notes: list[str] = []
    names: list[str] | None = None
    labels: list[Any]
    if lab is not None:
        labels = [r[lab].strip() for r in body]
    else:
        cls = [i for i in range(len(header)) if i not in (img, spl)]
        if not cls:
            raise FlexsampleError(
                f"datalist {path}: no label column ({', '.join(LABEL_COLUMNS)}) and no "
                "one-hot class columns"
            )
        labels = []
        for n, r in enumerate(body, 2):
            try:
                v = [float(r[i]) for i in cls]
            except ValueError:
                raise FlexsampleError(
                    f"datalist {path}: line {n}: class columns must hold 0 or 1 (one-hot, as "
                    "the ISIC ground truth), or name a label column "
                    f"({', '.join(LABEL_COLUMNS)})"
                ) from None
            hot = [i for i, x in zip(cls, v, strict=True) if x == 1.0]
            if len(hot) != 1 or any(x not in (0.0, 1.0) or math.isnan(x) for x in v):
                raise FlexsampleError(
                    f"datalist {path}: line {n} ({r[img]}) is not one-hot over the class "
                    f"columns {', '.join(header[i] for i in cls)} (exactly one 1, the rest 0)"
                )
            labels.append(header[hot[0]])
        used = set(labels)
        dropped = [header[i] for i in cls if header[i] not in used]
        if dropped:
            notes.append(f"class column(s) {', '.join(dropped)} never set: no such class")
        names = [header[i] for i in cls if header[i] in used]
    entries = [
        (
            r[img].strip(),
            labels[n],
            _split_of(r[spl], f"line {n + 2}", source) if spl is not None else None,
            f"line {n + 2}",
        )
        for n, r in enumerate(body)
    ]
    return entries, names, notes


# ---------------------------------------------------------------- the dataset


def _class_names(entries: list[Entry], names: list[str] | None, source: str) -> list[str]:
    labels = [e[1] for e in entries]
    if (
        all(
            isinstance(v, int)
            and not isinstance(v, bool)
            or isinstance(v, str)
            and v.strip().isdigit()
            for v in labels
        )
        and names is None
    ):
        top = max(int(v) for v in labels)
        return [str(i) for i in range(top + 1)]
    if names is not None:
        return names
    bad = [e for e in entries if not isinstance(e[1], (str, int)) or isinstance(e[1], bool)]
    if bad:
        raise FlexsampleError(
            f"{source}: {bad[0][3]} has label {bad[0][1]!r}; use a class name or an integer"
        )
    return sorted({str(v) for v in labels})


def _label_index(value: Any, names: list[str], where: str, source: str) -> int:
    if isinstance(value, bool):
        raise FlexsampleError(f"{source}: {where} has label {value!r}")
    if (
        isinstance(value, int)
        or isinstance(value, str)
        and value.strip().isdigit()
        and value.strip() not in names
    ):
        k = int(value)
        if not 0 <= k < len(names):
            raise FlexsampleError(f"{source}: {where} has label {k}, outside 0..{len(names) - 1}")
        return k
    if isinstance(value, str) and value in names:
        return names.index(value)
    raise FlexsampleError(
        f"{source}: {where} has label {value!r}, not one of the classes {', '.join(names)}"
    )


def list_datalist(path: Path, base: Path) -> Listing:
    """The listing of a CSV or JSON datalist (image paths relative to `base`)."""
    source = str(path)
    notes: list[str] = []
    if path.suffix.lower() == ".json":
        entries, names = _json_entries(path)
    elif path.suffix.lower() == ".csv":
        entries, names, notes = _csv_entries(path)
    else:
        raise FlexsampleError(f"datalist {path}: expected a .json or .csv file")
    if not entries:
        raise FlexsampleError(f"datalist {path} lists no images")
    class_names = _class_names(entries, names, source)
    if len(class_names) < 2:
        raise FlexsampleError(f"{source}: found {len(class_names)} class(es); need at least 2")
    given: dict[str, dict[int, list[str]]] = {}
    seen: dict[str, str] = {}
    for image, label, split, where in entries:
        s = split or "train"
        if image in seen:
            raise FlexsampleError(
                f"{source}: {where} lists {image} again (first at {seen[image]}); an image "
                "belongs to one split once"
            )
        seen[image] = where
        k = _label_index(label, class_names, where, source)
        given.setdefault(s, {k2: [] for k2 in range(len(class_names))})[k].append(image)
    index: dict[str, str] | None = None

    def locate(name: str) -> str | None:
        nonlocal index
        p = Path(name).expanduser()
        p = p if p.is_absolute() else base / p
        if p.is_file():
            return str(p)
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            return None
        if index is None:  # ISIC-style ids without extension: look up by stem below base
            index = index_images(base)
        return find_image(name, index)

    def where(c: str) -> str:
        return f"class '{c}' in {source}"

    layout = "datalist (" + ", ".join(s for s in ("train", "val", "test") if s in given) + ")"
    return Listing(class_names, given, locate, base, source, where, layout, notes)


@DATASETS.register("datalist")
def build_datalist(
    datalist: DatalistPath = None,
    data_dir: DataDir = None,
    imbalance_ratio: ResampleRatio = None,
    data_seed: DataSeed = 0,
    image_size: ImageSize = None,
    skip_missing: SkipMissing = False,
    cache_dir: str | None = None,
    val_per_class: ValPerClass = None,
    test_per_class: TestPerClass = None,
    progress: Any = None,
) -> LTDataset:
    """Images listed in a CSV or JSON file (MONAI datalist, ISIC ground-truth CSV)."""
    if datalist is None:
        raise FlexsampleError(
            "--dataset datalist needs the list: --datalist PATH (a .json or .csv "
            "file of image, label and split)"
        )
    path = Path(datalist).expanduser()
    if not path.is_absolute() and data_dir is not None and not path.is_file():
        path = Path(data_dir).expanduser() / path
    if not path.is_file():
        raise FlexsampleError(f"datalist not found or not a file: {path}")
    base = Path(data_dir).expanduser() if data_dir is not None else path.parent
    if not base.is_dir():
        raise FlexsampleError(f"--data-dir not found or not a folder: {base}")
    size = check_image_size(image_size)
    listing = list_datalist(path, base)
    return build_from_listing(
        "datalist",
        listing,
        imbalance_ratio=imbalance_ratio,
        data_seed=data_seed,
        image_size=size,
        skip_missing=skip_missing,
        cache_dir=cache_dir,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        progress=progress,
        info={"datalist": str(path)},
    )

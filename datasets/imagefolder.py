"""`imagefolder`: a researcher's own images, used as they are.

Two layouts under `--data-dir` (see docs/data.md):

* class folders, `root/<class>/<image>`: classes are the sub-folders holding at least one image
  (sorted by name = label order); ids are `<class>/<file>`;
* split folders, `root/train/<class>/<image>` with optional `root/val/` (or `validation/`) and
  `root/test/`, each with the same class sub-folders: the given splits are used as they are;
  ids are `train/<class>/<file>`, ...

A split that is not given (val and test for class folders) is carved per class from the
training images, drawn with `--data-seed`: balanced, by default 20% (test) and 10% (val) of the
smallest class, at most 100 and 50, at least 1 (`test_per_class`, `val_per_class`).

The training split keeps the data's own distribution by default: every remaining image is used,
nothing is resampled. `--imbalance-ratio R` (option `imbalance_ratio`) instead keeps an
exponential profile n_i = floor(n_max * R^(-i/(C-1))) over the classes ranked by how many images
remain (largest first, ties by name), with n_max the largest value every class can supply; the
images left out are counted as unused.

Either way a table of what went where (per class: train / val / test / unused / skipped) goes to
the `progress` reporter's `message` and into the dataset's `info["allocation"]`. The datalist
dataset (`datalist.py`) goes through the same steps (`build_from_listing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt

from .base import DATASETS, DataDir, DataSeed, ImageSize, LTDataset, SkipMissing
from .images import IMAGE_EXTENSIONS, make_image_splits, resolve_files
from .isic import check_every_class_trains

DEFAULT_IMAGE_SIZE = 224
SPLITS = ("train", "val", "test")
# folder names of the split layout (the first one present is used)
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}

# the own distribution by default; a number resamples the training split to that ratio
ResampleRatio = Annotated[
    float | None,
    opt(
        "resample the training split to imbalance ratio r = n_max / n_min (default: keep the "
        "data's own distribution and use every training image)",
        ge=1,
        le=1_000_000,
    ),
]
ValPerClass = Annotated[
    int | None,
    opt(
        "validation images per class when val is carved from training (default: as many as fit)",
        ge=1,
    ),
]
TestPerClass = Annotated[
    int | None,
    opt("test images per class when test is carved from training (default: as many as fit)", ge=1),
]


def scan_classes(root: Path) -> dict[str, list[str]]:
    """{class folder: sorted image file names} for every sub-folder holding images."""
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f.name
            for f in d.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        if files:
            out[d.name] = files
    return out


def fitted_profile(available: list[int], ratio: float) -> list[int]:
    """Exponential counts over `available` (sorted descending) with the largest feasible n_max."""
    c = len(available)
    if c == 1:
        return [available[0]]
    decay = np.power(float(ratio), -np.arange(c) / (c - 1))
    n_max = int(min(np.floor(a / f + 1e-9) for a, f in zip(available, decay, strict=True)))
    n_max = max(1, min(n_max, available[0]))
    counts = np.maximum(1, np.floor(n_max * decay + 1e-9)).astype(int)
    return [int(min(n, a)) for n, a in zip(counts, available, strict=True)]


@dataclass
class Listing:
    """What a data source lists: class names and, per given split, each class's image ids.

    `locate(id)` is the file of an id (None if absent); `root` is where relative names are
    looked for; `source` names the source in messages; `where(c)` names class `c`'s training
    images in messages ("class folder /data/train/mel").
    """

    class_names: list[str]
    given: dict[str, dict[int, list[str]]]
    locate: Callable[[str], str | None]
    root: Path
    source: str
    where: Callable[[str], str]
    layout: str
    notes: list[str] = field(default_factory=list)


def build_from_listing(
    dataset: str,
    listing: Listing,
    *,
    imbalance_ratio: float | None,
    data_seed: int,
    image_size: int,
    skip_missing: bool,
    cache_dir: str | None,
    val_per_class: int | None,
    test_per_class: int | None,
    progress: Any,
    info: dict[str, Any] | None = None,
) -> LTDataset:
    """Carve the missing splits, resample training if asked, check and decode the files, and
    report the table of what went where."""
    names = listing.class_names
    counts = _training_counts(listing, val_per_class, test_per_class)
    n_test, n_val = _carved_sizes(listing, counts, val_per_class, test_per_class)
    parts, ranked, unused = _allocate(listing, n_test, n_val, imbalance_ratio, data_seed)
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for s, per in parts.items():
        ids = [i for k in sorted(per) for i in per[k]]
        labels = np.array([k for k in sorted(per) for _ in per[k]], dtype=np.int64)
        splits[s] = (ids, labels)
    resolved, out_info = resolve_files(
        splits,
        listing.root,
        skip_missing,
        locate=listing.locate,
        source=listing.source,
        progress=progress,
    )
    out_info.update(info or {})
    out_info.update(
        {
            "data_dir": str(listing.root),
            "layout": listing.layout,
            "imbalance_ratio": None if imbalance_ratio is None else float(imbalance_ratio),
            "head_order": [names[k] for k in ranked],
            "val_per_class": n_val or None,
            "test_per_class": n_test or None,
            "image_size": image_size,
        }
    )
    built = make_image_splits(
        dataset, resolved, image_size, cache_dir, skip_missing, out_info, progress
    )
    planned = {s: np.bincount(splits[s][1], minlength=len(names)) for s in SPLITS}
    final = {s: np.bincount(built[s].labels, minlength=len(names)) for s in SPLITS}
    how = _split_sources(listing, n_test, n_val, imbalance_ratio, data_seed)
    rows = [
        {
            "class": names[k],
            **{s: int(final[s][k]) for s in SPLITS},
            "unused": unused[k],
            "skipped": int(sum(planned[s][k] - final[s][k] for s in SPLITS)),
        }
        for k in range(len(names))
    ]
    table = allocation_table(dataset, listing.source, how, rows, _notes(listing, out_info))
    out_info["allocation"] = {"splits": how, "classes": rows, "table": table}
    if progress is not None and hasattr(progress, "message"):
        progress.message(table)
    check_every_class_trains(
        built["train"].labels, names, f"{listing.source} after skipping broken images"
    )
    return LTDataset(
        name=dataset,
        class_names=names,
        train=built["train"],
        val=built["val"],
        test=built["test"],
        in_chans=3,
        image_size=image_size,
        groups=None,
        info=out_info,
    )


def _training_counts(
    listing: Listing, val_per_class: int | None, test_per_class: int | None
) -> dict[int, int]:
    """Training images listed per class; refuses a listing without training images, a class
    without any, and a carve size for a split the listing gives itself."""
    names, given = listing.class_names, listing.given
    if "train" not in given:
        raise FlexsampleError(f"{listing.source}: no training images listed")
    counts = {k: len(given["train"].get(k, [])) for k in range(len(names))}
    empty = [names[k] for k, n in counts.items() if n == 0]
    if empty:
        raise FlexsampleError(
            f"class '{empty[0]}' has images in val or test but none for training in "
            f"{listing.source}; every class needs training images"
        )
    for s, per, what in (
        ("val", val_per_class, "val_per_class"),
        ("test", test_per_class, "test_per_class"),
    ):
        if s in given and per is not None:
            raise FlexsampleError(
                f"{what} sets how many {s} images per class are carved from training, but "
                f"{listing.source} gives its own {s} split: drop {what}"
            )
    return counts


def _carved_sizes(
    listing: Listing,
    counts: dict[int, int],
    val_per_class: int | None,
    test_per_class: int | None,
) -> tuple[int, int]:
    """(test, val) images per class carved from training (0: the split is given); every
    class must keep at least one training image."""
    given, names = listing.given, listing.class_names
    smallest = min(counts.values())
    n_test = 0
    if "test" not in given:
        n_test = test_per_class if test_per_class is not None else max(1, min(100, smallest // 5))
    n_val = 0
    if "val" not in given:
        n_val = val_per_class if val_per_class is not None else max(1, min(50, smallest // 10))
    if n_test or n_val:
        need = n_test + n_val + 1
        short = [k for k in range(len(names)) if counts[k] < need]
        if short:
            k = short[0]
            parts_text = " + ".join(f"{s} {n}" for s, n in (("test", n_test), ("val", n_val)) if n)
            raise FlexsampleError(
                f"{listing.where(names[k])} has {counts[k]} image(s); each class needs at least "
                f"{need} ({parts_text} + 1 training image)"
            )
    return n_test, n_val


def _allocate(
    listing: Listing,
    n_test: int,
    n_val: int,
    imbalance_ratio: float | None,
    data_seed: int,
) -> tuple[dict[str, dict[int, list[str]]], list[int], dict[int, int]]:
    """Each split's ids per class, the classes ranked by remaining training images (head
    first, ties by name) and the training images left unused per class (resampling only)."""
    names, given = listing.class_names, listing.given
    rng = np.random.default_rng(data_seed)
    parts: dict[str, dict[int, list[str]]] = {
        s: {k: list(given.get(s, {}).get(k, [])) for k in range(len(names))} for s in SPLITS
    }
    rest: dict[int, list[str]] = {}
    for k in range(len(names)):
        files = list(given["train"][k])
        if n_test or n_val:
            order = rng.permutation(len(files))
            files = [files[i] for i in order]
            if n_test:
                parts["test"][k] = files[:n_test]
            if n_val:
                parts["val"][k] = files[n_test : n_test + n_val]
            files = files[n_test + n_val :]
        rest[k] = files
    ranked = sorted(range(len(names)), key=lambda k: (-len(rest[k]), names[k]))
    unused = dict.fromkeys(range(len(names)), 0)
    if imbalance_ratio is None:
        for k in range(len(names)):
            parts["train"][k] = rest[k]
    else:
        profile = fitted_profile([len(rest[k]) for k in ranked], imbalance_ratio)
        for rank, k in enumerate(ranked):
            parts["train"][k] = rest[k][: profile[rank]]
            unused[k] = len(rest[k]) - profile[rank]
    return parts, ranked, unused


def _split_sources(
    listing: Listing, n_test: int, n_val: int, imbalance_ratio: float | None, data_seed: int
) -> dict[str, str]:
    """Where each split came from, as the table says it."""
    how = {
        s: "given"
        if s in listing.given
        else f"carved per class from training (data seed {data_seed})"
        for s in SPLITS
    }
    how["train"] = "the rest of each class" if n_test or n_val else "given"
    how["train"] += (
        ", the data's own distribution (nothing resampled)"
        if imbalance_ratio is None
        else f", resampled to imbalance ratio {imbalance_ratio:g} (the rest: unused)"
    )
    return how


def _notes(listing: Listing, out_info: dict[str, Any]) -> list[str]:
    """The listing's notes and, if images were skipped, how many and which."""
    notes = list(listing.notes)
    skipped = out_info.get("skipped_missing", 0) + out_info.get("skipped_corrupt", 0)
    if skipped:
        names_ = out_info.get("skipped_names", [])
        notes.append(
            f"skipped {skipped} missing or unreadable image(s): "
            + ", ".join(names_[:5])
            + (", ..." if skipped > 5 else "")
        )
    return notes


def allocation_table(
    dataset: str,
    source: str,
    how: dict[str, str],
    rows: list[dict[str, Any]],
    notes: list[str] = (),  # type: ignore[assignment]
) -> str:
    """The printed table of what went where: one line per class and a total."""
    cols = ["train", "val", "test", "unused", "skipped"]
    total = {c: sum(int(r[c]) for r in rows) for c in cols}
    width = max(5, *(len(str(r["class"])) for r in rows))
    nums = max(6, *(len(str(v)) for v in total.values()))
    lines = [f"{dataset} from {source}:"]
    lines += [f"  {s}: {how[s]}" for s in SPLITS]
    lines += [f"  note: {n}" for n in notes]
    lines.append("  " + "class".ljust(width) + "".join(c.rjust(nums + 2) for c in cols))
    for r in [*rows, {"class": "total", **total}]:
        lines.append(
            "  " + str(r["class"]).ljust(width) + "".join(str(r[c]).rjust(nums + 2) for c in cols)
        )
    return "\n".join(lines)


def _split_folders(root: Path) -> dict[str, Path]:
    """The split folders of `root` ({'train': root/'train', ...}), {} for class folders."""
    found: dict[str, Path] = {}
    for split, candidates in SPLIT_FOLDERS.items():
        present = [root / c for c in candidates if (root / c).is_dir()]
        if len(present) > 1:
            raise FlexsampleError(
                f"{root}: both {present[0].name}/ and {present[1].name}/ found; keep one "
                f"{split} folder"
            )
        if present and scan_classes(present[0]):
            found[split] = present[0]
    if found and "train" not in found:
        raise FlexsampleError(
            f"{root}: has {', '.join(p.name + '/' for p in found.values())} but no train/ "
            "folder with class sub-folders of images (layout: <data-dir>/train/<class>/<image>)"
        )
    return found


def list_image_folder(root: Path) -> Listing:
    """The listing of an image folder: class folders, or train/ (val/, test/) split folders."""
    folders = _split_folders(root)
    if not folders:
        classes = scan_classes(root)
        if len(classes) < 2:
            raise FlexsampleError(
                f"{root}: found {len(classes)} class folder(s) with images; need at least 2 "
                "(layout: <data-dir>/<class>/<image>, or <data-dir>/train/<class>/<image>)"
            )
        names = list(classes)
        given = {"train": {k: [f"{c}/{f}" for f in classes[c]] for k, c in enumerate(names)}}
        layout = "class folders"

        def where(c: str) -> str:
            return f"class folder {root / c}"
    else:
        split_dirs = {p.name for p in folders.values()}
        stray = [c for c in scan_classes(root) if c not in split_dirs]
        if stray:
            raise FlexsampleError(
                f"{root}: has split folders ({', '.join(sorted(split_dirs))}) and also class "
                f"folder(s) {', '.join(stray[:3])} beside them; move them under train/ or "
                "elsewhere"
            )
        per_split = {s: scan_classes(p) for s, p in folders.items()}
        names = sorted({c for classes in per_split.values() for c in classes})
        if len(names) < 2:
            raise FlexsampleError(
                f"{root}: found {len(names)} class folder(s) with images under "
                f"{', '.join(sorted(split_dirs))}; need at least 2"
            )
        given = {
            s: {
                k: [f"{folders[s].name}/{c}/{f}" for f in classes.get(c, [])]
                for k, c in enumerate(names)
            }
            for s, classes in per_split.items()
        }
        layout = "split folders (" + ", ".join(f"{p.name}/" for p in folders.values()) + ")"

        def where(c: str) -> str:
            return f"class folder {folders['train'] / c}"

    def locate(rel: str) -> str | None:  # ids are relative paths under the root
        p = root / rel
        return str(p) if p.is_file() else None

    return Listing(names, given, locate, root, str(root), where, layout)


@DATASETS.register("imagefolder")
def build_imagefolder(
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
    """A folder of one's own images: class folders or train/val/test folders, used as given.

    `progress` (a reporter, see `images.progress_task`) follows file checks and cache building
    and receives the table of what went where (`message`).
    """
    if data_dir is None:
        raise FlexsampleError(
            "--data-dir is required for --dataset imagefolder: a folder with one sub-folder "
            "of images per class (or train/, val/, test/ folders of class sub-folders)"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FlexsampleError(f"--data-dir not found or not a folder: {root}")
    size = check_image_size(image_size)
    return build_from_listing(
        "imagefolder",
        list_image_folder(root),
        imbalance_ratio=imbalance_ratio,
        data_seed=data_seed,
        image_size=size,
        skip_missing=skip_missing,
        cache_dir=cache_dir,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        progress=progress,
    )


def check_image_size(image_size: int | None) -> int:
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 8:
        raise FlexsampleError(f"--image-size must be at least 8, got {size}")
    return size

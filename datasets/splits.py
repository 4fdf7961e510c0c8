"""Make ISIC 2019 long-tailed splits from the official ground-truth CSV (`flexsample splits`).

The output has the official manifest format and label order, so `isic2019` reads it exactly as
it reads the published files: `dic.npy` (every image -> label 0..7, in the order NV, MEL, BCC,
BKL, AK, SCC, VASC, DF), `train_<R>.npy`, `val_<R>.npy`, `test_<R>.npy`. Per class, test holds
`--test-per-class` (100) and val `--val-per-class` (50) images, drawn first, then train takes the
profile count from the rest: with the default `--head-count` 5000, the official table for
R = 100, 200, 500 (which differs from plain rounding by one in places) and round(5000 * R^(-i/7))
otherwise; with another head count n, round(n * R^(-i/7)) (at least 1). All draws come from
`--data-seed`, so a split is reproducible. Every check runs before anything is written, and the
files are written to temporary names first, so a failure leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np

from flexsample.engine.errors import FlexsampleError

from .profiles import (
    ISIC2019_CODES,
    ISIC2019_TEST_PER_CLASS,
    ISIC2019_VAL_PER_CLASS,
    isic2019_train_counts,
    ratio_tag,
)
from .safe_load import load_label_dict, save_label_dict, save_name_array

OFFICIAL_HEAD = 5000  # the head (NV) training count of the official splits

GT_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def read_ground_truth(path: str | Path) -> dict[str, int]:
    """Read ISIC_2019_Training_GroundTruth.csv into {'<image>.jpg': manifest label}.

    Rows must be one-hot over the eight diagnoses; a row marked UNK or with no (or several)
    diagnoses is an error naming the row.
    """
    path = Path(path)
    if path.is_dir():
        raise FlexsampleError(f"--ground-truth {path} is a folder; give the CSV file inside it")
    if not path.is_file():
        raise FlexsampleError(
            f"ground-truth CSV not found: {path}; pass --ground-truth "
            "ISIC_2019_Training_GroundTruth.csv"
        )
    code_to_label = {c: i for i, c in enumerate(ISIC2019_CODES)}
    out: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            need = ["image", *ISIC2019_CODES]
            absent = [c for c in need if c not in header]
            if absent:
                raise FlexsampleError(
                    f"{path}: missing column(s) {', '.join(absent)}; expected image, "
                    f"{', '.join(GT_COLUMNS)}"
                )
            for line, row in enumerate(reader, start=2):
                name = (row["image"] or "").strip()
                if not name:
                    raise FlexsampleError(f"{path}:{line}: empty image name")
                hot = []
                for c in (*ISIC2019_CODES, "UNK"):
                    cell = (row.get(c) or "0").strip()
                    try:
                        value = float(cell)
                    except ValueError:
                        raise FlexsampleError(
                            f"{path}:{line}: non-numeric value {cell!r} in column {c}; the "
                            "diagnosis columns hold 0 or 1 (one-hot)"
                        ) from None
                    if value >= 0.5:
                        hot.append(c)
                if len(hot) != 1 or hot[0] == "UNK":
                    raise FlexsampleError(
                        f"{path}:{line}: image {name} needs exactly one of "
                        f"{', '.join(ISIC2019_CODES)} set, found {hot or 'none'}"
                    )
                key = name if name.lower().endswith(".jpg") else f"{name}.jpg"
                if key in out:
                    raise FlexsampleError(f"{path}:{line}: image {name} listed twice")
                out[key] = code_to_label[hot[0]]
    except UnicodeDecodeError as exc:
        raise FlexsampleError(f"{path}: not a text CSV ({exc.reason})") from None
    except csv.Error as exc:
        raise FlexsampleError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise FlexsampleError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not out:
        raise FlexsampleError(f"{path}: no images listed")
    return out


def train_counts(imbalance_ratio: float, head_count: int = OFFICIAL_HEAD) -> list[int]:
    """Training images per label: the official counts for the default head, else the formula."""
    if isinstance(head_count, bool) or int(head_count) != head_count or head_count < 1:
        raise FlexsampleError(f"--head-count must be an integer >= 1, got {head_count!r}")
    if head_count == OFFICIAL_HEAD:
        return isic2019_train_counts(imbalance_ratio)
    isic2019_train_counts(imbalance_ratio)  # the same check of the ratio
    r = float(imbalance_ratio)
    # round half up, as isic2019_train_counts does for the default head
    return [max(1, int(np.floor(head_count * r ** (-k / 7) + 0.5))) for k in range(8)]


def _check_count(flag: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise FlexsampleError(f"{flag} must be an integer >= {minimum}, got {value!r}")


def make_splits(
    labels: dict[str, int],
    imbalance_ratio: float,
    data_seed: int = 0,
    val_per_class: int = ISIC2019_VAL_PER_CLASS,
    test_per_class: int = ISIC2019_TEST_PER_CLASS,
    head_count: int = OFFICIAL_HEAD,
) -> dict[str, list[str]]:
    """Draw disjoint test / val / train name lists per class (see the module docstring).

    A class with too few images is an error naming it, what it has and what the counts need.
    """
    _check_count("--val-per-class", val_per_class, 1)
    _check_count("--test-per-class", test_per_class, 1)
    _check_count("--data-seed", data_seed, 0)
    counts = train_counts(imbalance_ratio, head_count)
    have = np.bincount(list(labels.values()), minlength=len(ISIC2019_CODES))
    need = [test_per_class + val_per_class + n for n in counts]
    short = [c for c in range(len(ISIC2019_CODES)) if have[c] < need[c]]
    if short:
        c = short[0]
        others = f" (and {len(short) - 1} more class(es) short)" if len(short) > 1 else ""
        raise FlexsampleError(
            f"class {c} ({ISIC2019_CODES[c]}) has {have[c]} images, fewer than the {need[c]} that "
            f"test {test_per_class} + val {val_per_class} + train {counts[c]} need at "
            f"--imbalance-ratio {imbalance_ratio:g} and --head-count {head_count}{others}; lower "
            "--head-count, --val-per-class or --test-per-class"
        )
    rng = np.random.default_rng(data_seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in range(len(ISIC2019_CODES)):
        names = sorted(n for n, y in labels.items() if y == c)
        order = rng.permutation(len(names))
        picked = [names[i] for i in order[: need[c]]]
        parts["test"] += picked[:test_per_class]
        parts["val"] += picked[test_per_class : test_per_class + val_per_class]
        parts["train"] += picked[test_per_class + val_per_class :]
    for key in parts:  # mix the classes, as the official files are
        perm = rng.permutation(len(parts[key]))
        parts[key] = [parts[key][i] for i in perm]
    return parts


def write_splits(
    out: str | Path,
    labels: dict[str, int],
    parts: dict[str, list[str]],
    imbalance_ratio: float,
    overwrite: bool = False,
) -> list[Path]:
    """Write dic.npy and the three name arrays; refuse to replace files unless `overwrite`.

    An existing dic.npy with the same content is kept as is (several ratios share one folder).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FlexsampleError(f"--out is not a folder: {out}")
    tag = ratio_tag(imbalance_ratio)
    targets = {s: out / f"{s}_{tag}.npy" for s in ("train", "val", "test")}
    dic_path = out / "dic.npy"
    write_dic = True
    if dic_path.exists() and not overwrite:
        try:
            same = load_label_dict(dic_path) == labels
        except FlexsampleError:
            same = False
        if not same:
            raise FlexsampleError(
                f"{dic_path} exists with different labels; pass --overwrite to replace it"
            )
        write_dic = False
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FlexsampleError(
            f"refusing to overwrite {', '.join(existing)}; pass --overwrite to replace"
        )
    jobs: list[tuple[Path, object]] = [(targets[sp], parts[sp]) for sp in targets]
    if write_dic:
        jobs.insert(0, (dic_path, labels))
    made_dirs = [d for d in (out, *out.parents) if not d.exists()]
    staged: list[tuple[Path, Path]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, payload in jobs:  # every file to a temporary name first ...
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
            staged.append((tmp, path))
            if isinstance(payload, dict):
                save_label_dict(tmp, payload)
            else:
                save_name_array(tmp, list(payload))  # type: ignore[arg-type]
        written: list[Path] = []
        for tmp, path in staged:  # ... then renamed, once all of them are complete
            os.replace(tmp, path)
            written.append(path)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for d in made_dirs:  # the folders this call created, deepest first, if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise FlexsampleError(f"cannot write splits to {out}: {exc.strerror or exc}") from None
    return written


def generate_splits(
    ground_truth: str | Path,
    imbalance_ratio: float,
    data_seed: int,
    out: str | Path,
    overwrite: bool = False,
    val_per_class: int = ISIC2019_VAL_PER_CLASS,
    test_per_class: int = ISIC2019_TEST_PER_CLASS,
    head_count: int = OFFICIAL_HEAD,
) -> dict[str, np.ndarray]:
    """CSV in, official-format manifests out; returns the per-split class counts."""
    labels = read_ground_truth(ground_truth)
    parts = make_splits(
        labels, imbalance_ratio, data_seed, val_per_class, test_per_class, head_count
    )
    write_splits(out, labels, parts, imbalance_ratio, overwrite=overwrite)
    return {
        s: np.bincount([labels[n] for n in names], minlength=len(ISIC2019_CODES))
        for s, names in parts.items()
    }

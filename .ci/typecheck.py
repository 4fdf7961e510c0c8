#!/usr/bin/env python3
"""mypy on flexsample's packages, under the names they are installed as.

The repository is flat: `engine/` is installed as `flexsample.engine` through pyproject's
`package-dir`, and mypy names a module after its folder, so `mypy engine` checks `engine.loop`
and leaves every `from flexsample.engine... import` unresolved (silently Any with
`ignore_missing_imports`). This script mirrors the `package-dir` mapping as symlinks in
`build/typecheck/flexsample/`, runs `mypy -p flexsample.<package>` there with imported
packages followed silently (their errors are not reported until they are checked too), and
prints the paths as they are in the repository. The settings are pyproject's `[tool.mypy]`.

    python .ci/typecheck.py                      # engine, estimators, policies (CI, pre-commit)
    python .ci/typecheck.py engine workflows     # other folders of the package-dir mapping
    python .ci/typecheck.py -- --no-incremental  # after `--`: more mypy options

Run from anywhere; the exit status is mypy's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LINKS = Path("build", "typecheck")  # relative to ROOT (git-ignored)
CHECKED = ("engine", "estimators", "policies")  # widen from here; keep .ci/run in step


def package_dirs() -> dict[str, str]:
    """pyproject's package-dir: installed package name -> folder in the repository."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


def link_tree(mapping: dict[str, str]) -> dict[str, str]:
    """`build/typecheck/flexsample/...` as symlinks into the repository; returns the prefix
    of each linked folder as mypy prints it -> the folder in the repository."""
    pkg = ROOT / LINKS / "flexsample"
    links: dict[str, Path] = {}  # link name in pkg -> what it points to
    prefixes = {}
    # the top package's own files, then one link per subpackage folder
    for entry in (ROOT / mapping["flexsample"]).iterdir():
        if entry.name != "__pycache__":
            links[entry.name] = entry
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2:
            links[parts[1]] = ROOT / folder
            prefixes[f"{LINKS.as_posix()}/flexsample/{parts[1]}/"] = f"{folder}/"
        elif len(parts) > 2 and folder != "/".join([mapping[".".join(parts[:2])], *parts[2:]]):
            sys.exit(f"typecheck: {name} -> {folder} is not under its parent's folder")
    pkg.mkdir(parents=True, exist_ok=True)
    for old in pkg.iterdir():  # stale links go; current ones stay (two runs at once agree)
        if old.is_symlink() and old.name not in links:
            old.unlink()
    for link, target in links.items():
        relative = os.path.relpath(target, pkg)
        path = pkg / link
        if path.is_symlink() and os.readlink(path) == relative:
            continue
        path.unlink(missing_ok=True)
        path.symlink_to(relative)
    return prefixes


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    mapping = package_dirs()
    folders = {v: k for k, v in mapping.items()}
    unknown = [f for f in argv if f.rstrip("/") not in folders]
    if unknown:
        sys.exit(f"typecheck: not a package folder: {' '.join(unknown)}")
    packages = [folders[f.rstrip("/")] for f in argv or CHECKED]
    prefixes = link_tree(mapping)
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", *extra]
    for package in packages:
        command += ["-p", package]
    env = dict(os.environ, MYPYPATH=str(LINKS))
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pattern = re.compile("|".join(re.escape(p) for p in prefixes))
    for line in proc.stdout:
        sys.stdout.write(pattern.sub(lambda m: prefixes[m.group(0)], line))
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

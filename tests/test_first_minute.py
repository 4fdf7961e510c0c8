"""The first minute of a new user: a typo is refused before torch is imported (from the
registries' generated manifest), a torchvision of another build is named with its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from flexsample._optional import _pair_command
from flexsample.cli.catalogue import registries
from flexsample.engine import registry as registry_module
from flexsample.engine.registry import Registry
from flexsample.workflows.api import resolve

# runs the command line in a fresh interpreter; reports its exit code and whether torch was
# imported by the time it ended
_PROBE = textwrap.dedent(
    """
    import sys
    from flexsample.cli.app import main
    sys.argv = ["flexsample", *sys.argv[1:]]
    try:
        main()
    except SystemExit as exc:
        print("EXIT", exc.code, "torch" in sys.modules)
    """
)

BAD = [
    (["--estimator", "mcdropot"], "unknown estimator 'mcdropot' (did you mean 'mcdropout'?)"),
    (["--estimator", "mcdropout+densty"], "unknown estimator 'densty' (did you mean 'density'"),
    (["--estimator", "density", "--knn", "0"], "invalid --knn = 0"),
    (["--rounds", "0"], "invalid --rounds = 0"),
    (["--policy", "linear", "--patience", "3"], "--patience is an option of policy 'adaptive'"),
    (["--estimator-opt", "mc_sample=3"], "has no option 'mc_sample' (did you mean 'mc_samples'"),
    (["--recipe", "papr"], "unknown recipe 'papr' (did you mean 'paper'?)"),
    (["--loss", "cb-focal", "--focal-gamma", "-1"], "invalid --focal-gamma = -1.0"),
    (["--sampler", "class-awar"], "unknown sampler 'class-awar' (did you mean 'class-aware'"),
    (["--dataset", "digit-lt"], "unknown dataset 'digit-lt' (did you mean 'digits-lt'"),
    (["--log-to", "tensorbord"], "unknown tracker 'tensorbord'"),
    (
        ["--dataset", "imagefolder", "--data-dir", "/no/such/folder"],
        "--data-dir not found or not a folder: /no/such/folder",
    ),
    (
        ["--dataset", "datalist", "--datalist", "/no/such/list.csv"],
        "--datalist not found or not a file: /no/such/list.csv",
    ),
]


BAD_BENCH = [
    (["--estimators", "mcdropot"], "unknown estimator 'mcdropot' (did you mean 'mcdropout'?)"),
    (["--policies", "lineer"], "unknown policy 'lineer' (did you mean 'linear'?)"),
    (["--launcher", "lcal"], "unknown --launcher 'lcal' (did you mean 'local'?)"),
]
CASES = [("run", a, s) for a, s in BAD] + [("bench", a, s) for a, s in BAD_BENCH]


@pytest.mark.parametrize(
    ("command", "args", "says"), CASES, ids=[" ".join([c, *a]) for c, a, _ in CASES]
)
def test_a_bad_flag_is_refused_before_torch_is_imported(tmp_path, command, args, says):
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, command, *args, "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.stdout.split()[-3:] == ["EXIT", "2", "False"], res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], res.stderr
    assert not (tmp_path / "r").exists()


# configurations resolved from the manifest (fresh interpreter, nothing imported) and from the
# registries themselves (this process, built-ins imported) must be the same configuration
CONFIGS = [
    {},
    {"estimator": "mcdropout+density", "knn": 7, "estimator_options": {"combine": "rank-product"}},
    {"policy": "plateau", "allocation": "remaining-difficulty", "anchors": "prototype"},
    {"loss": "ldam", "sampler": "class-aware", "dataset": "synthetic-lt", "image_size": 16},
    {"recipe": "paper"},
    {"estimator": "typicality"},
    {"estimator": "badge", "estimator_options": {"badge_seeding": "greedy"}},
]


def test_the_manifest_resolves_every_configuration_as_the_registries_do():
    code = textwrap.dedent(
        """
        import json, sys, warnings
        warnings.simplefilter("ignore")
        from flexsample.workflows.api import resolve
        out = [resolve(None, c).model_dump(mode="json") for c in json.loads(sys.argv[1])]
        print(json.dumps({"torch": "torch" in sys.modules, "configs": out}))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(CONFIGS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    fresh = json.loads(res.stdout.splitlines()[-1])
    assert fresh["torch"] is False
    for reg in registries():
        reg._load()
    here = [resolve(None, c).model_dump(mode="json") for c in CONFIGS]
    assert fresh["configs"] == here


def test_the_manifest_steps_aside_when_a_package_adds_to_the_group(monkeypatch):
    fresh = Registry("estimator", "flexsample.estimators", builtins="flexsample.estimators")
    assert "mcdropout" in fresh._manifest()["options"]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: ["theirs"])
    monkeypatch.setattr(sys, "path", [*sys.path, "/a/new/folder"])  # the cache follows sys.path
    assert fresh._manifest() is None


def test_a_torchvision_of_another_build_is_one_line_with_its_fix(tmp_path):
    fake = tmp_path / "shadow" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    res = subprocess.run(
        [sys.executable, "-m", "flexsample", "run", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "does not work with torch" in lines[0]
    assert "torchvision::nms does not exist" in lines[0]
    assert "pip install --force-reinstall" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("version", "command"),
    [
        (
            "2.14.1+cpu",
            'pip install --force-reinstall "torch==2.14.1+cpu" torchvision '
            "--index-url https://download.pytorch.org/whl/cpu",
        ),
        ("2.5.0", 'pip install --force-reinstall "torch==2.5.0" torchvision'),
    ],
)
def test_the_fix_names_the_index_of_torchs_build(version, command):
    assert _pair_command(version) == command


def test_the_manifest_is_current():
    """In a fresh interpreter: this one may hold the test plugins' registrations."""
    res = subprocess.run(
        [sys.executable, "-m", "flexsample.cli.catalogue", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr


def test_a_path_option_is_declared_with_the_component():
    """Which options name a folder or file is the component's declaration (opt(path=...)),
    read by the run's check; a kind of path opt does not know is refused."""
    from flexsample.engine.options import opt, path_kind
    from flexsample.workflows.components import registry

    fields = registry("dataset").options("datalist").model_fields
    assert (path_kind(fields["datalist"]), path_kind(fields["data_dir"])) == ("file", "folder")
    assert path_kind(fields["image_size"]) is None
    with pytest.raises(ValueError, match="must be one of"):
        opt("a folder", path="dir")

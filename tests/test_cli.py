"""The `flexsample` command in-process: errors, outputs, determinism, config round trip, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flexsample import __version__

from .conftest import TINY, one_error_line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--estimator", "nope"], ["unknown estimator 'nope'", "mcdropout", "entropy", "random"]),
        (["--policy", "nope"], ["unknown policy 'nope'", "linear", "full"]),
        (["--dataset", "nope"], ["unknown dataset 'nope'", "digits-lt"]),
        (["--allocation", "nope"], ["unknown allocation 'nope'", "proportional"]),
        (["--imbalance-ratio", "0.5"], ["--imbalance-ratio", "0.5", "greater than or equal to 1"]),
        (["--rounds", "0"], ["--rounds", "greater than or equal to 1"]),
        (["--epochs-per-round", "0"], ["--epochs-per-round", "greater than or equal to 1"]),
        (["--mc-samples", "1"], ["--mc-samples", "greater than or equal to 2"]),
        (["--device", "tpu"], ["--device", "accepted: auto, cpu, cuda"]),
        (["--plugin", "no_such_module_xyz"], ["cannot import plugin module 'no_such_module_xyz'"]),
        (["--backbone", "not-a-timm-model"], ["unknown --backbone 'not-a-timm-model'"]),
        (["--pretrained", "/nonexistent/w.pt"], ["--pretrained /nonexistent/w.pt: no such file"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, expected):
    out = tmp_path / "run"
    res = cli("run", *TINY, "--out", out, *args)
    line = one_error_line(res)
    for part in expected:
        assert part in line, line


def test_bad_names_leave_no_run_folder(cli, tmp_path):
    out = tmp_path / "run"
    one_error_line(cli("run", *TINY, "--out", out, "--estimator", "nope"))
    assert not out.exists()


def test_debug_shows_the_traceback(cli, tmp_path):
    res = cli("run", *TINY, "--out", tmp_path / "r", "--estimator", "nope", "--debug")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.toml", "rounds = [", "is not valid TOML"),
        ("c.yaml", "rounds: [1,", "is not valid YAML"),
        ("c.json", "{", "is not valid JSON"),
        ("c.toml", "roundz = 3", "unknown key 'roundz'"),
        ("c.toml", "rounds = 0", "invalid --rounds = 0"),
        ("c.toml", "rounds = 'many'", "invalid --rounds = 'many'"),
        ("c.ini", "rounds=1", "unknown format '.ini'"),
        ("c.yaml", "- 1\n- 2", "must hold a mapping"),
    ],
)
def test_invalid_config_files(cli, tmp_path, name, text, expected):
    cfg = tmp_path / name
    cfg.write_text(text)
    line = one_error_line(cli("run", "--config", cfg, "--out", tmp_path / "r"))
    assert expected in line and str(cfg) in line, line


def test_missing_config_file(cli, tmp_path):
    line = one_error_line(cli("run", "--config", tmp_path / "absent.toml"))
    assert "does not exist" in line


def test_config_precedence_defaults_file_flags(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 7\nepochs-per-round: 3\nestimator: entropy\n")
    res = cli("run", "--config", cfg, "--rounds", "4", "--print-config")
    assert res.exit_code == 0, res.output
    resolved = json.loads(res.stdout)
    assert resolved["rounds"] == 4  # flag beats file
    assert resolved["epochs_per_round"] == 3  # file beats default
    assert resolved["estimator"] == "entropy"
    assert resolved["policy"] == "linear"  # default


def test_version(cli):
    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"flexsample {__version__}"


def test_list_shows_every_kind(cli):
    res = cli("list")
    assert res.exit_code == 0, res.output
    for kind, name in [
        ("estimator", "mcdropout"),
        ("estimator", "entropy"),
        ("estimator", "random"),
        ("policy", "linear"),
        ("policy", "full"),
        ("allocation", "proportional"),
        ("anchors", "random"),
        ("dataset", "digits-lt"),
    ]:
        assert any(ln.split()[:2] == [kind, name] for ln in res.stdout.splitlines()), (kind, name)


def test_run_writes_the_design_outputs(tiny_run: Path):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.json",
        "rounds.jsonl",
        "selection.npz",
        "scores.npz",
        "results.json",
        "curves.png",
        "checkpoint.pt",
        "checkpoint.prev.pt",
        "best.pt",
    } <= names
    rounds = [json.loads(ln) for ln in (tiny_run / "rounds.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert set(r) >= {
            "step",
            "epoch",
            "subset_size",
            "class_counts",
            "val_balanced_accuracy",
            "val_per_class_recall",
            "score_s",
            "train_s",
        }
        assert sum(r["class_counts"]) == r["subset_size"]
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["final_subset_size"] == results["train_size"] == rounds[-1]["subset_size"]
    for key in ("test", "test_last"):
        m = results[key]
        assert set(m) >= {
            "balanced_accuracy",
            "accuracy",
            "macro_f1",
            "per_class_recall",
            "group_recall",
            "confusion_matrix",
        }
        assert set(m["group_recall"]) == {"head", "medium", "tail"}
        assert len(m["per_class_recall"]) == len(results["class_names"]) == 10
        assert np.isclose(m["balanced_accuracy"], np.mean(m["per_class_recall"]))
        assert np.asarray(m["confusion_matrix"]).sum() == 500
    assert 0 <= results["best_val_balanced_accuracy"] <= 1
    sel = np.load(tiny_run / "selection.npz")
    assert len(sel["index"]) == results["train_size"] == len(np.unique(sel["index"]))
    assert set(np.unique(sel["step"])) == {0, 1, 2}
    assert sel["train_ids"].dtype.kind == "U"
    scores = np.load(tiny_run / "scores.npz")
    assert set(scores.files) == {"step", "index", "score"}
    assert np.isfinite(scores["score"]).all() and (scores["step"] == 1).all()
    assert len(scores["score"]) > 0
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert {"config", "versions", "device", "seeds", "split_hash"} <= set(cfg)
    assert cfg["versions"]["torch"]


def test_existing_run_folder_is_not_overwritten(cli, tiny_run):
    before = (tiny_run / "results.json").read_bytes()
    line = one_error_line(cli("run", *TINY, "--out", tiny_run))
    assert "already exists" in line and "--overwrite" in line
    assert (tiny_run / "results.json").read_bytes() == before


def test_same_seed_same_selection_and_config_reproduces(cli, tmp_path, tiny_run):
    again = tmp_path / "again"
    res = cli("run", *TINY, "--out", again)
    assert res.exit_code == 0, res.output
    a, b = np.load(tiny_run / "selection.npz"), np.load(again / "selection.npz")
    for key in ("index", "step", "train_ids"):
        assert np.array_equal(a[key], b[key]), key
    replay = tmp_path / "replay"
    res = cli("run", "--config", tiny_run / "config.json", "--out", replay, "--quiet")
    assert res.exit_code == 0, res.output
    c = np.load(replay / "selection.npz")
    assert np.array_equal(a["index"], c["index"]) and np.array_equal(a["step"], c["step"])
    r1 = json.loads((tiny_run / "results.json").read_text())
    r2 = json.loads((replay / "results.json").read_text())
    assert r1["test"]["confusion_matrix"] == r2["test"]["confusion_matrix"]


def test_other_seed_changes_the_selection(cli, tmp_path, tiny_run):
    res = cli("run", *TINY, "--out", tmp_path / "s1", "--seed", "1")
    assert res.exit_code == 0, res.output
    a, b = np.load(tiny_run / "selection.npz"), np.load(tmp_path / "s1" / "selection.npz")
    # prototype anchors on pixels do not depend on the seed; what the model queries does
    assert np.array_equal(a["index"][a["step"] == 0], b["index"][b["step"] == 0])
    assert not np.array_equal(a["index"][a["step"] == 1], b["index"][b["step"] == 1])


@pytest.mark.parametrize(
    "args", [["--estimator", "entropy"], ["--estimator", "random"], ["--policy", "full"]]
)
def test_other_estimators_and_policies_run(cli, tmp_path, args):
    out = tmp_path / "r"
    res = cli("run", *TINY, "--out", out, *args)
    assert res.exit_code == 0, res.output
    sel = np.load(out / "selection.npz")
    if args == ["--policy", "full"]:
        assert (sel["step"] == 0).all()  # everything from the first epoch
        assert len(np.load(out / "scores.npz")["score"]) == 0  # nothing was scored
    else:
        assert set(np.unique(sel["step"])) == {0, 1, 2}


def test_overwrite_replaces(cli, tmp_path):
    out = tmp_path / "r"
    assert cli("run", *TINY, "--out", out, "--estimator", "random").exit_code == 0
    res = cli("run", *TINY, "--out", out, "--overwrite", "--estimator", "entropy")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["estimator"] == "entropy"


def test_eval_reproduces_the_test_metrics(cli, tiny_run):
    res = cli("eval", tiny_run)
    assert res.exit_code == 0, res.output
    results = json.loads((tiny_run / "results.json").read_text())
    assert f"{results['test']['balanced_accuracy']:.4f}" in res.stdout
    assert "val" in res.stdout and "test" in res.stdout


def test_eval_of_a_non_run_folder(cli, tmp_path):
    line = one_error_line(cli("eval", tmp_path))
    assert "not a run folder" in line


def test_resume_continues_to_the_same_result(cli, tmp_path, tiny_run):
    import torch

    out = tmp_path / "resumed"
    assert cli("run", *TINY, "--out", out).exit_code == 0
    # roll the run back to its state after epoch 5 of 6 and continue it
    state = torch.load(out / "checkpoint.prev.pt")
    assert state["epoch"] == 5
    torch.save(state, out / "checkpoint.pt")
    res = cli("run", "--resume", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    a, b = np.load(tiny_run / "selection.npz"), np.load(out / "selection.npz")
    assert np.array_equal(a["index"], b["index"])
    r1 = json.loads((tiny_run / "results.json").read_text())
    r2 = json.loads((out / "results.json").read_text())
    assert r1["test_last"]["confusion_matrix"] == r2["test_last"]["confusion_matrix"]
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 3


def test_resume_refuses_config_flags(cli, tiny_run):
    # flags equal to the saved ones are accepted (tests/test_resume_safety.py); others are not
    line = one_error_line(cli("run", "--resume", "--out", tiny_run, "--rounds", "4"))
    assert "--resume continues a run with its own config" in line and "--rounds: 3 -> 4" in line

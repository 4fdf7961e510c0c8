"""The Lightning callback: same curriculum as `flexsample run`, resumable, clear errors."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from flexsample.datasets.base import build_dataset
from flexsample.engine.errors import FlexsampleError
from flexsample.policies import anchor_counts
from flexsample.training.models import adapt_model

from .conftest import REPO, TINY

L = pytest.importorskip("lightning")
from flexsample.integrations.lightning import FlexSampling  # noqa: E402

ROUNDS, EPOCHS_PER_ROUND, SEED = 3, 2, 0


class Tiny(L.LightningModule):
    """An MLP on 8x8 digits; `.model` meets the contract through adapt_model."""

    def __init__(self, num_classes: int = 10, contract: bool = True) -> None:
        super().__init__()
        body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        head = nn.Linear(32, num_classes)
        self.model = adapt_model(body, head, 0.5) if contract else nn.Sequential(body, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)


def make_flex(ds, **kw) -> FlexSampling:
    return FlexSampling(
        ds.train.torch_dataset(train=True),
        ds.train.labels,
        ds.num_classes,
        rounds=ROUNDS,
        epochs_per_round=EPOCHS_PER_ROUND,
        seed=SEED,
        **{"anchors": "random", **kw},
    )


def fit(ds, flex, module, max_epochs, ckpt_dir=None, ckpt_path=None, **trainer_kw):
    callbacks = [flex]
    if ckpt_dir is not None:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"reload_dataloaders_every_n_epochs": 1, **trainer_kw},
    )
    val = DataLoader(ds.val.torch_dataset(train=False), batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and small batches
        trainer.fit(module, datamodule=flex.datamodule(val), ckpt_path=ckpt_path)
    return trainer


def expected_sizes(ds) -> list[int]:
    """Hand rule: anchors = min(n_c, max(2, floor(0.1 n_max))); linear: +floor(grow * r/2)."""
    counts = ds.train_counts()
    anchors = int(np.minimum(counts, np.maximum(2, math.floor(0.1 * counts.max()))).sum())
    grow = len(ds.train) - anchors
    return [anchors, anchors + grow // 2, len(ds.train)]


def steps(records) -> list[tuple[int, int, int, int]]:
    return [(r["step"], r["epoch"], r["epochs"], r["subset_size"]) for r in records]


def test_same_subset_sizes_as_flexsample_run(cli, tmp_path, digits, one_torch_thread):
    out = tmp_path / "run"
    res = cli("run", *TINY, "--anchors", "random", "--seed", SEED, "--out", out)
    assert res.exit_code == 0, res.output
    run_records = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]

    torch.manual_seed(0)
    flex = make_flex(digits)
    module = Tiny()
    fit(digits, flex, module, flex.epoch_budget)
    ours = [r.to_json() for r in flex.records]

    assert steps(ours) == steps(run_records)
    assert [r["subset_size"] for r in ours] == expected_sizes(digits)
    assert anchor_counts(digits.train_counts()).sum() == expected_sizes(digits)[0]
    # the same seeded random anchors, and the full split at the end
    assert ours[0]["class_counts"] == run_records[0]["class_counts"]
    assert ours[-1]["class_counts"] == digits.train_counts().tolist()
    assert flex.pool.is_full and len(flex.curriculum.history) == flex.epoch_budget

    # the recall fed to the allocation is the module's own on the validation split
    module.eval()
    with torch.no_grad():
        pred = module(digits.val.in_memory).argmax(1).numpy()
    y = digits.val.labels
    recall = [float((pred[y == c] == c).mean()) for c in range(digits.num_classes)]
    last = flex.curriculum.history[-1]
    assert np.allclose(last.per_class_recall, recall)
    assert last.balanced_accuracy == pytest.approx(np.mean(recall))


def test_checkpoint_resumes_subset_and_step(tmp_path, digits, one_torch_thread):
    torch.manual_seed(0)
    first = make_flex(digits)
    fit(digits, first, Tiny(), 3, ckpt_dir=tmp_path)  # stops inside round 1 (epochs 2-3)
    last = tmp_path / "last.ckpt"
    assert first.step == 1 and first.curriculum.epoch == 3

    # the state loads with weights_only=True and restores pool, step and epoch
    saved = torch.load(last, weights_only=True)["callbacks"][first.state_key]
    restored = make_flex(digits)
    restored.load_state_dict(saved)
    assert np.array_equal(restored.subset_indices(), first.subset_indices())
    assert np.array_equal(restored.pool.entered, first.pool.entered)
    assert (restored.step, restored.curriculum.epoch) == (1, 3)

    # trainer.fit(ckpt_path=...) continues the curriculum to the end of the budget
    resumed = make_flex(digits)
    fit(digits, resumed, Tiny(), resumed.epoch_budget, ckpt_path=last)
    sizes = [r.subset_size for r in resumed.records]
    assert [r.step for r in resumed.records] == [0, 1, 2] and sizes == expected_sizes(digits)
    early = first.pool.entered >= 0
    assert np.array_equal(resumed.pool.entered[early], first.pool.entered[early])
    assert len(resumed.curriculum.history) == 6 and resumed.pool.is_full
    assert resumed.curriculum.history[:3] == first.curriculum.history  # restored, not retrained


def test_model_without_the_contract_is_refused(digits):
    with pytest.raises(FlexsampleError, match=r"Tiny\.model: Sequential has no embed.*adapt_model"):
        fit(digits, make_flex(digits), Tiny(contract=False), 6)


def test_trainer_settings_are_checked(digits):
    with pytest.raises(FlexsampleError, match="reload_dataloaders_every_n_epochs=1"):
        fit(digits, make_flex(digits), Tiny(), 6, reload_dataloaders_every_n_epochs=0)
    with pytest.raises(FlexsampleError, match=r"epoch budget .* = 6: pass Trainer\(max_epochs=6\)"):
        fit(digits, make_flex(digits), Tiny(), 7)


def test_validation_outputs_must_hold_predictions(digits):
    class NoLogits(Tiny):
        def validation_step(self, batch, batch_idx):
            return None

    with pytest.raises(FlexsampleError, match="return the logits"):
        fit(digits, make_flex(digits), NoLogits(), 6, num_sanity_val_steps=0)


def test_prototype_anchors_need_features(digits):
    flex = make_flex(digits, anchors="prototype")
    with pytest.raises(FlexsampleError, match=r"pass FlexSampling\(anchor_features=\.\.\.\)"):
        fit(digits, flex, Tiny(), 6)


def test_example_runs(one_torch_thread):
    path = REPO / "examples" / "lightning_flexsampling.py"
    spec = importlib.util.spec_from_file_location("lightning_flexsampling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = mod.main(rounds=2, epochs_per_round=1, seed=0)
    sizes = [r.subset_size for r in out["records"]]
    assert len(sizes) == 2 and sizes[0] < sizes[1] and out["flex"].pool.is_full
    assert 0.0 <= out["test_balanced_accuracy"] <= 1.0


def test_import_flexsample_does_not_import_lightning():
    code = "import sys, flexsample, flexsample.integrations; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "flexsample.integrations.lightning")
    with pytest.raises(FlexsampleError, match=r"pip install 'flexsample\[lightning\]'"):
        importlib.import_module("flexsample.integrations.lightning")

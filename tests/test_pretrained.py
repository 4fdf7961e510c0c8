"""`--pretrained imagenet`: timm's weights read from a Hugging Face hub cache, offline.

Every test builds its own hub cache folder in tmp (the hub's layout for timm's repository,
with weights the test made itself) or none at all; HF_HUB_OFFLINE is set, or the download
function is replaced, so nothing reaches the network.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import flexsample.datasets  # noqa: F401  (registers digits-lt)
from flexsample.datasets.base import Split, build_dataset
from flexsample.engine.errors import FlexsampleError
from flexsample.training.anchor_features import anchor_features, resolve_feature_source
from flexsample.training.models import create_model, hub_cache_dir
from flexsample.training.ssl import ssl_cache_path

from .conftest import one_error_line

REPO = "timm/resnet18.a1_in1k"  # what timm names the default resnet18 weights
REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(cache: Path, state: dict[str, torch.Tensor]) -> Path:
    """The hub cache layout for REPO holding `state` as model.safetensors; returns the file."""
    from safetensors.torch import save_file

    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def imagenet_like_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A 1000-class resnet18 state dict with values no fresh model has (seeded noise)."""
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            state[k] = v.clone()
        elif k.endswith("running_var"):  # a variance is positive
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=gen) * 0.1
    return state


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, torch.Tensor]]:
    """An offline hub cache (HF_HUB_CACHE) holding our resnet18 weights."""
    cache = tmp_path / "hf" / "hub"
    state = imagenet_like_state()
    fake_hub(cache, state)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, state


def test_loaded_backbone_equals_the_cached_weights(hub) -> None:
    _, state = hub
    model = create_model("resnet18", num_classes=5, in_chans=3, pretrained="imagenet")
    own = model.net.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert backbone and all(torch.equal(own[k], state[k]) for k in backbone)
    # the classifier is the run's own (5 classes), freshly initialised
    assert model.head.weight.shape == (5, 512)
    assert not torch.equal(own["fc.weight"], state["fc.weight"][:5])


def test_one_channel_stem_is_adapted_by_timm(hub) -> None:
    _, state = hub
    model = create_model("resnet18", num_classes=3, in_chans=1, pretrained="imagenet")
    # timm sums the RGB filters of the first convolution for a grey input
    expected = state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.net.conv1.weight, expected, atol=1e-5)
    assert torch.equal(model.net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_hf_home_locates_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = imagenet_like_state(seed=3)
    fake_hub(tmp_path / "home" / "hub", state)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    model = create_model("resnet18", 4, 3, pretrained="imagenet")
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_pretrained_anchor_features_use_the_imagenet_weights(hub) -> None:
    import timm

    _, state = hub
    digits = build_dataset("digits-lt")
    digits.train = Split(
        digits.train.labels[:20], digits.train.ids[:20], digits.train.in_memory[:20]
    )

    def factory():
        return create_model("resnet18", 10, 1, pretrained="imagenet")

    assert resolve_feature_source("auto", 224, "imagenet") == "pretrained"
    feats = anchor_features("pretrained", digits, factory, pretrained="imagenet")
    # reference: a plain timm resnet18 given the same weights by hand
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1).eval()
    weights = {k: v for k, v in state.items() if not k.startswith("fc.")}
    weights["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    ref.load_state_dict(weights)
    with torch.no_grad():
        expected = ref(digits.train.in_memory).numpy()
    assert feats.shape == (20, 512)
    assert np.allclose(feats, expected, atol=1e-4)


def test_ssl_cache_key_names_imagenet_not_a_path(tmp_path: Path) -> None:
    a = ssl_cache_path(tmp_path, "d", "h", 224, "resnet18", 0, 20, "imagenet", "mocov2", 32)
    assert a.name.endswith("-mocov2-b32-imagenet-v3.pt")
    b = ssl_cache_path(tmp_path, "d", "h", 224, "resnet18", 0, 20, None, "mocov2", 32)
    assert a != b and b.name.endswith("-scratch-v3.pt")


def test_offline_without_cache_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FlexsampleError) as err:
        create_model("resnet18", 3, 3, pretrained="imagenet")
    text = str(err.value)
    assert "\n" not in text
    for part in (
        "--pretrained imagenet",
        REPO,
        str(tmp_path / "empty"),
        "HF_HUB_OFFLINE",
        "--pretrained PATH",
        "HF_HUB_CACHE",
    ):
        assert part in text, text


def test_download_only_when_missing_and_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online: a missing file is fetched once through hf_hub_download, then read from the
    cache; a failed download (no network) is one line. The download is a stand-in."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # a hub that accepts connections (checked before a download): a localhost socket
    hub_socket = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub_socket.getsockname()[1]}")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    state = imagenet_like_state(seed=5)
    calls: list[tuple[str, str]] = []

    def download(repo_id, filename, revision=None, cache_dir=None, **_):
        calls.append((repo_id, filename))
        assert Path(cache_dir) == cache
        return str(fake_hub(Path(cache_dir), state))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    first = create_model("resnet18", 3, 3, pretrained="imagenet")
    second = create_model("resnet18", 3, 3, pretrained="imagenet")
    assert calls == [(REPO, "model.safetensors")]
    for m in (first, second):
        assert torch.equal(m.net.conv1.weight, state["conv1.weight"])

    def no_network(repo_id, filename, **_):
        raise LocalEntryNotFoundError("Cannot reach the Hugging Face hub (connection refused)")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(FlexsampleError) as err:
        create_model("resnet18", 3, 3, pretrained="imagenet")
    text = str(err.value)
    assert "\n" not in text and "cannot download" in text and "connection refused" in text
    assert "--pretrained PATH" in text
    hub_socket.close()


def test_cli_missing_cache_and_small_cnn_exit_2(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = [
        "run",
        "--rounds",
        "1",
        "--epochs-per-round",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--pretrained",
        "imagenet",
    ]
    line = one_error_line(cli(*common, "--backbone", "resnet18", "--out", tmp_path / "a"))
    assert "not in the Hugging Face cache" in line and "--pretrained PATH" in line
    line = one_error_line(cli(*common, "--out", tmp_path / "b"))  # digits: auto = small-cnn
    assert "small-cnn" in line and "no ImageNet weights" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

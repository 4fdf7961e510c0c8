"""Classifiers that fit the engine's model contract: embed(x) -> (B, D), head, dropout_p.

Dropout sits only between the pooled features and the final linear layer (the paper's
model), which makes head-only MC dropout exact.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from flexsample._net import connect_problem, proxy_for
from flexsample.engine.errors import FlexsampleError

SMALL_CNN = "small-cnn"
IMAGENET = "imagenet"  # `--pretrained imagenet`: timm's weights through the Hugging Face cache
HUB_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as a true env value
HUB_REACH_TIMEOUT_S = 3.0  # how long the hub may take to accept a connection before a download


class ContractClassifier(nn.Module):
    """forward(x) = head(dropout(embed(x))); subclasses define `embed`."""

    head: nn.Linear
    dropout_p: float

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        return self.head(nn.functional.dropout(f, p=self.dropout_p, training=self.training))


class SmallCNN(ContractClassifier):
    """A compact CNN for tiny images (8x8 digits up to ~64 px)."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32, dropout: float = 0.5):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout_p = float(dropout)
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TimmClassifier(ContractClassifier):
    """Any timm backbone: forward_features + forward_head(pre_logits=True), then our head."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_chans: int = 3,
        dropout: float = 0.5,
        weights_file: str | Path | None = None,
    ):
        """`weights_file`: timm's own pretrained weights (see `imagenet_weights_file`), loaded
        by timm, which drops their classifier and adapts the stem to `in_chans`."""
        super().__init__()
        import timm

        extra = {}
        if weights_file is not None:
            extra = {"pretrained_cfg_overlay": {"file": str(weights_file)}}
        try:
            self.net = timm.create_model(
                backbone,
                pretrained=weights_file is not None,
                num_classes=num_classes,
                in_chans=in_chans,
                drop_rate=0.0,
                **extra,
            )
        except Exception as exc:  # timm: "Unknown model (...)", or an unreadable weights file
            if weights_file is not None and timm.is_model(backbone):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise FlexsampleError(
                    f"--pretrained {IMAGENET}: cannot load {weights_file} into '{backbone}': "
                    f"{first}; delete it from the cache to download it again"
                ) from None
            if not isinstance(exc, RuntimeError):
                raise
            raise FlexsampleError(
                f"unknown --backbone '{backbone}': {exc}; use '{SMALL_CNN}' or a timm model "
                "name (see timm.list_models())"
            ) from None
        head = self.net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise FlexsampleError(
                f"backbone '{backbone}' has no single linear classifier head "
                f"({type(head).__name__}); pick a timm model with a linear head"
            )
        self.head = head
        self.dropout_p = float(dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class AdaptedModel(ContractClassifier):
    """Makes a user's (embedding module, linear head) pair fit the contract."""

    def __init__(self, embedding: nn.Module, head: nn.Linear, dropout: float = 0.5):
        super().__init__()
        self.embedding = embedding
        self.head = head
        self.dropout_p = float(dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.embedding(x), 1)


def adapt_model(embedding: nn.Module, head: nn.Linear, dropout: float = 0.5) -> AdaptedModel:
    return AdaptedModel(embedding, head, dropout)


def create_model(
    backbone: str,
    num_classes: int,
    in_chans: int,
    dropout: float = 0.5,
    pretrained: str | None = None,
) -> ContractClassifier:
    """The classifier for `--backbone` (small-cnn or a timm name).

    `pretrained`: a local weights file, or `imagenet` for timm's pretrained weights of the
    backbone, read from the Hugging Face hub cache (downloaded into it when missing and the
    hub is not offline)."""
    if not 0.0 <= dropout < 1.0:
        raise FlexsampleError(f"dropout must be in [0, 1), got {dropout}")
    if pretrained == IMAGENET:
        if backbone == SMALL_CNN:
            raise FlexsampleError(
                f"--pretrained {IMAGENET}: the {SMALL_CNN} backbone (also what --backbone auto "
                "picks for images of 32 px or less) has no ImageNet weights; pick a timm "
                "--backbone such as resnet18, or pass --pretrained PATH (a local weights file)"
            )
        weights = imagenet_weights_file(backbone)
        return TimmClassifier(backbone, num_classes, in_chans, dropout, weights_file=weights)
    if backbone == SMALL_CNN:
        model: ContractClassifier = SmallCNN(num_classes, in_chans=in_chans, dropout=dropout)
    else:
        model = TimmClassifier(backbone, num_classes, in_chans=in_chans, dropout=dropout)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (the hub reads it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in HUB_TRUE


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the environment names now (HF_HUB_CACHE, HF_HOME...).

    Same precedence as huggingface_hub, evaluated per call so a changed environment (a test,
    a notebook) is honoured after the hub was imported."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def imagenet_weights_file(backbone: str) -> Path:
    """The local file of timm's pretrained weights for `backbone` (a timm name, tag allowed).

    Looks in the hub cache first (no network); downloads into it only when the file is
    missing and HF_HUB_OFFLINE is not set. Any failure is one FlexsampleError line saying how
    to fill the cache or what to pass instead."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(backbone)
    except RuntimeError:
        cfg = None
    if cfg is None and not timm.is_model(backbone.split(".")[0]):
        raise FlexsampleError(
            f"unknown --backbone '{backbone}'; use '{SMALL_CNN}' or a timm model name "
            "(see timm.list_models(pretrained=True))"
        )
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        raise FlexsampleError(
            f"--pretrained {IMAGENET}: timm has no Hugging Face hub weights for '{backbone}' "
            "(see timm.list_models(pretrained=True)); pass --pretrained PATH (a local weights "
            "file) instead"
        )
    repo, _, revision = hub_id.partition("@")
    names = (
        [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    )
    cache = hub_cache_dir()
    found = _cached_hub_file(repo, revision or None, names, cache)
    if found is not None:
        return found
    fill = (
        f'fill the cache on a machine with network (python -c "import timm; '
        f"timm.create_model('{repo.split('/')[-1]}', pretrained=True)\") and copy "
        f"{cache} here (or point HF_HUB_CACHE / HF_HOME at a copy), or pass --pretrained PATH "
        "(a local weights file)"
    )
    if hub_offline():
        raise FlexsampleError(
            f"--pretrained {IMAGENET}: the weights of '{backbone}' ({repo}) are not in the "
            f"Hugging Face cache {cache} and HF_HUB_OFFLINE is set; {fill}"
        )
    endpoint = hub_endpoint()
    problem = unreachable(endpoint)  # seconds, not the hub client's half minute of retries
    if problem is not None:
        raise FlexsampleError(
            f"--pretrained {IMAGENET}: cannot download the weights of '{backbone}' ({repo}) "
            f"into {cache}: the Hugging Face hub {endpoint} is unreachable ({problem}); {fill}"
        )
    return _download_hub_file(repo, revision or None, names, cache, backbone, fill)


def hub_endpoint() -> str:
    """The Hugging Face hub's address: HF_ENDPOINT read now, else huggingface_hub's own."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def unreachable(url: str, timeout: float = HUB_REACH_TIMEOUT_S) -> str | None:
    """Why the host of `url` (or the proxy HTTP(S)_PROXY routes it through) does not accept a
    TCP connection within `timeout` seconds, or None when it does. The name lookup counts in
    the timeout (the attempt runs in a thread that is left behind if it hangs)."""
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError as exc:  # a port that is not a number
        return f"not a valid URL: {exc}"
    address = proxy_for(parts.scheme, address[0]) or address
    if not address[0]:
        return "no host name"
    return connect_problem(address, timeout)


def _cached_hub_file(repo: str, revision: str | None, names: list[str], cache: Path) -> Path | None:
    """The first of `names` already in the hub cache for `repo` (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        path = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
        if isinstance(path, str) and Path(path).is_file():
            return Path(path)
    return None


def _download_hub_file(
    repo: str, revision: str | None, names: list[str], cache: Path, backbone: str, fill: str
) -> Path:
    """Download the first of `names` the repository has into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    reason = "no weights file in the repository"
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would add lines to our one-line error
    try:
        for name in names:
            try:
                return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache))
            except LocalEntryNotFoundError as exc:  # offline, no network, hub unreachable
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                break
            except EntryNotFoundError:
                continue  # not this file name: try the next one
            except Exception as exc:  # network, HTTP and disk errors of the download
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                break
    finally:
        hub_log.setLevel(level)
    raise FlexsampleError(
        f"--pretrained {IMAGENET}: cannot download the weights of '{backbone}' ({repo}) into "
        f"{cache}: {reason}; {fill}"
    )


def load_pretrained(model: ContractClassifier, path: str) -> None:
    """Load backbone weights from a local file; the classifier head keeps its fresh init."""
    p = Path(path)
    if not p.is_file():
        raise FlexsampleError(
            f"--pretrained {path}: no such file (a local weights file, or {IMAGENET} for "
            "timm's ImageNet weights)"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FlexsampleError(f"--pretrained {path}: cannot read weights ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    target = model.net if isinstance(model, TimmClassifier) else model
    own = target.state_dict()
    head_name = next(n for n, m in target.named_modules() if m is model.head)
    usable = {
        k: v
        for k, v in state.items()
        if k in own and not k.startswith(head_name + ".") and tuple(v.shape) == tuple(own[k].shape)
    }
    if not usable:
        raise FlexsampleError(
            f"--pretrained {path}: no tensor matches the '{type(target).__name__}' backbone "
            "(wrong architecture?)"
        )
    target.load_state_dict(usable, strict=False)

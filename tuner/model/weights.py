"""Where pretrained weights come from, and how a weights file is read without unpickling it.

Lookup for the default ImageNet weights (torchvision's IMAGENET1K_V1, `resnet50-0676ba61.pth`):
a file the user names; the torch hub cache (`$TORCH_HOME/hub/checkpoints`); a download into that
cache when online. Offline with nothing cached, the model starts from random initialisation and the
`WeightsSource` says so, with the file that was looked for, where, and how to provide it.

Every file goes through `torch.load(..., weights_only=True)` (or safetensors): tensors, numbers,
strings and containers only. A file that needs more than that is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.models import ResNet50_Weights

from ..errors import TunerError

IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1
IMAGENET_URL = IMAGENET_WEIGHTS.url
IMAGENET_FILENAME = IMAGENET_URL.rsplit("/", 1)[-1]  # resnet50-0676ba61.pth
IMAGENET_SHA256_PREFIX = IMAGENET_FILENAME.rsplit("-", 1)[-1].split(".")[0]  # torchvision names files by hash
DOWNLOAD_TIMEOUT_S = 20
# After a failed download, callers within this many seconds get that failure instead of a new try: the
# studio resolves the weights on every Model tab change, and each try could wait DOWNLOAD_TIMEOUT_S.
DOWNLOAD_RETRY_AFTER_S = 300
_download_lock = threading.Lock()  # one download at a time; whoever waited finds the file in the cache
_last_failure: tuple[float, Path, str] | None = None  # when, into which file, why
# A checkpoint dict may hold its state_dict under one of these keys (tuner, lightning, common scripts).
STATE_DICT_KEYS = ("model_state", "state_dict", "model", "model_state_dict", "net")
KEY_PREFIXES = ("module.", "model.", "backbone.")


@dataclass
class WeightsSource:
    """Where the starting weights came from; saved in checkpoints and shown wherever weights matter."""

    kind: str  # "imagenet" | "file" | "random"
    pretrained: bool
    path: str = ""  # the file actually read ("" for random)
    origin: str = ""  # "torch hub cache", "downloaded", "user file"
    message: str = ""  # one sentence for people
    searched: list[str] = field(default_factory=list)
    fix: str = ""  # for missing ImageNet weights: how to provide them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadReport:
    """Which tensors of a weights file went into the model, matched by name and shape."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.loaded)} tensors loaded, {len(self.skipped)} skipped, {len(self.missing)} missing"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} ({why})" for n, why in self.skipped[:5])
            text += " ..." if len(self.skipped) > 5 else ""
        if self.missing:
            text += "; missing (kept at initialisation): " + ", ".join(self.missing[:5])
            text += " ..." if len(self.missing) > 5 else ""
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "skipped": [list(s) for s in self.skipped], "missing": list(self.missing)}


def hub_checkpoint_dir() -> Path:
    """torch hub's cache folder for weights; honours $TORCH_HOME like torchvision does."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return os.environ.get("TUNER_OFFLINE", "").lower() in ("1", "true", "yes")


def resolve_weights(weights: str = "imagenet", allow_download: bool = True) -> WeightsSource:
    """Decide where the starting weights come from, downloading ImageNet weights once if allowed."""
    if weights == "random":
        return WeightsSource("random", False, message="Random initialisation, as asked (no pretrained weights).")
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TunerError(f"Weights file not found: {weights}. Give the path to a .pth/.pt/.safetensors file, "
                             "or use 'imagenet' for torchvision's ResNet50 weights.")
        return WeightsSource("file", True, str(path), "user file", f"Weights from your file {path.name}.")

    cached = hub_checkpoint_dir() / IMAGENET_FILENAME
    searched = [str(cached)]
    if cached.is_file():
        return WeightsSource("imagenet", True, str(cached), "torch hub cache",
                             f"ImageNet weights ({IMAGENET_FILENAME}) from the torch hub cache.", searched)
    reason = "downloads are off (TUNER_OFFLINE=1)" if offline() else "downloads are off for this call"
    if allow_download and not offline():
        reason = _download_once(cached)
        if reason is None:
            return WeightsSource("imagenet", True, str(cached), "downloaded",
                                 f"ImageNet weights ({IMAGENET_FILENAME}) downloaded into the torch hub cache.",
                                 searched)
    fix = f"copy {IMAGENET_FILENAME} (from {IMAGENET_URL}) into {cached.parent}, or pass its path as the weights file"
    return WeightsSource(
        "random", False, message=(
            f"No pretrained weights: {IMAGENET_FILENAME} is not in {cached.parent} and {reason}. Training starts "
            f"from random initialisation, which needs far more data and epochs. To fix: {fix}."),
        searched=searched, fix=fix)


def _download_once(cached: Path) -> str | None:
    """Download the ImageNet file into `cached` unless another caller just did, or just failed to (then
    its reason, with when). None once the file is there."""
    global _last_failure
    with _download_lock:
        if cached.is_file():  # another session's download finished while this one waited
            return None
        if _last_failure and _last_failure[1] == cached:
            ago = time.monotonic() - _last_failure[0]
            if ago < DOWNLOAD_RETRY_AFTER_S:
                return (f"the download failed {ago:.0f} s ago ({_last_failure[2]}; tried again "
                        f"{DOWNLOAD_RETRY_AFTER_S // 60} minutes after a failure)")
        try:
            download_imagenet_weights(cached)
        except (OSError, urllib.error.URLError, TunerError) as exc:
            _last_failure = (time.monotonic(), cached, short_reason(exc))
            return f"the download failed ({_last_failure[2]})"
        _last_failure = None
        return None


def short_reason(exc: BaseException) -> str:
    """An exception's first line, cut at a word (not mid-word) when it runs past 120 characters."""
    reason = str(getattr(exc, "reason", None) or exc).strip()
    reason = reason.splitlines()[0] if reason else ""
    if len(reason) > 120:
        reason = reason[:120].rsplit(" ", 1)[0] + " ..."
    return reason or type(exc).__name__


def download_imagenet_weights(target: Path) -> None:
    """Download into the hub cache through a temp file; check torchvision's hash prefix before keeping it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(IMAGENET_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(IMAGENET_SHA256_PREFIX):
            raise TunerError(f"the downloaded {IMAGENET_FILENAME} has the wrong checksum")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a state_dict file, a checkpoint dict holding one, or .safetensors; never unpickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            data: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise TunerError(f"{path.name} is not a readable .safetensors file ({short_reason(exc)}).") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise refused_file_error(path.name, exc, "Save just the weights: "
                                     "torch.save(model.state_dict(), 'weights.pth').") from None
        except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
            raise TunerError(f"{path.name} is not a readable PyTorch weights file ({short_reason(exc)}).") from None
    return extract_state_dict(data, path.name)


def refused_file_error(name: str, exc: pickle.UnpicklingError, fix: str) -> TunerError:
    """Why torch.load(weights_only=True) refused a file: foreign Python objects, or not a torch file at all."""
    if "GLOBAL" in str(exc):
        return TunerError(f"{name} holds Python objects beyond tensors and plain containers, so it is refused "
                          f"(loading it could run code). {fix}")
    return TunerError(f"{name} is not a readable PyTorch file: it is damaged, in another format, or a pickle that "
                      f"safe loading (weights_only=True) refused. {fix}")


def extract_state_dict(data: Any, name: str = "file") -> dict[str, torch.Tensor]:
    if isinstance(data, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise TunerError(f"{name} holds no state_dict (a mapping of parameter names to tensors).")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise TunerError(f"{name} holds no tensors: save weights with torch.save(model.state_dict(), PATH).")
    return tensors


def apply_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str = "file") -> LoadReport:
    """Copy tensors whose name and shape match; report what loaded, what was skipped and what is missing."""
    own = model.state_dict()
    tensors = strip_prefixes(tensors, own)
    report = LoadReport()
    matched: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key not in own:
            report.skipped.append((key, "not in ResNet50"))
        elif tuple(value.shape) != tuple(own[key].shape):
            report.skipped.append((key, f"shape {list(value.shape)} in file, {list(own[key].shape)} in model"))
        else:
            matched[key] = value
            report.loaded.append(key)
    # BatchNorm's num_batches_tracked is a step counter, not a weight (it only matters with momentum=None,
    # which ResNet50 does not use), and older torchvision files lack it: reporting its 53 absences as
    # "missing" would bury the tensors that really are.
    report.missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if not matched:
        raise TunerError(f"No tensor in {name} matches ResNet50 by name and shape: use ResNet50 weights "
                         "(torchvision's names, such as layer1.0.conv1.weight).")
    model.load_state_dict(matched, strict=False)
    return report


def strip_prefixes(tensors: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes such as DDP's 'module.' when that makes the names match the model."""
    for prefix in KEY_PREFIXES:
        if not any(k in own for k in tensors) and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors

"""Model bundles: what training writes and inference reads, so the two can't disagree.

A bundle is a directory (local path or object-storage URI) holding two files:

    bundle.json   {"format": "maskray-bundle", "version": 1,
                   "model": ModelConfig as a dict (architecture, classes, bands, normalisation,
                            resize policy, inference thresholds),
                   "classes", "bands", "normalization": {"mean", "std"}: copies for readers
                            that don't know ModelConfig (checked against "model" on load),
                   "tiling": {"tile_size", "overlap"}, "created": ISO-8601 UTC,
                   "parameters": int, "software": {package: version},
                   "training": dict | null, "metrics": dict | null,
                   "files": {"weights.pt": sha256 hex}}
    weights.pt    the model's state dict (torch.save), loaded with weights_only=True

The model id is the first 16 hex digits of weights.pt's sha256: output partitions are keyed by
it (DESIGN.md), so two different weight files never share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.build import FIRST_CONV_KEYS, build_maskrcnn, count_parameters
from model.config import ModelConfig
from model.weights import check_sha256, is_uri, load_state_dict_bytes, read_bytes
from pipeline.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

FORMAT = "maskray-bundle"
VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS = "weights.pt"
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"
_MASK_KEY = "roi_heads.mask_predictor.mask_fcn_logits.weight"


@dataclass(frozen=True)
class Bundle:
    """A bundle's metadata, read from bundle.json; weights are read only by `build_model`.

    path: the bundle directory as given (local path or URI).
    sha256: hex sha256 of weights.pt as recorded in bundle.json.
    metadata: the whole bundle.json, for fields this class does not name.
    """

    path: str
    model: ModelConfig
    tile_size: int
    overlap: int
    sha256: str
    created: str
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def model_id(self) -> str:
        """First 16 hex digits of the weights' sha256; names the output partition."""
        return self.sha256[:16]

    @property
    def weights_path(self) -> str:
        return _join(self.path, WEIGHTS)

    def load_state_dict(self) -> dict[str, Tensor]:
        """weights.pt as CPU tensors, after checking its sha256 and its class and band counts."""
        data = read_bytes(self.weights_path, what=f"bundle {self.path}: {WEIGHTS}")
        check_sha256(data, self.sha256, self.weights_path)
        state = load_state_dict_bytes(data, self.weights_path)
        check_state_dict(state, self.model, f"bundle {self.path}")
        return state

    def build_model(self, device: str | torch.device = "cpu", paste_masks: bool = True,
                    ) -> nn.Module:
        """The bundle's MaskRCNN with its weights loaded strictly, in eval mode on `device`.

        Always re-checks the sha256: this is the trust boundary for weights that run on a GPU.
        """
        state = self.load_state_dict()
        model = build_maskrcnn(self.model, paste_masks=paste_masks, load_backbone_weights=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:2])[:300]
            raise BundleError(f"bundle {self.path}: weights do not fit a {self.model.backbone} "
                              f"Mask R-CNN: {detail}") from None
        return model.to(device).eval()


def check_state_dict(state: dict[str, Tensor], cfg: ModelConfig, what: str) -> None:
    """BundleError unless `state`'s class outputs and first-conv bands match `cfg`."""
    first_key = FIRST_CONV_KEYS[cfg.backbone]
    for key in (_CLS_KEY, _MASK_KEY, first_key):
        if key not in state:
            raise BundleError(f"{what}: weights are not a {cfg.backbone} Mask R-CNN state dict "
                              f"(no {key!r})")
    for key, head in ((_CLS_KEY, "box classifier"), (_MASK_KEY, "mask predictor")):
        outputs = state[key].shape[0]
        if outputs != cfg.num_classes:
            raise BundleError(f"{what}: class-count mismatch: {len(cfg.classes)} classes "
                              f"({cfg.num_classes} outputs with background) in the config, "
                              f"{outputs} outputs in the weights' {head}")
    bands = state[first_key].shape[1]
    if bands != cfg.in_channels:
        raise BundleError(f"{what}: band-count mismatch: {cfg.in_channels} bands in the config, "
                          f"the weights' first convolution takes {bands}")


# ----------------------------------------------------------------------------- save


def save_bundle(path: str | os.PathLike, model: nn.Module, model_cfg: ModelConfig,
                tile_size: int, overlap: int, training: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, *, overwrite: bool = False) -> Bundle:
    """Write `model`'s weights and metadata as a bundle at `path` and return it.

    Local paths are written into a temporary sibling directory and renamed into place, so a crash
    never leaves half a bundle. On object storage weights.pt is written before bundle.json, each
    in one request, so a reader that finds bundle.json also finds the weights it names (an
    overwrite in progress shows as a checksum error, never as wrong weights).
    """
    path = os.fspath(path)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_state_dict(state, model_cfg, "save_bundle")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    sha256 = hashlib.sha256(weights).hexdigest()
    meta = _metadata(model, model_cfg, tile_size, overlap, sha256, training, metrics)
    text = json.dumps(meta, indent=2, sort_keys=False).encode() + b"\n"
    files = {WEIGHTS: weights, BUNDLE_JSON: text}
    if is_uri(path):
        _write_remote(path, files, overwrite)
    else:
        _write_local(Path(path), files, overwrite)
    log.info("saved bundle %s (model id %s)", path, sha256[:16])
    return _bundle_from_metadata(path, meta)


def _metadata(model: nn.Module, cfg: ModelConfig, tile_size: int, overlap: int, sha256: str,
              training: dict | None, metrics: dict | None) -> dict[str, Any]:
    mean, std = cfg.normalization()
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "classes": list(cfg.classes),
        "bands": list(cfg.bands),
        "normalization": {"mean": list(mean), "std": list(std)},
        "tiling": {"tile_size": int(tile_size), "overlap": int(overlap)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": count_parameters(model)[0],
        "software": {name: _version(name) for name in ("maskray", "torch", "torchvision")},
        "training": training,
        "metrics": metrics,
        "files": {WEIGHTS: sha256},
    }


def _write_local(final: Path, files: dict[str, bytes], overwrite: bool) -> None:
    if final.exists():
        if not overwrite:
            raise BundleError(f"{final} already exists (pass overwrite=True or --overwrite "
                              f"to replace it)")
        if not final.is_dir() or (any(final.iterdir()) and not (final / BUNDLE_JSON).exists()):
            raise BundleError(f"{final} exists and is not a model bundle; refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a bundle is meant to be shared
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_remote(uri: str, files: dict[str, bytes], overwrite: bool) -> None:
    import fsspec

    from pipeline.storage import translating_errors

    with translating_errors(uri):  # credentials, endpoint: one line, not a botocore traceback
        fs, root = fsspec.core.url_to_fs(uri)
        root = root.rstrip("/")
        if fs.exists(f"{root}/{BUNDLE_JSON}") and not overwrite:
            raise BundleError(f"{uri} already holds a bundle (pass overwrite=True or --overwrite "
                              f"to replace it)")
        for name in (WEIGHTS, BUNDLE_JSON):  # bundle.json last: it is what makes a bundle
            fs.pipe_file(f"{root}/{name}", files[name])


# ----------------------------------------------------------------------------- load


def load_bundle(path_or_uri: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read bundle.json and check it; with `verify`, also read weights.pt and check its sha256,
    class count and band count. Raises BundleError (one line) on any problem.

    `verify=False` reads only bundle.json and checks that weights.pt exists; `build_model` still
    verifies the weights, so an inference actor can skip the extra read.
    """
    path = os.fspath(path_or_uri)
    raw = read_bytes(_join(path, BUNDLE_JSON), what=f"{path} is not a model bundle: {BUNDLE_JSON}")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: {BUNDLE_JSON} is not valid JSON ({exc})") from None
    bundle = _bundle_from_metadata(path, meta)
    if not _exists(bundle.weights_path):
        raise BundleError(f"bundle {path}: {WEIGHTS} is missing")
    if verify:
        bundle.load_state_dict()
    return bundle


def verify_bundle(path_or_uri: str | os.PathLike) -> Bundle:
    """Full check: metadata, sha256, class and band counts, and a strict load of every tensor."""
    bundle = load_bundle(path_or_uri, verify=False)
    bundle.build_model()
    return bundle


def _bundle_from_metadata(path: str, meta: Any) -> Bundle:
    from pipeline.config import config_from_dict  # pipeline.config imports model.config

    where = f"bundle {path}"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"{where}: unknown format {got!r} (expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise BundleError(f"{where}: unsupported bundle version {meta.get('version')!r} "
                          f"(this maskray reads version {VERSION})")
    try:
        cfg = config_from_dict(meta.get("model"), ModelConfig)
        tiling = meta["tiling"]
        tile_size, overlap = int(tiling["tile_size"]), int(tiling["overlap"])
        sha256 = str(meta["files"][WEIGHTS])
    except ConfigError as exc:
        raise BundleError(f"{where}: model section: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: {BUNDLE_JSON} lacks or mangles {exc}") from None
    _check_copies(meta, cfg, where)
    return Bundle(path=path, model=cfg, tile_size=tile_size, overlap=overlap, sha256=sha256,
                  created=str(meta.get("created", "")), training=meta.get("training"),
                  metrics=meta.get("metrics"), metadata=meta)


def _check_copies(meta: dict[str, Any], cfg: ModelConfig, where: str) -> None:
    """The top-level classes / bands / normalization must agree with the model section."""
    mean, std = cfg.normalization()
    expected = {"classes": list(cfg.classes), "bands": list(cfg.bands),
                "normalization": {"mean": list(mean), "std": list(std)}}
    for key, want in expected.items():
        if key in meta and meta[key] != want:
            raise BundleError(f"{where}: {BUNDLE_JSON} {key!r} {meta[key]!r} disagrees with its "
                              f"model section {want!r}")


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}" if is_uri(path) else os.path.join(path, name)


def _exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.isfile(path)
    import fsspec

    from pipeline.storage import translating_errors

    with translating_errors(path):
        fs, inner = fsspec.core.url_to_fs(path)
        return fs.exists(inner)


def _version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"

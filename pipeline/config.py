"""Configuration: defaults, then a YAML file, then `--set key=value` overrides (nanoGPT-style).

The config is a tree of frozen dataclasses. Loading validates every key against that tree: an
unknown key or a value of the wrong type is a one-line `ConfigError` naming the dotted key, e.g.
`unknown config key 'tiling.tile_sise' (tiling has: tile_size, overlap, ...)`.

Field types the loader understands: int, float (ints accepted), bool, str, tuple[int|float|str,
...] (YAML lists), and `X | None`. Keep new fields to those so every key stays settable from the
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import ModelConfig, check_cpu_precision
from pipeline.errors import ConfigError
from pipeline.storage import StorageConfig


@dataclass(frozen=True)
class TilingConfig:
    """How scenes are cut into model inputs and stitched back (DESIGN.md, Tiling and stitching).

    tile_size, overlap: pixels; neighbouring tiles share `overlap` pixels.
    merge_threshold: pieces of one class from neighbouring tiles are merged when their
        intersection over the smaller piece, inside the shared band, exceeds this.
    """

    tile_size: int = 512
    overlap: int = 64
    merge_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError("tile_size must be at least 16 pixels")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError("overlap must be in [0, tile_size)")
        if not 0.0 < self.merge_threshold <= 1.0:
            raise ValueError("merge_threshold must be in (0, 1]")


@dataclass(frozen=True)
class InferConfig:
    """Batch inference resources and policies.

    batch_size: tiles per forward pass.
    num_actors: TilePredictor actors (0 = one per GPU, or 1 on a CPU-only cluster).
    actor_cpus: CPUs reserved per actor; fractional so that read tasks still get a CPU on small
        machines (a pool that takes every CPU starves the readers and the job hangs).
    shard_scenes: scenes per shard: one shard is read, predicted, stitched and committed as one
        unit, so a kill loses at most the shards in flight.
    max_error_rate: fraction of scenes allowed to fail before the exit code is non-zero.
    max_pixels: scenes declaring more pixels than this are refused before any read.
    device: "auto" (cuda when available), "cpu" or "cuda".
    inflight_mib: object-store budget of the inference graph, MiB (0 = auto: four batches per
        actor of float32 tiles, at least 64 MiB). Reads that run ahead of the model wait instead
        of queueing a whole scene's tiles in memory: this is what keeps memory flat in scene size.
    threads: torch intra-op threads per actor (0 = auto, `pipeline.dataflow.actor_threads`: a
        GPU actor's reserved CPUs; on CPU, the cluster's CPUs shared between the actors, since
        the CPU kept for the read tasks is mostly idle).
    cpu_precision: "fp32", "bf16" (bfloat16 autocast of the model on CPU actors: 2.0x the
        predictions a second on an AMX CPU, scene AP50 0.142 -> 0.137 for the demo's 8-epoch
        model) or "auto" (bf16 where the CPU has AMX or AVX-512 BF16, else fp32). On CUDA the
        model always autocasts to bf16.
    channels_last: run the model's convolutions in NHWC (`torch.channels_last`): 1.25x the
        images/s of NCHW on this project's CPU machine with the same detections (bench/forward.py);
        false for a device where NHWC is slower.
    stall_timeout_s: a run whose graph makes no progress for this long fails in one line
        (Ray Data's no-progress guard), e.g. when other jobs hold the CPUs its read tasks need;
        the shards committed so far are kept. -1: wait for ever (for a cluster that scales up
        slowly).
    """

    batch_size: int = 4
    num_actors: int = 0
    actor_cpus: float = 1.0
    shard_scenes: int = 16
    max_error_rate: float = 0.0
    max_pixels: int = 40_000 * 40_000
    device: str = "auto"
    inflight_mib: int = 0
    threads: int = 0
    cpu_precision: str = "fp32"
    channels_last: bool = True
    stall_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        check_cpu_precision(self.cpu_precision)
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.stall_timeout_s <= 0 and self.stall_timeout_s != -1:
            raise ValueError("stall_timeout_s must be > 0, or -1 to wait for ever")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.num_actors < 0:
            raise ValueError("num_actors must be >= 0")
        if self.actor_cpus < 0:
            raise ValueError("actor_cpus must be >= 0")
        if self.shard_scenes < 1:
            raise ValueError("shard_scenes must be >= 1")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError("max_error_rate must be in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be one of auto, cpu, cuda")
        if self.inflight_mib < 0:
            raise ValueError("inflight_mib must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Training with Ray Train (`maskray train`).

    data: the training images: a COCO JSON (polygon or RLE masks) or a VGG Image Annotator JSON
        (polygon, rect, circle, ellipse regions) of images; or a directory of GeoTIFF scenes with
        one GeoJSON of footprints per scene, cut into chips on the fly.
    data_root: folder the JSON's file names are relative to ("" = the JSON's own folder).
    labels: GeoJSON folder of a scene directory ("" = DATA/labels, else DATA/../labels).
    chip_size: chip side cut from scenes (0 = tiling.tile_size); empty_chip_rate: share of the
        chips without any object that are kept (the rest are left out, fixed per run).
    val_data: COCO JSON of validation images, evaluated after every epoch (COCO mask and box
        AP, validation losses); "" = hold out val_fraction of `data` instead (0 = no validation).
        With validation, checkpoints are ranked by segm_AP and the best becomes the bundle.
    out: run directory: Ray Train checkpoints, metrics.jsonl, and the exported bundle/.
    epochs; batch_size: images per worker per step (the global batch is batch_size x workers).
    base_lr: learning rate per 16 images (torchvision's detection reference: 0.02); the run uses
        base_lr x global batch / 16, after a linear warm-up of warmup_steps from 0.001 x that.
    schedule: "cosine" (to 0 at the last step) or "step" (x 0.1 at 2/3 and 8/9 of the epochs).
    optimizer: "sgd" (momentum, L2 weight decay; the reference recipe) or "adamw" (AdamW: decoupled
        weight decay, where 0.05 is usual; momentum unused).
    momentum, weight_decay: of the optimiser. clip_norm: gradient-norm clip (0 = off).
    amp: float16 autocast with a GradScaler, on GPU only.
    cpu_precision: "fp32", "bf16" (bfloat16 autocast of the forward on CPU workers; weights and
        gradients stay float32) or "auto" (bf16 where the CPU has AMX or AVX-512 BF16, else fp32).
        See model/precision.py.
    augment: random flips and 90-degree rotations (overhead imagery has no up), and with it
        scale_jitter (zoom in [1/(1+j), 1+j], cropped or padded back) and photometric
        (brightness and contrast each x [1-p, 1+p]); 0 turns either off.
    num_workers, use_gpu: Ray Train ScalingConfig (DDP: nccl on GPUs, gloo on CPU).
    keep_checkpoints, max_failures: Ray Train CheckpointConfig / FailureConfig.
    seed: torch / numpy seed (each worker adds its rank).
    """

    data: str = ""
    data_root: str = ""
    labels: str = ""
    chip_size: int = 0
    empty_chip_rate: float = 0.1
    val_data: str = ""
    val_fraction: float = 0.0
    out: str = "train-out"
    epochs: int = 12
    batch_size: int = 2
    base_lr: float = 0.02
    warmup_steps: int = 50
    schedule: str = "cosine"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 10.0
    amp: bool = True
    cpu_precision: str = "fp32"
    augment: bool = True
    scale_jitter: float = 0.25
    photometric: float = 0.2
    num_workers: int = 2
    use_gpu: bool = False
    keep_checkpoints: int = 2
    max_failures: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 1:
            raise ValueError("epochs, batch_size and num_workers must be >= 1")
        if self.base_lr <= 0 or self.warmup_steps < 0 or self.clip_norm < 0:
            raise ValueError("base_lr must be > 0, warmup_steps and clip_norm >= 0")
        if self.schedule not in ("cosine", "step"):
            raise ValueError("schedule must be cosine or step")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.chip_size < 0 or not 0 <= self.empty_chip_rate <= 1:
            raise ValueError("chip_size must be >= 0 and empty_chip_rate in [0, 1]")
        if not 0 <= self.val_fraction < 1 or self.scale_jitter < 0 or not 0 <= self.photometric < 1:
            raise ValueError("val_fraction and photometric must be in [0, 1), scale_jitter >= 0")
        if self.keep_checkpoints < 1 or self.max_failures < 0:
            raise ValueError("keep_checkpoints must be >= 1 and max_failures >= 0")
        check_cpu_precision(self.cpu_precision)


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration; what `maskray config show` prints and every output stores."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults < YAML file at `path` < `key=value` overrides (dotted keys, YAML values)."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict[str, Any], cls: type = Config) -> Any:
    """Build `cls` (a frozen dataclass) from a nested dict, validating keys and types."""
    return _build(cls, tree, prefix="")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that YAML / JSON can hold and `config_from_dict` reads."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_hash(cfg: Any) -> str:
    """sha256 of the canonical JSON of a config (or a section); stable across runs and machines."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see `maskray config show`)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set tiling.tile_size=256 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []) or [])


def section_given(args: argparse.Namespace, section: str) -> bool:
    """Whether the user set any key of `section` (in --config or with --set), as opposed to
    leaving it at its defaults, e.g. so a model bundle's own tile policy can apply."""
    if any(o.split("=", 1)[0].strip().startswith(section + ".") for o in args.overrides or []):
        return True
    return bool(args.config) and section in _read_yaml(Path(args.config))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)  # e.g. "expected ',' or '}', but got ..."
        why = f": {' '.join(str(problem).split())}" if problem else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}{why}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal text and let type checking judge it
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(tree, dict):
        raise ConfigError(f"config key {where!r} must be a section (mapping), got {_show(tree)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(tree) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r} "
                          f"({where} has: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in tree:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, tree[name], prefix + name + ".")
        else:
            kwargs[name] = _coerce(kind, tree[name], prefix + name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid config in {where}: {exc}") from None


def _coerce(kind: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`; return it in the field's own type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        errors = []
        for option in inner:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list of {item_kind.__name__}, got {_show(value)}")
        return tuple(_coerce(item_kind, v, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {key!r} has an unsupported type {kind!r}")
    raise ConfigError(f"config key {key!r} must be {_article(kind.__name__)}, got {_show(value)}")


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"

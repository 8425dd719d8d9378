"""Locating and reading the shipped configs (models, hyps, data, accelerate) with clear errors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A config file is missing, malformed or holds unknown keys; the message names the file."""


def config_root() -> Path:
    """The shipped configs/ folder: inside an installed package, else at the top of a source checkout."""
    installed = Path(__file__).resolve().parent / "configs"
    if (installed / "models").is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "configs"


def available(kind: str) -> list[str]:
    """Names of the shipped configs of one kind ('models', 'hyps', 'data', 'accelerate')."""
    return sorted(p.stem for p in (config_root() / kind).glob("*.yaml"))


def resolve_config(name: str | Path, kind: str) -> Path:
    """A path as given if it exists, else a shipped config by name ('yolov5s', 'yolov5s.yaml', 'scratch-low')."""
    path = Path(name)
    if path.is_file():
        return path
    folder = config_root() / kind
    stem = path.name if path.suffix in ("", ".yml", ".yaml") else None
    if stem is not None:
        stem = Path(stem).stem if path.suffix else stem
        for candidate in (stem, f"hyp.{stem}"):
            shipped = folder / f"{candidate}.yaml"
            if shipped.is_file():
                return shipped
    raise ConfigError(f"{name}: no such file, and not a shipped {kind} config "
                      f"(available: {', '.join(available(kind))})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping safely (no object construction); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def check_options(*checks: tuple[bool, str]) -> None:
    """Raise ConfigError with the message of the first (ok, message) check that failed."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# 4x YOLOv5's largest models' 1280: one 3-channel image at this size is 600 MB as float, a mosaic 4x that
MAX_IMGSZ = 8192


def name_check(name: str) -> tuple[bool, str]:
    """--name is a folder under --project: not empty, not the project itself or its parent."""
    return name.strip() not in ("", ".", ".."), f"--name must name a folder under --project, got {name!r}"


def inference_checks(imgsz: int, conf_thres: float, iou_thres: float, max_det: int, batch_size: int
                     ) -> list[tuple[bool, str]]:
    """The option checks val and detect share."""
    return [(32 <= imgsz <= MAX_IMGSZ, f"--imgsz must be from 32 to {MAX_IMGSZ}, got {imgsz}"),
            (0 <= conf_thres <= 1, f"--conf-thres must be in [0, 1], got {conf_thres}"),
            (0 <= iou_thres <= 1, f"--iou-thres must be in [0, 1], got {iou_thres}"),
            (max_det >= 1, f"--max-det must be at least 1, got {max_det}"),
            (batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}")]


def check_keys(data: dict[str, Any], allowed: set[str], required: set[str], source: str) -> None:
    """Raise on keys outside `allowed` or missing from `required`, naming `source`."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(map(repr, missing))}")


HYP_KEYS = {"lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "box",
            "cls", "cls_pw", "obj", "obj_pw", "iou_t", "anchor_t", "fl_gamma", "hsv_h", "hsv_s", "hsv_v", "degrees",
            "translate", "scale", "shear", "perspective", "flipud", "fliplr", "mosaic", "mixup", "copy_paste"}
OPTIONAL_HYP_KEYS = {"anchors", "label_smoothing"}  # anchors per level (evolve), smoothing (older hyps)
# the anchor-free (YOLOv5u) recipe: no objectness, anchors or target-matching thresholds; a DFL gain instead
ANCHOR_FREE_HYP_KEYS = (HYP_KEYS - {"cls_pw", "obj", "obj_pw", "iou_t", "anchor_t", "fl_gamma"}) | {"dfl"}


# (low, high, low included) per hyperparameter: values outside make training fail or mean nothing
HYP_RANGES = {
    "lr0": (0, 10, False), "lrf": (0, 10, False), "momentum": (0, 1, True), "weight_decay": (0, 1, True),
    "warmup_epochs": (0, 1000, True), "warmup_momentum": (0, 1, True), "warmup_bias_lr": (0, 10, True),
    "box": (0, 1000, True), "cls": (0, 1000, True), "cls_pw": (0, 1000, False), "obj": (0, 1000, True),
    "obj_pw": (0, 1000, False), "iou_t": (0, 1, False), "anchor_t": (1, 1000, True), "fl_gamma": (0, 100, True),
    "hsv_h": (0, 1, True), "hsv_s": (0, 1, True), "hsv_v": (0, 1, True), "degrees": (0, 360, True),
    "translate": (0, 1, True), "scale": (0, 1, True), "shear": (0, 90, True), "perspective": (0, 0.1, True),
    "flipud": (0, 1, True), "fliplr": (0, 1, True), "mosaic": (0, 1, True), "mixup": (0, 1, True),
    "copy_paste": (0, 1, True), "anchors": (1, 20, True), "label_smoothing": (0, 1, True), "dfl": (0, 1000, True)}


def check_hyp_for_model(values: Mapping[str, float], anchor_free: bool, source: str) -> list[str]:
    """Refuse the anchor-free recipe for an anchor-based model (its objectness and matching values are missing);
    for an anchor-free model, return the YOLOv5-only keys of a YOLOv5 hyp, which it leaves unused."""
    if anchor_free:
        return sorted(k for k in values if k in HYP_KEYS - ANCHOR_FREE_HYP_KEYS or k in ("anchors", "label_smoothing"))
    missing = sorted(HYP_KEYS - set(values))
    if missing:
        raise ConfigError(f"{source} is a recipe for anchor-free (YOLOv5u) models, without {', '.join(missing)} that "
                          f"this anchor-based model needs; use a YOLOv5 hyp (scratch-low, scratch-med, scratch-high)")
    return []


def load_hyp(name: str | Path) -> dict[str, float]:
    """A hyperparameter yaml (shipped name like 'scratch-low' or a path), every YOLOv5 key present, no others,
    each a finite number in its range."""
    path = resolve_config(name, "hyps")
    hyp = read_yaml(path)
    required = ANCHOR_FREE_HYP_KEYS if "dfl" in hyp else HYP_KEYS
    check_keys(hyp, required | OPTIONAL_HYP_KEYS, required, str(path))
    bad = [k for k, v in hyp.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise ConfigError(f"{path}: hyperparameters must be numbers: {', '.join(bad)}")
    for key, value in hyp.items():
        low, high, low_included = HYP_RANGES[key]
        if not (math.isfinite(value) and (low <= value if low_included else low < value) and value <= high):
            bracket = "[" if low_included else "("
            raise ConfigError(f"{path}: {key}: {value} is outside {bracket}{low}, {high}]")
    return {k: float(v) for k, v in hyp.items()}


@dataclass(frozen=True)
class OptimizerHyp:
    """The optimizer's and LR schedule's hyperparameters."""

    lr0: float = 0.01  # initial learning rate
    lrf: float = 0.01  # final learning rate, as a fraction of lr0
    momentum: float = 0.937  # SGD momentum, Adam beta1
    weight_decay: float = 0.0005  # at the nominal batch of 64


@dataclass(frozen=True)
class WarmupHyp:
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1


@dataclass(frozen=True)
class LossHyp:
    """Loss gains (box, cls, obj as in the hyp file, or scaled: loss.scale_loss_gains) and target assignment."""

    box: float = 0.05
    cls: float = 0.5
    cls_pw: float = 1.0  # BCE positive weight, classes
    obj: float = 1.0
    obj_pw: float = 1.0  # BCE positive weight, objectness
    iou_t: float = 0.2  # unused by YOLOv5 v7.0's loss; kept for its hyp files
    anchor_t: float = 4.0  # a target matches an anchor when their sides differ by less than this factor
    fl_gamma: float = 0.0  # focal loss gamma (0: plain BCE)
    label_smoothing: float = 0.0
    dfl: float = 1.5  # anchor-free models: distribution focal loss gain


@dataclass(frozen=True)
class AugmentHyp:
    """Training augmentation: HSV gains, the random warp, flip probabilities, mosaic, mixup, copy-paste."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0
    copy_paste: float = 0.0


Slice = TypeVar("Slice")


def hyp_slice(kind: type[Slice], values: Mapping[str, float]) -> Slice:
    """The part of a flat hyp mapping that `kind` holds (its defaults for keys the mapping lacks)."""
    return kind(**{f.name: float(values[f.name]) for f in fields(kind) if f.name in values})


@dataclass(frozen=True)
class Hyp:
    """A hyp file, sliced by the part of training each set of values drives; `values` as read (for hyp.yaml)."""

    optimizer: OptimizerHyp
    warmup: WarmupHyp
    loss: LossHyp
    augment: AugmentHyp
    anchors: float | None  # anchors per level, evolved by `evolve` (None: the model yaml's)
    values: Mapping[str, float]

    @classmethod
    def from_values(cls, values: Mapping[str, float]) -> Hyp:
        return cls(hyp_slice(OptimizerHyp, values), hyp_slice(WarmupHyp, values), hyp_slice(LossHyp, values),
                   hyp_slice(AugmentHyp, values), values.get("anchors") or None, dict(values))


# sized so `yolo-accel train` reaches mAP50 > 0.5 on the demo val split in under 4 minutes on 2 CPU cores:
# with scratch-low, mAP50 is about 0.4-0.6 after 30 epochs and 0.7-0.9 after 50, depending on the seed
DEMO_DEFAULTS = {"epochs": 50, "imgsz": 128}
DEFAULTS = {"epochs": 100, "imgsz": 640}  # YOLOv5's defaults for any other dataset


def parse_snapshot_interval(text: str) -> tuple[int, float] | None:
    """--snapshot-interval: "" (off) -> (0, 0); "500" -> every 500 batches; "30m" / "30min" -> every 30 minutes;
    None if it is neither."""
    match = re.fullmatch(r"\s*(\d+)\s*(m|min|minutes?)?\s*", text or "0")
    if match is None or (int(match[1]) == 0 and text not in ("", "0")):
        return None
    return (0, float(match[1])) if match[2] else (int(match[1]), 0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Every `yolo-accel train` option (YOLOv5 train.py names); written to the run folder as opt.yaml."""

    data: str = "demo"
    model: str = ""  # model yaml (YOLOv5's --cfg); empty: the weights' own, else yolov5n
    weights: str = ""
    hyp: str = ""  # empty: scratch-low, or anchor-free for YOLOv5u models
    epochs: int | None = None  # None: 100, or 50 on the demo data
    batch_size: int = 16  # total over all processes; -1 = AutoBatch (CUDA)
    imgsz: int | None = None  # None: 640, or 128 on the demo data
    rect: bool = False
    resume: str | None = None  # None: a new run; "": the latest run under project; else that run's folder
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    cache: str | None = None
    image_weights: bool = False
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = ""  # empty: SGD, or auto for YOLOv5u models
    sync_bn: bool = False
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: tuple[int, ...] = (0,)
    save_period: int = -1
    seed: int = 0
    close_mosaic: int | None = None  # None: 0, or 10 for YOLOv5u models
    mixed_precision: str = "auto"
    device: str = ""
    log_with: str = "none"
    quad: bool = False  # YOLOv5's --quad: four images per training sample at twice the size
    save_fp32: bool = False  # weights files in fp32 (default: fp16, as YOLOv5 strips them)
    candidate: bool = False  # an evolve candidate: weights only at the end and no final validation (as YOLOv5)
    val_epochs: tuple[int, ...] = ()  # with --noval, also validate after these epoch counts (evolve's rungs)
    snapshot_interval: str = ""  # also save the training state every N batches ("500") or minutes ("30m"); off: ""
    compile: bool = False  # torch.compile the training model (Accelerate's dynamo_backend "inductor")

    def for_model(self, anchor_free: bool) -> TrainConfig:
        """The recipe defaults that depend on the model: YOLOv5's, or Ultralytics 8's for YOLOv5u models."""
        return replace(self, hyp=self.hyp or ("anchor-free" if anchor_free else "scratch-low"),
                       optimizer=self.optimizer or ("auto" if anchor_free else "SGD"),
                       close_mosaic=self.close_mosaic if self.close_mosaic is not None else (10 if anchor_free else 0))

    def resolved(self) -> TrainConfig:
        """Fill the data-dependent defaults and check option values."""
        defaults = DEMO_DEFAULTS if self.data == "demo" else DEFAULTS
        config = replace(self, epochs=self.epochs if self.epochs is not None else defaults["epochs"],
                         imgsz=self.imgsz if self.imgsz is not None else defaults["imgsz"],
                         model=self.model or ("" if self.weights else "yolov5n"), freeze=tuple(self.freeze),
                         val_epochs=tuple(self.val_epochs))
        checks = [
            (config.optimizer in ("", "SGD", "Adam", "AdamW", "auto"),
             f"--optimizer must be SGD, Adam, AdamW or auto, got {config.optimizer!r}"),
            (config.mixed_precision in ("auto", "no", "fp16", "bf16"),
             "--mixed-precision must be auto, no, fp16 or bf16"),
            (config.cache in (None, "ram", "disk"), "--cache must be ram or disk"),
            (config.epochs >= 1, "--epochs must be at least 1"),
            (config.workers >= 0, f"--workers must be 0 or more, got {config.workers}"),
            (config.close_mosaic is None or config.close_mosaic >= 0,
             f"--close-mosaic must be 0 or more, got {config.close_mosaic}"),
            (all(f >= 0 for f in config.freeze), "--freeze takes layer counts or indices of 0 or more"),
            (config.batch_size >= 1 or config.batch_size == -1, "--batch-size must be positive, or -1 for AutoBatch"),
            (32 <= config.imgsz <= MAX_IMGSZ, f"--imgsz must be from 32 to {MAX_IMGSZ}, got {config.imgsz}"),
            (0 <= config.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            name_check(config.name),
            (parse_snapshot_interval(config.snapshot_interval) is not None,
             f"--snapshot-interval takes batches (500) or minutes (30m), got {config.snapshot_interval!r}"),
        ]
        check_options(*checks)
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainConfig:
        data = dict(data)
        if "cfg" in data and "model" not in data:  # opt.yaml written before the field was renamed
            data["model"] = data.pop("cfg")
        if isinstance(data.get("resume"), bool):  # opt.yaml written when resume was a flag
            data["resume"] = "" if data["resume"] else None
        names = {f.name for f in fields(cls)}
        check_keys(data, names, set(), source)
        for key in ("freeze", "val_epochs"):  # lists in yaml
            if data.get(key) is not None:
                data = {**data, key: tuple(data[key])}
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["freeze"], data["val_epochs"] = list(self.freeze), list(self.val_epochs)
        return data

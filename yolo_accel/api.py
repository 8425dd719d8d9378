"""A plain Python API mirroring the CLI: YOLO("best.safetensors").predict("img.jpg"), .val(data=...), .train(...),
.export(format="onnx")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .callbacks import Callbacks, TrainingEvent
from .checkpoint import load_model
from .config import ConfigError, TrainConfig, check_options, inference_checks
from .predict import Detections, list_sources, predict


class YOLO:
    """Weights (.safetensors or Ultralytics .pt) or a model yaml name, with predict / val / train / export."""

    def __init__(self, weights: str | Path = "yolov5n", device: str | None = None):
        self.source = str(weights)
        self.callbacks = Callbacks()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if Path(self.source).suffix in (".safetensors", ".pt"):
            self.model = load_model(self.source, device=self.device).eval()
        else:
            from .model import build_model

            self.model = build_model(self.source).to(self.device).eval()

    def add_callback(self, event: str, hook: Callable[[TrainingEvent], None]) -> YOLO:
        """Run `hook(event_info)` at `event` of every later .train() (events: yolo_accel.callbacks.EVENTS)."""
        self.callbacks.add(event, hook)
        return self

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    def predict(self, source: str | Path | list[str | Path], imgsz: int = 640, conf: float = 0.25, iou: float = 0.45,
                max_det: int = 1000, classes: list[int] | None = None) -> list[Detections]:
        """Detections per image (boxes_xyxy, scores, classes in original pixels) for a path, folder, glob or list."""
        check_options(*inference_checks(imgsz, conf, iou, max_det, batch_size=1))
        sources = source if isinstance(source, list) else [source]
        paths = [p for s in sources for p in list_sources(s)]
        return predict(self.model, paths, imgsz=imgsz, conf_thres=conf, iou_thres=iou, max_det=max_det,
                       classes=classes)

    def val(self, data: str = "demo", **options: Any):
        """`yolo-accel val` on these weights; options are its flags (batch_size=, imgsz=, ...). Returns the result."""
        from .val import validate

        if Path(self.source).suffix not in (".safetensors", ".pt"):
            raise ConfigError("val needs trained weights: YOLO('best.safetensors').val(...)")
        _, results = validate(data, [self.source], **options)
        return results[0]

    def train(self, data: str = "demo", **options: Any) -> Path:
        """`yolo-accel train` starting from these weights (or this yaml); options are its flags. Returns the run
        folder (raises yolo_accel.train.TrainingInterrupted if stopped by a signal after saving its state)."""
        from .train import train

        is_weights = Path(self.source).suffix in (".safetensors", ".pt")
        config = TrainConfig(data=data, weights=self.source if is_weights else "",
                             model="" if is_weights else self.source)
        return train(replace(config, **options), callbacks=self.callbacks)

    def export(self, format: str = "torchscript", **options: Any) -> list[Path]:
        """`yolo-accel export` of these weights (format torchscript or onnx, or several comma-separated); options
        are its flags (imgsz=, batch_size=, opset=, dynamic=, half=, simplify=, device=). Returns the files."""
        from .export import export

        if Path(self.source).suffix not in (".safetensors", ".pt"):
            raise ConfigError("export needs a weights file: YOLO('best.safetensors').export(...)")
        return export(self.source, include=tuple(format.replace(",", " ").split()), **options)

"""YOLOv5 model family: blocks, the yaml-driven DetectionModel, and model summaries."""

from .yolo import Detect, DetectionModel, build_model

__all__ = ["Detect", "DetectionModel", "build_model"]

"""yolo-accel: YOLOv5 (v7.0 semantics) object detection on Hugging Face Accelerate."""

__version__ = "0.1.0"

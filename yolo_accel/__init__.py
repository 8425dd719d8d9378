"""yolo-accel: YOLOv5 (v7.0 semantics) object detection on Hugging Face Accelerate."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so `import yolo_accel` stays light and the CLI can configure threads before torch loads
    if name == "YOLO":
        from .api import YOLO

        return YOLO
    raise AttributeError(f"module 'yolo_accel' has no attribute {name!r}")

"""detect(...): `yolo-accel detect` — batched inference on images, annotated copies, YOLO-format labels, crops."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .boxes import xyxy_to_xywhn
from .checkpoint import load_model
from .config import ConfigError, check_options, inference_checks, name_check
from .data.augment import letterbox
from .data.images import ImageDecodeError, open_image, read_for_size
from .data.sources import IMAGE_FORMATS, expand_entry, only_images
from .draw import annotate
from .files import check_output_folder, child_path, increment_path
from .model.yolo import DetectionModel
from .nms import non_max_suppression, scale_boxes

LOGGER = logging.getLogger("yolo_accel")


@dataclass
class Detections:
    """Detections in one image, in its original pixels: boxes_xyxy (n, 4), scores (n,), classes (n,); the image's
    (height, width), upright."""

    path: Path
    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    names: list[str]
    shape: tuple[int, int] = (0, 0)

    def summary(self) -> str:
        counts = torch.bincount(self.classes.long(), minlength=len(self.names)).tolist() if len(self.classes) else []
        parts = [f"{n} {self.names[c]}{'s' if n > 1 else ''}" for c, n in enumerate(counts) if n]
        return ", ".join(parts) if parts else "(no detections)"


def list_sources(source: str | Path) -> list[Path]:
    """Images from a file, a folder, a glob or a .txt list of paths (relative lines: to the list's folder)."""
    files = expand_entry(Path(str(source)))
    if files is None:
        raise ConfigError(f"{source}: no such image, folder, glob or .txt list")
    images = only_images(files)
    if not images:
        raise ConfigError(f"{source}: no images ({', '.join(IMAGE_FORMATS)}) found")
    return images


def output_stems(paths: list[Path]) -> list[str]:
    """A file stem per image for what detect writes: its own, or with _2, _3, ... when images from different folders
    share a name (so none overwrites another)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 1
        while stem.lower() in used:
            n += 1
            stem = f"{path.stem}_{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def label_rows(boxes_xyxy: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, width: int, height: int,
               save_conf: bool) -> str:
    """A YOLO label file's text: `class x y w h [conf]` per box, normalised to the image size."""
    xywhn = xyxy_to_xywhn(boxes_xyxy.float(), width, height).tolist()
    rows = []
    for box, score, cls in zip(xywhn, scores.tolist(), classes.int().tolist()):
        values = [cls, *box, score] if save_conf else [cls, *box]
        rows.append(("%g " * len(values)).rstrip() % tuple(values) + "\n")
    return "".join(rows)


@torch.no_grad()
def predict(model: DetectionModel, paths: list[Path], *, imgsz: int = 640, conf_thres: float = 0.25,
            iou_thres: float = 0.45, max_det: int = 1000, classes: list[int] | None = None, agnostic: bool = False,
            batch_size: int = 16, half: bool = False) -> list[Detections]:
    """Letterbox to imgsz, run `model` (eval, on its device) in batches, NMS, and map boxes to original pixels."""
    device = next(model.parameters()).device
    stride = max(int(model.stride.max()), 32)
    size = -(-imgsz // stride) * stride
    names = list(model.names)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        originals, batch, pads = [], [], []
        readable = []
        for path in chunk:
            try:
                image, (h0, w0) = read_for_size(path, size)  # big JPEGs decode reduced
            except (ImageDecodeError, OSError, SyntaxError, ValueError) as err:
                LOGGER.warning(f"WARNING ⚠️ {path}: skipped, cannot be decoded ({err})")
                continue
            readable.append(path)
            boxed, ratio, pad = letterbox(image, size, auto=False, scaleup=True, stride=stride)
            originals.append((h0, w0))
            batch.append(torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))))
            # from the original's pixels to the model input's
            pads.append(((ratio[0] * image.shape[1] / w0, ratio[1] * image.shape[0] / h0), pad))
        if not batch:
            continue
        images = torch.stack(batch).to(device).float() / 255
        with torch.autocast(device.type, dtype=torch.float16, enabled=half and device.type == "cuda"):
            output = model(images)
        keep = non_max_suppression(output.float(), conf_thres, iou_thres, classes=classes, agnostic=agnostic,
                                   max_det=max_det, objectness=not model.anchor_free)
        for path, shape, (ratio, pad), det in zip(readable, originals, pads, keep):
            det = det.clone()
            scale_boxes(images.shape[2:], det[:, :4], shape, ((ratio[1], ratio[0]), pad))
            results.append(Detections(path, det[:, :4].cpu(), det[:, 4].cpu(), det[:, 5].cpu(), names,
                                      (int(shape[0]), int(shape[1]))))
    return results


def detect(source: str, weights: str, *, imgsz: int = 640, conf_thres: float = 0.25, iou_thres: float = 0.45,
           max_det: int = 1000, classes: list[int] | None = None, agnostic_nms: bool = False, save_txt: bool = False,
           save_conf: bool = False, save_crop: bool = False, nosave: bool = False, line_thickness: int = 3,
           hide_labels: bool = False, hide_conf: bool = False, half: bool = False, project: str = "runs/detect",
           name: str = "exp", exist_ok: bool = False, batch_size: int = 16, device: str = "") -> Path:
    """Run detection on `source` and save what was asked into runs/detect/exp{N}; returns that folder."""
    check_options(*inference_checks(imgsz, conf_thres, iou_thres, max_det, batch_size),
                  (line_thickness >= 1, f"--line-thickness must be at least 1, got {line_thickness}"),
                  name_check(name))
    check_output_folder(Path(project) / name)
    paths = list_sources(source)
    target = torch.device("cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda")
    model = load_model(weights, device=target).eval().fuse()
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    start = time.perf_counter()
    results = predict(model, paths, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                      classes=classes, agnostic=agnostic_nms, batch_size=batch_size, half=half)
    per_image_ms = (time.perf_counter() - start) / len(paths) * 1e3
    stems = output_stems([det.path for det in results])
    for i, det in enumerate(results, 1):
        height, width = det.shape
        stem = stems[i - 1]
        # upright RGB, as the model saw it; decoded again only for what draws on it
        image = open_image(det.path) if save_crop or not nosave else None
        LOGGER.info(f"image {i}/{len(results)} {det.path}: {height}x{width} {det.summary()}")
        if save_txt:
            (save_dir / "labels").mkdir(exist_ok=True)
            (save_dir / "labels" / f"{stem}.txt").write_text(
                label_rows(det.boxes_xyxy, det.scores, det.classes, width, height, save_conf))
        if save_crop:
            for j, (box, cls) in enumerate(zip(det.boxes_xyxy.tolist(), det.classes.int().tolist())):
                # class names come from the weights file: never a path as they stand
                folder = child_path(save_dir / "crops", det.names[cls], fallback=f"class{cls}")
                folder.mkdir(parents=True, exist_ok=True)
                image.crop(tuple(round(v) for v in box)).save(folder / f"{stem}_{j}.jpg")
        if not nosave:
            annotate(image, det.boxes_xyxy, det.scores, det.classes, det.names, line_thickness=line_thickness,
                     hide_labels=hide_labels, hide_conf=hide_conf).save(save_dir / f"{stem}{det.path.suffix}")
    LOGGER.info(f"Speed: {per_image_ms:.1f}ms per image (load, pre-process, inference, NMS) at {imgsz} px")
    LOGGER.info(f"Results saved to {save_dir}")
    return save_dir

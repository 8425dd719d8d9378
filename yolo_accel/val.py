"""validate(...): `yolo-accel val` — metrics of one or more weights files on a dataset split, on every process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from .boxes import xyxy_to_xywh
from .checkpoint import load_model
from .config import ConfigError
from .data.dataset import YoloDataset
from .data.labels import scan_labels
from .data.sources import list_images, load_data_config
from .engine import EvalResult, evaluate, format_results, new_accelerator
from .files import increment_path
from .predict import label_rows
from .train import build_val_batches, plot_val_batch, save_metric_plots

LOGGER = logging.getLogger("yolo_accel")


def save_predictions(result: EvalResult, dataset: YoloDataset, save_dir: Path, save_txt: bool, save_conf: bool,
                     save_json: bool, weights_name: str) -> None:
    """YOLO-format label files per image and/or one COCO-format detections JSON (boxes in original pixels)."""
    detections_json = []
    if save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    for record in result.predictions:
        path = dataset.files[record.index]
        width, height = (int(v) for v in dataset.shapes[record.index])
        boxes = record.detections
        if save_txt:
            (save_dir / "labels" / f"{path.stem}.txt").write_text(
                label_rows(boxes[:, :4], boxes[:, 4], boxes[:, 5], width, height, save_conf))
        if save_json:
            image_id = int(path.stem) if path.stem.isnumeric() else path.stem
            xywh = xyxy_to_xywh(boxes[:, :4])
            xywh[:, :2] -= xywh[:, 2:] / 2  # COCO boxes are top-left corner + size
            for box, conf, cls in zip(xywh.tolist(), boxes[:, 4].tolist(), boxes[:, 5].tolist()):
                detections_json.append({"image_id": image_id, "category_id": int(cls),
                                        "bbox": [round(x, 3) for x in box], "score": round(conf, 5)})
    if save_json:
        target = save_dir / f"{weights_name}_predictions.json"
        target.write_text(json.dumps(detections_json))
        LOGGER.info(f"Saving {target}...")


def validate(data: str, weights: list[str], batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, task: str = "val", single_cls: bool = False,
             verbose: bool = False, save_txt: bool = False, save_conf: bool = False, save_json: bool = False,
             project: str = "runs/val", name: str = "exp", exist_ok: bool = False, half: bool = False,
             workers: int = 8, device: str = "", augment: bool = False,
             plots: bool = True) -> tuple[Path, list[EvalResult]]:
    """Validate each weights file; returns the run folder and one result per file (metrics equal on any
    number of processes: every process takes whole batches, predictions are gathered before matching)."""
    if task not in ("val", "test", "speed"):
        raise ConfigError(f"--task must be val, test or speed, got {task!r}")
    if not weights:
        raise ConfigError("--weights: give at least one .safetensors or Ultralytics .pt file")
    if task == "speed":  # YOLOv5: timings at detect-like thresholds, nothing saved
        conf_thres, iou_thres, save_txt, save_json = 0.25, 0.45, False, False
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    accelerator = new_accelerator("fp16" if half and not use_cpu else "no", cpu=use_cpu)
    config = load_data_config(data)
    split = "test" if task == "test" and "test" in config.splits else "val" if "val" in config.splits else "train"
    with accelerator.main_process_first():
        index = scan_labels(list_images(config, split), prefix=f"{split}: ", workers=workers,
                            verbose=accelerator.is_main_process)
    save_dir = None
    if accelerator.is_main_process:
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    save_dir = Path(broadcast_object_list([save_dir])[0])
    plots = plots and accelerator.is_main_process and task != "speed"
    results = []
    summary = {}
    for weights_file in weights:
        model = load_model(weights_file, device=accelerator.device).eval().fuse()
        nc = 1 if single_cls else model.nc
        if not single_cls and model.nc != config.nc:
            raise ConfigError(f"{weights_file} has nc={model.nc} but {config.source} has {config.nc} classes "
                              f"(pass --single-cls for a single-class check)")
        stride = max(int(model.stride.max()), 32)
        size = -(-imgsz // stride) * stride
        dataset = YoloDataset(index, size, batch_size, rect=task != "speed", stride=stride, pad=0.5,
                              single_cls=single_cls)
        loader, indices = build_val_batches(dataset, batch_size, workers, accelerator.process_index,
                                            accelerator.num_processes)
        names = ["item"] if single_cls else config.names
        result = evaluate(model, loader, indices, accelerator, nc, conf_thres=conf_thres, iou_thres=iou_thres,
                          max_det=max_det, single_cls=single_cls, augment=augment,
                          on_batch=plot_val_batch(save_dir, names) if plots else None)
        if plots:
            save_metric_plots(result, names, save_dir)
        results.append(result)
        if accelerator.is_main_process:
            LOGGER.info("\n".join(format_results(result, names, verbose=verbose or nc < 50)))
            pre, infer, nms = result.speed_ms
            LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {infer:.1f}ms inference, {nms:.1f}ms NMS per image at "
                        f"shape ({batch_size}, 3, {size}, {size})")
            save_predictions(result, dataset, save_dir, save_txt, save_conf, save_json, Path(weights_file).stem)
            m = result.metrics
            summary[str(weights_file)] = {
                "precision": m.mean_precision, "recall": m.mean_recall, "mAP50": m.map50, "mAP50-95": m.map50_95,
                "images": result.images, "instances": result.instances, "speed_ms": dict(zip(
                    ("pre-process", "inference", "nms"), result.speed_ms)),
                "classes": {config.names[c] if not single_cls else "item": {"ap50": float(m.ap50[i]),
                                                                             "ap": float(m.ap[i])}
                            for i, c in enumerate(m.classes)}}
    if accelerator.is_main_process:
        (save_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        LOGGER.info(f"Results saved to {save_dir}")
    accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return save_dir, results

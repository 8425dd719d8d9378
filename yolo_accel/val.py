"""validate(...): `yolo-accel val` — metrics of one or more weights files on a dataset split, on every process."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from .boxes import xyxy_to_xywh
from .checkpoint import load_model
from .config import ConfigError, check_options, inference_checks, name_check
from .data.dataset import YoloDataset, check_labels
from .data.labels import scan_labels
from .data.loader import collate, init_worker
from .data.sources import list_images, load_data_config
from .engine import EvalResult, evaluate, format_results, new_accelerator
from .files import check_output_folder, increment_path
from .predict import label_rows

LOGGER = logging.getLogger("yolo_accel")


def build_val_batches(dataset: YoloDataset, batch_size: int, workers: int, rank: int, world: int
                      ) -> tuple[DataLoader, list[int]]:
    """This process's part of every validation batch, and the dataset indices it will see.

    `batch_size` is the total over processes, the size `dataset` planned its rectangular shapes for; each batch is
    split into `world` contiguous parts, so every image gets the same letterbox whatever the process count and
    the gathered metrics equal a single-process run's exactly. No padding samples are added.
    """
    batches = []
    for batch in BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False):
        part = math.ceil(len(batch) / world)
        if batch[rank * part:(rank + 1) * part]:
            batches.append(batch[rank * part:(rank + 1) * part])
    num_workers = min(workers, os.cpu_count() or 1, max(len(batches), 1))
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                        persistent_workers=num_workers > 0,  # training validates every epoch: fork once
                        worker_init_fn=init_worker)
    return loader, [i for batch in batches for i in batch]


def plot_val_batch(save_dir: Path, names: list[str]):
    """An evaluate() hook drawing the first 3 batches: val_batch{i}_labels.jpg and val_batch{i}_pred.jpg."""
    from .boxes import xyxy_to_xywh
    from .plots import plot_images

    def hook(i: int, images: torch.Tensor, targets: torch.Tensor, output: list, batch_paths: list) -> None:
        if i >= 3:
            return
        plot_images(images, targets, batch_paths, save_dir / f"val_batch{i}_labels.jpg", names)
        rows = [torch.cat((torch.full((len(det), 1), float(si), device=det.device), det[:, 5:6],
                           xyxy_to_xywh(det[:, :4]), det[:, 4:5]), 1) for si, det in enumerate(output)]
        predictions = torch.cat(rows, 0) if rows else torch.zeros(0, 7)
        plot_images(images, predictions, batch_paths, save_dir / f"val_batch{i}_pred.jpg", names)

    return hook


def save_metric_plots(result: EvalResult, names: list[str], save_dir: Path) -> None:
    """PR/F1/P/R curves and the confusion matrix of a validation result."""
    from .plots import plot_confusion_matrix, plot_metric_curves

    if result.metrics.details is not None:
        plot_metric_curves(result.metrics.details, names, save_dir)
    plot_confusion_matrix(result.confusion.matrix, names, save_dir / "confusion_matrix.png")


def validate_best(best: Path, accelerator: Accelerator, loader: DataLoader, indices: list[int], *, nc: int,
                  names: list[str], criterion, single_cls: bool, plots_dir: Path | None) -> EvalResult:
    """The end of training: best weights validated once more, with per-class rows, speed and (into plots_dir,
    if given) the batch images, curves and confusion matrix, as YOLOv5 does."""
    model = load_model(best, device=accelerator.device)
    if accelerator.is_main_process:
        LOGGER.info(f"\nValidating {best}...")
    result = evaluate(model, loader, indices, accelerator, nc=nc, criterion=criterion, single_cls=single_cls,
                      on_batch=plot_val_batch(plots_dir, names) if plots_dir else None)
    if plots_dir:
        save_metric_plots(result, names, plots_dir)
    if accelerator.is_main_process:
        LOGGER.info("\n".join(format_results(result, names, verbose=True)))
        pre, infer, nms = result.speed_ms
        LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {infer:.1f}ms inference, {nms:.1f}ms NMS per image")
    return result


def coco_image_id(stem: str) -> int | str:
    """COCO's image id for a file stem: the number when the stem is ASCII digits (COCO's 000000000139 is 139), else
    the stem itself (str.isnumeric() also accepts '½' and '٣', which int() refuses)."""
    return int(stem) if stem.isascii() and stem.isdigit() else stem


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
            image_id = coco_image_id(path.stem)
            xywh = xyxy_to_xywh(boxes[:, :4])
            xywh[:, :2] -= xywh[:, 2:] / 2  # COCO boxes are top-left corner + size
            for box, conf, cls in zip(xywh.tolist(), boxes[:, 4].tolist(), boxes[:, 5].tolist()):
                detections_json.append({"image_id": image_id, "category_id": int(cls),
                                        "bbox": [round(x, 3) for x in box], "score": round(conf, 5)})
    if save_json:
        target = save_dir / f"{weights_name}_predictions.json"
        target.write_text(json.dumps(detections_json))
        LOGGER.info(f"Saving {target}...")


def validate(data: str, weights: list[str], *, batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, task: str = "val", single_cls: bool = False,
             verbose: bool = False, save_txt: bool = False, save_conf: bool = False, save_json: bool = False,
             project: str = "runs/val", name: str = "exp", exist_ok: bool = False, half: bool = False,
             workers: int = 8, device: str = "", augment: bool = False,
             plots: bool = True) -> tuple[Path, list[EvalResult]]:
    """Validate each weights file; returns the run folder and one result per file (metrics equal on any
    number of processes: every process takes whole batches, predictions are gathered before matching)."""
    check_options((task in ("val", "test", "speed"), f"--task must be val, test or speed, got {task!r}"),
                  *inference_checks(imgsz, conf_thres, iou_thres, max_det, batch_size),
                  (workers >= 0, f"--workers must be 0 or more, got {workers}"), name_check(name))
    if not weights:
        raise ConfigError("--weights: give at least one .safetensors or Ultralytics .pt file")
    if task == "speed":  # YOLOv5: timings at detect-like thresholds, nothing saved
        conf_thres, iou_thres, save_txt, save_json = 0.25, 0.45, False, False
    check_output_folder(Path(project) / name)  # on every process, before any work
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
        check_labels(dataset, nc, str(config.source), split=split)
        loader, indices = build_val_batches(dataset, batch_size, workers, accelerator.process_index,
                                            accelerator.num_processes)
        names = ["item"] if single_cls else config.names
        result = evaluate(model, loader, indices, accelerator, nc=nc, conf_thres=conf_thres, iou_thres=iou_thres,
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

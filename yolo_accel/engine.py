"""The only loops: train_one_epoch and evaluate."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import TorchDynamoPlugin, gather_object
from torch import nn

from .boxes import xywh_to_xyxy
from .data.batch_augment import apply_hsv_batch
from .distributed import is_sharded
from .metrics import ConfusionMatrix, DetectionMetrics, DetectionStats, coco_iou_thresholds
from .nms import non_max_suppression, scale_boxes
from .optim import Warmup
from .progress import Progress
from .training_state import TrainingState

LOGGER = logging.getLogger("yolo_accel")
LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")


def new_accelerator(mixed_precision: str, **kwargs: Any) -> Accelerator:
    """`Accelerator(mixed_precision=..., **kwargs)`, also after an earlier one in this process chose another precision
    or compile setting (dynamo_plugin).

    Accelerate keeps one state per process and refuses a second precision, but one Python session may train in
    bf16 and then validate in fp32 (the YOLO API, evolve, tests). Only the precision part is dropped; the process
    group and device (PartialState) stay.
    """
    shared = AcceleratorState._shared_state
    plugin = kwargs.pop("dynamo_plugin", None) or TorchDynamoPlugin()  # (unset: the launcher's dynamo_backend)
    earlier = shared.get("dynamo_plugin")
    if shared.get("_mixed_precision", mixed_precision) != mixed_precision or \
            (earlier is not None and earlier.backend != plugin.backend):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, dynamo_plugin=plugin, **kwargs)


def compile_plugin(requested: bool) -> TorchDynamoPlugin | None:
    """`--compile`: torch.compile with the inductor backend, as `accelerate launch --dynamo_backend inductor` asks
    for it; None leaves the launcher's choice (ACCELERATE_DYNAMO_BACKEND), off outside a launch."""
    return TorchDynamoPlugin(backend="inductor") if requested else None


# validation


@dataclass
class ImagePredictions:
    """One validated image: detections (n, 6) and labels (m, 5) in original-image pixels, on the CPU."""

    index: int
    detections: torch.Tensor
    labels: torch.Tensor


@dataclass
class EvalResult:
    metrics: DetectionMetrics
    losses: np.ndarray  # (3,) mean loss items per batch, the criterion's loss_names (zeros without a criterion)
    images: int
    instances: int
    confusion: ConfusionMatrix
    speed_ms: tuple[float, float, float]  # pre-process, inference, NMS per image
    predictions: list[ImagePredictions] = field(default_factory=list)

    def results(self) -> tuple[float, ...]:
        """(P, R, mAP50, mAP50-95, then the 3 val losses): the order of YOLOv5's results tuple."""
        return (*self.metrics.results(), *self.losses.tolist())


def synchronized_clock(device: torch.device) -> float:
    """time.perf_counter() once the device has finished what was queued (CUDA runs asynchronously), as YOLOv5's
    time_sync, so the printed per-stage speeds are true on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, indices: list[int], accelerator: Accelerator, *, nc: int,
             criterion: Callable | None = None, conf_thres: float = 0.001, iou_thres: float = 0.6,
             max_det: int = 300, single_cls: bool = False, description: str = "val",
             show_progress: bool = True, augment: bool = False,
             on_batch: Callable[[int, torch.Tensor, torch.Tensor, list, tuple], None] | None = None) -> EvalResult:
    """Validate `model` (eval mode, unwrapped) on this process's shard of batches, then merge all shards.

    `indices` are the dataset indices this process sees, in loader order. Per-image predictions from every
    process are gathered and sorted by index before matching, so the metrics equal a single-process run's.
    """
    device = accelerator.device
    model.eval()
    records: list[ImagePredictions] = []
    loss_sum = torch.zeros(3, device=device)
    batch_count = 0
    timings = [0.0, 0.0, 0.0]
    position = 0
    enabled = show_progress and accelerator.is_main_process
    with Progress(len(indices), f"{description:>22}", enabled=enabled) as bar:
        for images, targets, paths, shapes, _ in batches:
            start = synchronized_clock(device)
            images = images.to(device, non_blocking=True).float() / 255
            targets = targets.to(device)
            height, width = images.shape[2:]
            t1 = synchronized_clock(device)
            with accelerator.autocast():
                if augment:  # test-time augmentation: no raw maps, so no validation loss
                    decoded, raw = model.forward_augmented(images), None
                else:
                    decoded, raw = model(images, with_raw=True)
            if criterion is not None and raw is not None:
                loss_sum += criterion([r.float() for r in raw], targets)[1]
            t2 = synchronized_clock(device)
            targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
            output = non_max_suppression(decoded.float(), conf_thres, iou_thres, multi_label=True,
                                         agnostic=single_cls, max_det=max_det,
                                         objectness=not getattr(model, "anchor_free", False))
            t3 = synchronized_clock(device)
            if on_batch is not None:  # (batch number, images 0-1, targets in pixels, NMS output, paths)
                on_batch(batch_count, images, targets, output, paths)
            for si, pred in enumerate(output):
                labels = targets[targets[:, 0] == si, 1:]
                predn = pred.clone()
                if single_cls:
                    predn[:, 5] = 0
                original_shape, ratio_pad = shapes[si]
                scale_boxes(images.shape[2:], predn[:, :4], original_shape, ratio_pad)
                boxes = xywh_to_xyxy(labels[:, 1:5])
                scale_boxes(images.shape[2:], boxes, original_shape, ratio_pad)
                records.append(ImagePredictions(indices[position], predn.cpu(),
                                                torch.cat((labels[:, 0:1], boxes), 1).cpu()))
                position += 1
            timings = [timings[0] + t1 - start, timings[1] + t2 - t1, timings[2] + t3 - t2]
            batch_count += 1
            bar.update(len(output))

    all_records = sorted(gather_object(records) if accelerator.num_processes > 1 else records,
                         key=lambda r: r.index)
    totals = torch.tensor([*loss_sum.tolist(), batch_count, *timings], device=device, dtype=torch.float64)
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    stats = DetectionStats(nc, coco_iou_thresholds())
    confusion = ConfusionMatrix(nc)
    for record in all_records:
        stats.add_image(record.detections, record.labels)
        if len(record.detections):
            confusion.process_batch(record.detections, record.labels)
        elif len(record.labels):
            confusion.process_batch(None, record.labels[:, 0])
    metrics = stats.compute()
    batches_total = max(int(totals[3].item()), 1)
    images_total = max(len(all_records), 1)
    speed = tuple(float(t) / images_total * 1e3 for t in totals[4:7].tolist())
    return EvalResult(metrics=metrics, losses=(totals[:3] / batches_total).cpu().numpy(), images=len(all_records),
                      instances=int(sum(len(r.labels) for r in all_records)), confusion=confusion,
                      speed_ms=speed, predictions=all_records)


def format_results(result: EvalResult, names: list[str], verbose: bool = False) -> list[str]:
    """YOLOv5's validation table: a header, the 'all' row, and per-class rows when verbose."""
    header = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    row = "%22s" + "%11i" * 2 + "%11.3g" * 4
    m = result.metrics
    lines = [header, row % ("all", result.images, result.instances, m.mean_precision, m.mean_recall, m.map50,
                            m.map50_95)]
    if result.instances == 0:
        lines.append("WARNING ⚠️ no labels found in the validation set, can not compute metrics without labels")
    if verbose and len(names) > 1:
        images_with_class = Counter(c for r in result.predictions for c in set(r.labels[:, 0].int().tolist()))
        for i, c in enumerate(m.classes):
            lines.append(row % (names[c], images_with_class[int(c)], m.targets_per_class[c], m.precision[i],
                                m.recall[i], m.ap50[i], m.ap[i]))
    return lines


# training


@dataclass(frozen=True)
class StepPlan:
    """What every training step follows, fixed for the run."""

    accelerator: Accelerator
    criterion: Callable
    warmup: Warmup
    lr_factor: Callable[[int], float]  # epoch -> LR factor of the schedule
    loss_scale: float  # 4 with --quad, as YOLOv5 scales it
    imgsz: int
    grid_stride: int
    multi_scale: bool
    batches_per_epoch: int


@dataclass
class SnapshotInterval:
    """--snapshot-interval: a mid-epoch snapshot every `batches` training steps, or every `minutes` (each epoch's
    end saves one anyway), so a lost process costs at most that much work."""

    batches: int = 0
    minutes: float = 0.0
    last: float = field(default_factory=time.monotonic)

    def __bool__(self) -> bool:
        return bool(self.batches or self.minutes)

    def due(self, step: int) -> bool:
        if self.batches:
            return step % self.batches == 0
        return time.monotonic() - self.last >= self.minutes * 60

    def restart(self) -> None:
        self.last = time.monotonic()


class NonFiniteLoss(RuntimeError):
    """The training loss became nan or inf; nothing of the diverged step was saved."""


def any_process(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Each flag True on every process if it is True on any (one all-reduce for all of them)."""
    if accelerator.num_processes == 1:
        return list(flags)
    summed = accelerator.reduce(torch.tensor([float(f) for f in flags], device=accelerator.device), reduction="sum")
    return [bool(v > 0) for v in summed.tolist()]


def should_stop_now(accelerator: Accelerator, requested: bool) -> bool:
    """True on every process if any process was asked to stop (SIGINT/SIGTERM)."""
    return any_process(accelerator, requested)[0]


def train_one_epoch(plan: StepPlan, training: TrainingState, loader: Iterable, epochs: int,
                    stop_requested: Callable[[], bool],
                    on_batch: Callable[[int, torch.Tensor, torch.Tensor, tuple], None] | None = None,
                    show_progress: bool = True, snapshot_due: Callable[[int], bool] | None = None,
                    save_snapshot: Callable[[], None] | None = None) -> bool:
    """Train from `training.loop.batch` to the end of the epoch; returns False if interrupted (the loop state
    points at the next batch to run), True when the epoch completed. After a batch for which `snapshot_due(step)`
    is true on any process, every process calls `save_snapshot()`."""
    accelerator, model, optimizer = plan.accelerator, training.model, training.optimizer
    state = training.loop
    device = accelerator.device
    model.train()
    epoch_factor = plan.lr_factor(state.epoch)
    header = ("%11s" * 7) % ("Epoch", "GPU_mem", *getattr(plan.criterion, "loss_names", LOSS_NAMES), "Instances",
                              "Size")
    if accelerator.is_main_process and show_progress:
        LOGGER.info(header)
    bar = Progress(plan.batches_per_epoch, "", enabled=accelerator.is_main_process and show_progress)
    bar.count = state.batch
    mean_loss = torch.tensor(state.mean_loss, device=device)
    for images, targets, paths, _, hsv_gains in loader:
        step = state.step
        plan.warmup.apply(optimizer, step, epoch_factor)
        accumulate = plan.warmup.accumulate(step)
        images = images.to(device, non_blocking=True)
        if hsv_gains is not None:  # the colour augmentation left to the device (see YoloDataset.hsv_on_device)
            images = apply_hsv_batch(images, hsv_gains)
        images = (images.float() / 255).contiguous(memory_format=torch.channels_last)
        if plan.multi_scale:
            size = training.rng.randrange(int(plan.imgsz * 0.5), int(plan.imgsz * 1.5) + plan.grid_stride)
            size = size // plan.grid_stride * plan.grid_stride
            factor = size / max(images.shape[2:])
            if factor != 1:
                new_shape = [math.ceil(x * factor / plan.grid_stride) * plan.grid_stride for x in images.shape[2:]]
                images = F.interpolate(images, size=new_shape, mode="bilinear", align_corners=False)

        will_step = step - state.last_opt_step >= accumulate
        # FSDP reduces at every backward: the accumulated gradients are then the sharded .grad (see distributed.py)
        skip_sync = not will_step and accelerator.num_processes > 1 and not is_sharded(accelerator)
        with accelerator.no_sync(model) if skip_sync else nullcontext(), accelerator.autocast():
            predictions = model(images)
            loss, loss_items = plan.criterion([p.float() for p in predictions], targets.to(device))
            # yolov5 parity: DDP averages gradients over processes; YOLOv5 multiplies the loss back
            accelerator.backward(loss * accelerator.num_processes * plan.loss_scale)
        if will_step:
            accelerator.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            optimizer.zero_grad()
            training.ema.update(training.unwrapped)
            state.last_opt_step = step

        i = state.batch
        mean_loss = (mean_loss * i + loss_items.detach()) / (i + 1)
        state.batch += 1
        state.step += 1
        state.mean_loss = mean_loss.tolist()
        if bar.enabled:
            memory = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if torch.cuda.is_available() else "0G"
            # the row under the header first, then the bar, as YOLOv5 prints it
            bar.description = ("%11s" * 2 + "%11.4g" * 5) % (f"{state.epoch}/{epochs - 1}", memory, *state.mean_loss,
                                                             targets.shape[0], images.shape[-1])
            bar.update(1)
        if on_batch is not None:  # (batch number in the epoch, images 0-1, targets, paths)
            on_batch(state.batch - 1, images, targets, paths)
        stop, diverged, snapshot = any_process(accelerator, stop_requested(), not math.isfinite(sum(state.mean_loss)),
                                               snapshot_due is not None and snapshot_due(state.step))
        if diverged:
            bar.close()
            names = ", ".join(getattr(plan.criterion, "loss_names", LOSS_NAMES))
            raise NonFiniteLoss(f"the training loss became non-finite ({names}: {state.mean_loss}) at epoch "
                                f"{state.epoch}, batch {state.batch - 1}; training stopped before saving anything "
                                f"of it. Lower lr0 in --hyp, or try --mixed-precision no")
        if stop:
            bar.close()
            return False
        if snapshot and save_snapshot is not None and state.batch < plan.batches_per_epoch:  # the epoch's end saves
            save_snapshot()
    bar.close()
    return True


"""train(cfg): build everything, prepare it with Accelerate, resume if asked, run the epochs, save."""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import signal
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, broadcast, broadcast_object_list, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from . import state as state_files
from .checkpoint import load_state_dict_checked, read_any_weights, save_weights, transfer_weights
from .config import ConfigError, TrainConfig, load_hyp, read_yaml
from .data.dataset import YoloDataset, check_labels, labels_to_class_weights, labels_to_image_weights
from .data.labels import scan_labels
from .data.loader import build_dataloader, collate, init_worker
from .data.sources import list_images, load_data_config
from .ema import ModelEMA
from .engine import EvalResult, LoopState, TrainParts, evaluate, format_results, new_accelerator, train_one_epoch
from .files import atomic_write, increment_path
from .loss import DetectionLoss, scale_loss_gains
from .metrics import fitness
from .model.yolo import DetectionModel, build_model
from .optim import Warmup, build_optimizer, lr_lambda, scaled_weight_decay

LOGGER = logging.getLogger("yolo_accel")
RESULT_COLUMNS = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                  "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
                  "x/lr0", "x/lr1", "x/lr2"]


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving its state; args[0] is the run folder to --resume."""


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each batch; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        LOGGER.warning(f"\n{signal.Signals(signum).name} received: saving the training state after this batch")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (YOLOv5's rule)."""

    def __init__(self, patience: int = 30, best_fitness: float = 0.0, best_epoch: int = 0):
        self.patience = patience if patience > 0 else math.inf
        self.best_fitness, self.best_epoch = best_fitness, best_epoch
        self.possible_stop = False

    def __call__(self, epoch: int, fitness_value: float) -> bool:
        if fitness_value >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness_value
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}; best model saved as best.safetensors.")
        return stop


@dataclass
class RunPaths:
    save_dir: Path

    @property
    def weights(self) -> Path:
        return self.save_dir / "weights"

    @property
    def state(self) -> Path:
        return self.save_dir / "state"

    @property
    def results(self) -> Path:
        return self.save_dir / "results.csv"


def find_resume_run(resume: str | bool, project: str) -> Path:
    """The run folder to resume: a given run/state path, or the most recently saved run under `project`."""
    if isinstance(resume, str) and resume not in ("", "True", "true"):
        path = Path(resume)
        for candidate in (path, path.parent, path.parent.parent):
            if (candidate / "opt.yaml").is_file() and (candidate / "state").is_dir():
                return candidate
        raise ConfigError(f"{resume}: not a resumable run folder (expected opt.yaml and state/ in it)")
    pointers = sorted(Path(project).glob("*/state/latest.json"), key=lambda p: p.stat().st_mtime)
    if not pointers:
        raise ConfigError(f"--resume: no resumable run found under {project}/ (pass --resume PATH)")
    return pointers[-1].parent.parent


def append_results(path: Path, epoch: int, values: list[float]) -> None:
    """results.csv with YOLOv5's columns and its fixed-width layout."""
    header = "" if path.exists() else ",".join(f"{k:>20}" for k in ["epoch", *RESULT_COLUMNS]) + "\n"
    row = ",".join(f"{v:>20.5g}" for v in [epoch, *values]) + "\n"
    with open(path, "a") as f:
        f.write(header + row)


def drop_results_from(path: Path, epoch: int) -> None:
    """Forget rows for `epoch` and later (and a row cut short): a run killed after writing a row but before its
    state snapshot redoes that epoch."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    columns = lines[0].count(",") if lines else 0

    def earlier(line: str) -> bool:
        fields = line.split(",")
        try:
            return line.endswith("\n") and len(fields) == columns + 1 and float(fields[0]) < epoch
        except ValueError:
            return False

    kept = lines[:1] + [line for line in lines[1:] if earlier(line)]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))


def read_results(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f, skipinitialspace=True)]


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions are native, ~1.5x fp32's speed (elsewhere they are emulated)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def choose_mixed_precision(requested: str, use_cpu: bool) -> str:
    """--mixed-precision auto: `accelerate launch`'s choice when launched by it, else what the hardware runs
    natively: fp16 on CUDA (YOLOv5's AMP default), bf16 on a CPU with bf16 instructions, fp32 otherwise."""
    if requested != "auto":
        return requested
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched:
        return launched.lower()
    if not use_cpu:
        return "fp16"
    return "bf16" if cpu_has_bf16() else "no"


def check_amp(model: DetectionModel, device: torch.device, imgsz: int, dtype: torch.dtype) -> bool:
    """Autocast to `dtype` must reproduce fp32 outputs on a synthetic image, else training falls back to fp32."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, imgsz, imgsz, generator=generator).to(device)
    probe = model.to(device).eval()
    with torch.no_grad():
        reference = probe(images)
        with torch.autocast(device.type, dtype=dtype):
            mixed = probe(images).float()
    probe.train()
    scale = torch.tensor([imgsz] * 4 + [1] * (reference.shape[-1] - 4), device=device)
    # boxes relative to the image, scores as they are: bf16 keeps ~1% relative error, a broken kernel far more
    ok = torch.allclose(mixed / scale, reference / scale, rtol=0.05, atol=0.01)
    if not ok:
        LOGGER.warning(f"AMP: checks failed ❌, {dtype} outputs differ from fp32; training in fp32")
    return ok


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


def train(cfg: TrainConfig) -> Path:
    """Train as `yolo-accel train` does; returns the run folder, or raises TrainingInterrupted after saving the
    state when stopped by SIGINT/SIGTERM."""
    resuming = bool(cfg.resume)
    if resuming:
        run = find_resume_run(cfg.resume, cfg.project)
        saved = TrainConfig.from_dict(read_yaml(run / "opt.yaml"), str(run / "opt.yaml"))
        extend = cfg.epochs is not None and cfg.epochs != saved.epochs
        cfg = replace(saved, resume=str(run), epochs=cfg.epochs if extend else saved.epochs).resolved()
        if extend:
            LOGGER.info(f"Resuming {run} with --epochs {cfg.epochs} (was {saved.epochs}): the learning-rate "
                        f"schedule is re-planned over {cfg.epochs} epochs")
    else:
        cfg = cfg.resolved()
    # without CUDA, Accelerate needs cpu=True to form a multi-process (gloo) group from `accelerate launch`
    use_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    mixed_precision = choose_mixed_precision(cfg.mixed_precision, use_cpu)
    if mixed_precision in ("fp16", "bf16"):
        device = torch.device("cpu") if use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
        if device.type == "cpu" and dtype == torch.float16:
            raise ConfigError("--mixed-precision fp16 needs a CUDA device; use bf16 (or no) on CPU")
        if not check_amp(build_model(cfg.cfg or "yolov5n"), device, cfg.imgsz, dtype):
            mixed_precision = "no"
    if cfg.batch_size == -1 and use_cpu:
        raise ConfigError("--batch-size -1 (AutoBatch) needs a CUDA device; pass a batch size instead")
    if cfg.sync_bn and use_cpu:
        raise ConfigError("--sync-bn needs CUDA processes (PyTorch's SyncBatchNorm is GPU-only); drop it on CPU")
    process = PartialState(cpu=use_cpu)  # the process group, before the run folder every rank must agree on
    if resuming:
        save_dir = run
    else:
        save_dir = None
        if process.is_main_process:
            save_dir = increment_path(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok, mkdir=True)
        save_dir = Path(broadcast_object_list([save_dir])[0])
    paths = RunPaths(save_dir)
    trackers = [] if cfg.log_with == "none" else ["wandb", "tensorboard"] if cfg.log_with == "all" else [cfg.log_with]
    accelerator = new_accelerator(mixed_precision, cpu=use_cpu, log_with=trackers or None,
                              project_config=ProjectConfiguration(project_dir=str(save_dir), logging_dir=str(save_dir)),
                              dataloader_config=DataLoaderConfiguration(even_batches=True))
    set_seed(cfg.seed + 1 + accelerator.process_index, deterministic=True)
    python_rng = random.Random(cfg.seed)

    hyp = load_hyp(cfg.hyp)
    data = load_data_config(cfg.data)
    nc, names = (1, ["item"]) if cfg.single_cls else (data.nc, data.names)

    # model, optionally starting from weights
    weights_state, weights_yaml, _ = read_any_weights(cfg.weights) if cfg.weights else ({}, None, None)
    anchors = round(hyp["anchors"]) if hyp.get("anchors") else None  # an anchor count per level (evolve)
    model = build_model(cfg.cfg or weights_yaml, nc=nc, anchors=anchors)
    if weights_state and not resuming:
        exclude = ("anchor",) if cfg.cfg or anchors else ()
        count = transfer_weights(model, weights_state, exclude)
        if accelerator.is_main_process:
            LOGGER.info(f"Transferred {count}/{len(model.state_dict())} items from {cfg.weights}")
    model.names = names
    freeze = [f"model.{x}." for x in (cfg.freeze if len(cfg.freeze) > 1 else range(cfg.freeze[0]))]
    for key, param in model.named_parameters():
        param.requires_grad_(not any(f in key for f in freeze))
        if not param.requires_grad and accelerator.is_main_process:
            LOGGER.info(f"freezing {key}")

    grid_stride = max(int(model.stride.max()), 32)
    imgsz = math.ceil(cfg.imgsz / grid_stride) * grid_stride
    if imgsz != cfg.imgsz:
        LOGGER.warning(f"--imgsz {cfg.imgsz} must be a multiple of max stride {grid_stride}, updating to {imgsz}")

    batch_size = cfg.batch_size
    if batch_size == -1:
        from .autobatch import autobatch

        batch_size = autobatch(model.to(accelerator.device), imgsz) * accelerator.num_processes
    world = accelerator.num_processes
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world})")
    batch_per_device = batch_size // world

    # data: the main process builds the label caches first
    with accelerator.main_process_first():
        verbose = accelerator.is_main_process
        train_index = scan_labels(list_images(data, "train"), prefix="train: ", workers=cfg.workers,
                                  verbose=verbose)
        val_split = "val" if "val" in data.splits else "train"
        val_index = scan_labels(list_images(data, val_split), prefix="val: ", workers=cfg.workers,
                                verbose=verbose)
    train_set = YoloDataset(train_index, imgsz, batch_per_device, augment=True, hyp=hyp, rect=cfg.rect,
                            stride=grid_stride, single_cls=cfg.single_cls, cache=cfg.cache, seed=cfg.seed,
                            mosaic_epochs=cfg.epochs - cfg.close_mosaic if cfg.close_mosaic else None,
                            prefix="train: ")
    train_set.hsv_on_device = accelerator.device.type == "cuda"  # batched there; on CPUs the workers do it
    check_labels(train_set, nc, str(data.source))
    val_set = YoloDataset(val_index, imgsz, batch_size * 2, rect=True, stride=grid_stride, pad=0.5,
                          single_cls=cfg.single_cls, cache=cfg.cache, seed=cfg.seed, prefix="val: ")
    train_loader = build_dataloader(train_set, batch_per_device, cfg.workers, shuffle=not cfg.rect, seed=cfg.seed,
                                    pin_memory=accelerator.device.type == "cuda")
    sampler = train_loader.batch_sampler.sampler
    val_loader, val_indices = build_val_batches(val_set, batch_size * 2, cfg.workers * 2,
                                                accelerator.process_index, world)

    if not resuming and not cfg.noautoanchor:
        from .anchors import check_anchors

        if accelerator.is_main_process:
            check_anchors(model, train_set, thr=hyp["anchor_t"], imgsz=imgsz,
                          rng=np.random.default_rng(cfg.seed))
        model.model[-1].anchors.copy_(broadcast(model.model[-1].anchors.contiguous(), from_process=0))
    if not resuming:
        model.half().float()  # yolov5 parity: pre-reduce anchor (and weight) precision to fp16's

    hyp_scaled = scale_loss_gains(hyp, model.model[-1].nl, nc, imgsz)
    hyp_scaled["label_smoothing"] = cfg.label_smoothing
    class_weights = labels_to_class_weights(train_set.labels, nc) * nc
    criterion = DetectionLoss.from_detect(model.model[-1], hyp_scaled).to(accelerator.device)

    weight_decay = scaled_weight_decay(hyp["weight_decay"], batch_size)
    optimizer = build_optimizer(model, cfg.optimizer, hyp["lr0"], hyp["momentum"], weight_decay)
    lr_factor = lr_lambda(cfg.epochs, hyp["lrf"], cosine=cfg.cos_lr)
    scheduler = LambdaLR(optimizer, lr_lambda=lr_factor)

    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        LOGGER.info("Using SyncBatchNorm()")
    model = model.to(memory_format=torch.channels_last)  # ~20% faster convolutions on CPU, tensor-core friendly
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    unwrapped = accelerator.unwrap_model(model)
    ema = ModelEMA(unwrapped)
    loop = LoopState()
    stopper = EarlyStopping(cfg.patience)
    maps = np.zeros(nc)

    if resuming:
        snapshot = state_files.latest_snapshot(paths.state)
        saved_state = state_files.read_snapshot(snapshot)
        load_state_dict_checked(unwrapped, saved_state["model"], str(snapshot / "model.safetensors"))
        if saved_state["ema"] is not None:
            ema.load_state_dict(saved_state["ema"])
        optimizer.load_state_dict(saved_state["optimizer"])
        trainer = saved_state["trainer"]
        loop = LoopState(**trainer["loop"])
        scheduler.load_state_dict(trainer["scheduler"])
        if trainer["config"]["epochs"] != cfg.epochs:  # extended: continue on the re-planned schedule
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(loop.epoch)
        if trainer.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(trainer["scaler"])
        stopper = EarlyStopping(cfg.patience, trainer["stopper"]["best_fitness"], trainer["stopper"]["best_epoch"])
        maps = np.array(trainer.get("maps", maps.tolist()))
        criterion.set_anchors(unwrapped.model[-1].anchors)
        if not state_files.read_rank_files(snapshot, accelerator.process_index, python_rng):
            LOGGER.warning(f"{snapshot}: no random state for process {accelerator.process_index}; reseeding")
        for key, grad in state_files.read_pending_grads(snapshot, accelerator.process_index).items():
            unwrapped.get_parameter(key).grad = grad.to(accelerator.device)
        if loop.epoch >= cfg.epochs:
            raise ConfigError(f"{save_dir} finished its {cfg.epochs} epochs; pass --epochs N (more) to extend it")
        if accelerator.is_main_process:
            drop_results_from(paths.results, loop.epoch)
            LOGGER.info(f"Resuming training from {snapshot} at epoch {loop.epoch}, batch {loop.batch}")

    plots = not cfg.noplots and accelerator.is_main_process
    if plots and not resuming:
        from .plots import plot_labels

        plot_labels(train_set.labels, names, save_dir)
    if accelerator.is_main_process:
        atomic_write(save_dir / "hyp.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(hyp, sort_keys=False)))
        atomic_write(save_dir / "opt.yaml", lambda tmp: tmp.write_text(
            yaml.safe_dump(replace(cfg, resume=False).to_dict(), sort_keys=False)))
        paths.weights.mkdir(parents=True, exist_ok=True)
    if trackers:
        accelerator.init_trackers(save_dir.name, config={**{k: str(v) for k, v in cfg.to_dict().items()}, **hyp},
                                  init_kwargs={"wandb": {"dir": str(save_dir), "name": save_dir.name}})

    batches_per_epoch = len(train_loader)
    warmup = Warmup.plan(hyp, batches_per_epoch, batch_size)
    parts = TrainParts(accelerator, model, optimizer, criterion, ema, warmup, lr_factor, imgsz, grid_stride,
                       cfg.multi_scale, python_rng, batches_per_epoch)
    if accelerator.is_main_process:
        precision = {"no": "fp32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}.get(
            accelerator.mixed_precision, accelerator.mixed_precision)
        LOGGER.info(f"Image sizes {imgsz} train, {imgsz} val; {precision} on {accelerator.device}\n"
                    f"Logging results to {save_dir}\n"
                    f"Starting training for {cfg.epochs} epochs...")

    def save_state() -> None:
        if cfg.nosave:
            return
        tmp = state_files.begin_snapshot(paths.state, loop.step)
        accelerator.wait_for_everyone()
        pending = {k: p.grad for k, p in unwrapped.named_parameters() if p.grad is not None}
        state_files.write_rank_files(tmp, accelerator.process_index, python_rng,
                                     pending if loop.step - 1 > loop.last_opt_step else None)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            trainer = {"loop": vars(loop), "scheduler": scheduler.state_dict(),
                       "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                       "stopper": {"best_fitness": stopper.best_fitness, "best_epoch": stopper.best_epoch},
                       "maps": maps.tolist(), "config": cfg.to_dict()}
            state_files.write_main_files(tmp, unwrapped.state_dict(), ema.state_dict(), optimizer.state_dict(),
                                         trainer)
            state_files.commit_snapshot(paths.state, tmp, loop.step)
        accelerator.wait_for_everyone()

    def plot_train_batch(i: int, images: torch.Tensor, targets: torch.Tensor, batch_paths: tuple) -> None:
        if i < 3:
            from .plots import plot_images

            plot_images(images, targets, batch_paths, save_dir / f"train_batch{i}.jpg", names)

    interrupted = False
    with StopRequest() as stop_request:
        while loop.epoch < cfg.epochs:
            epoch = loop.epoch
            if cfg.image_weights:
                weights = class_weights * (1 - maps) ** 2 / nc
                sampler.set_weights(labels_to_image_weights(train_set.labels, nc, weights))
            loader = train_loader
            if loop.batch:
                loader = accelerator.skip_first_batches(train_loader, loop.batch)
            loader.set_epoch(epoch)
            if not train_one_epoch(parts, loader, loop, cfg.epochs, lambda: stop_request.requested,
                                   on_batch=plot_train_batch if plots and epoch == 0 else None):
                interrupted = True
                save_state()
                break
            lrs = [g["lr"] for g in optimizer.param_groups]
            scheduler.step()
            final_epoch = epoch + 1 == cfg.epochs or stopper.possible_stop
            if not cfg.noval or final_epoch:
                result = evaluate(ema.module, val_loader, val_indices, accelerator, nc, criterion=criterion,
                                  single_cls=cfg.single_cls)
                results = result.results()
                maps = result.metrics.class_maps
                if accelerator.is_main_process:
                    LOGGER.info("\n".join(format_results(result, names)))
            else:
                results = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            fi = float(fitness(np.array(results).reshape(1, -1))[0])
            stop = stopper(epoch, fi)
            improved = fi >= loop.best_fitness
            if fi > loop.best_fitness:
                loop.best_fitness = fi
            values = [*loop.mean_loss, *results, *lrs]
            if accelerator.is_main_process:
                append_results(paths.results, epoch, values)
                if not cfg.nosave or final_epoch:
                    extra = {"epoch": epoch, "best_fitness": loop.best_fitness,
                             "date": datetime.now().isoformat(timespec="seconds")}
                    save_weights(ema.module, paths.weights / "last.safetensors", names, extra)
                    if improved:
                        save_weights(ema.module, paths.weights / "best.safetensors", names, extra)
                    if cfg.save_period > 0 and epoch % cfg.save_period == 0:
                        save_weights(ema.module, paths.weights / f"epoch{epoch}.safetensors", names, extra)
            if trackers:
                accelerator.log(dict(zip(RESULT_COLUMNS, values)), step=epoch)
            loop.epoch, loop.batch, loop.mean_loss = epoch + 1, 0, [0.0, 0.0, 0.0]
            save_state()
            stop = bool(broadcast_object_list([stop])[0])
            if stop:
                break

    if interrupted:
        if accelerator.is_main_process:
            LOGGER.info(f"Training interrupted at epoch {loop.epoch}, batch {loop.batch}; state saved. "
                        f"Continue with: yolo-accel train --resume {save_dir}")
    else:
        if plots and paths.results.exists():
            from .plots import plot_results

            plot_results(paths.results)
        finish(cfg, accelerator, paths, val_loader, val_indices, nc, names, criterion, loop)
    if trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit on every rank (gloo aborts otherwise)
    if interrupted:
        raise TrainingInterrupted(save_dir)
    return save_dir


def finish(cfg: TrainConfig, accelerator: Accelerator, paths: RunPaths, val_loader: DataLoader,
           val_indices: list[int], nc: int, names: list[str], criterion: DetectionLoss, loop: LoopState) -> None:
    """Validate best.safetensors once more with per-class rows, as YOLOv5 does at the end of training."""
    best = paths.weights / "best.safetensors"
    if accelerator.is_main_process:
        LOGGER.info(f"\n{loop.epoch} epochs completed. Results saved to {paths.save_dir}")
    if cfg.noval or not best.exists():
        return
    from .checkpoint import load_model

    model = load_model(best, device=accelerator.device)
    if accelerator.is_main_process:
        LOGGER.info(f"\nValidating {best}...")
    plots = not cfg.noplots and accelerator.is_main_process
    result: EvalResult = evaluate(model, val_loader, val_indices, accelerator, nc, criterion=criterion,
                                  single_cls=cfg.single_cls,
                                  on_batch=plot_val_batch(paths.save_dir, names) if plots else None)
    if plots:
        save_metric_plots(result, names, paths.save_dir)
    if accelerator.is_main_process:
        LOGGER.info("\n".join(format_results(result, names, verbose=True)))
        pre, infer, nms = result.speed_ms
        LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {infer:.1f}ms inference, {nms:.1f}ms NMS per image")


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

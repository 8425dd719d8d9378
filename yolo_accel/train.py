"""train(config): a training run as named phases around one TrainingState.

    prepare_run -> build_training_model -> build_data -> fit_anchors -> build_training_state -> restore (resuming)
    -> start -> for each epoch: train_one_epoch, end_epoch -> finish
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, broadcast, broadcast_object_list, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from .callbacks import Callbacks
from .checkpoint import WeightsError, check_state_dict, read_any_weights, save_weights, transfer_weights
from .config import (
    ConfigError,
    Hyp,
    TrainConfig,
    check_hyp_for_model,
    load_hyp,
    parse_snapshot_interval,
    read_yaml,
)
from .data.dataset import YoloDataset, check_labels, labels_to_class_weights, labels_to_image_weights
from .data.labels import scan_labels
from .data.loader import EpochSampler, build_dataloader, worker_failures_between_batches
from .data.sources import DataConfig, list_images, load_data_config
from .distributed import (
    ProcessLost,
    broadcast_module,
    check_fsdp_launch,
    continue_restarted_run,
    enable_fsdp,
    fsdp_requested,
    is_lost_peer,
    is_sharded,
    join_restarted_group,
    register_process,
    remember_run_folder,
    restart_count,
    restarted_run_folder,
    shard_model,
)
from .ema import ModelEMA
from .engine import (
    SnapshotInterval,
    StepPlan,
    any_process,
    compile_plugin,
    evaluate,
    format_results,
    new_accelerator,
    train_one_epoch,
)
from .files import atomic_write, exclusive_use, increment_path
from .loss import DetectionLoss, scale_loss_gains
from .loss_anchor_free import AnchorFreeLoss
from .metrics import fitness
from .model.summary import summarize
from .model.yolo import DetectionModel, build_model, is_anchor_free, load_model_yaml
from .optim import Warmup, auto_optimizer, build_optimizer, lr_lambda, scaled_weight_decay
from .precision import resolve_precision
from .results import RESULT_COLUMNS, append_results, drop_results_from, result_columns
from .state import (
    StateError,
    read_pending_grads,
    read_rank_files,
    read_snapshot,
    save_failure,
    save_snapshot,
    snapshots,
)
from .stopping import StopRequest, TrainingInterrupted, saved_when_a_worker_dies
from .trackers import log_images, log_weights, resolve_trackers
from .training_state import EarlyStopping, TrainingState
from .val import build_val_batches, validate_best

LOGGER = logging.getLogger("yolo_accel")


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


def find_resume_run(resume: str, project: str) -> Path:
    """The run folder to resume: a given run/state path, or ("") the most recently saved run under `project`."""
    if resume:
        path = Path(resume)
        for candidate in (path, path.parent, path.parent.parent):
            if (candidate / "opt.yaml").is_file() and (candidate / "state").is_dir():
                return candidate
        raise ConfigError(f"{resume}: not a resumable run folder (expected opt.yaml and state/ in it)")
    pointers = sorted(Path(project).glob("*/state/latest.json"), key=lambda p: p.stat().st_mtime)
    if not pointers:
        raise ConfigError(f"--resume: no resumable run found under {project}/ (pass --resume PATH)")
    return pointers[-1].parent.parent


@dataclass
class Run:
    """What every phase reads: the resolved options, hyperparameters, dataset, accelerator and run folder."""

    config: TrainConfig
    resuming: bool
    accelerator: Accelerator
    paths: RunPaths
    hyp: Hyp
    data: DataConfig
    nc: int
    names: list[str]
    trackers: list[str]
    weights: tuple | None = None  # --weights read once: (state dict, model yaml, class names)
    columns: tuple[str, ...] = RESULT_COLUMNS  # results.csv's, after `epoch` (the loss names are the model's)
    started: float = 0.0  # when the epochs began (time.time()), and at which epoch
    first_epoch: int = 0
    callbacks: Callbacks = field(default_factory=Callbacks)

    @property
    def plots(self) -> bool:
        return not self.config.noplots and self.accelerator.is_main_process


@dataclass
class Data:
    """The datasets and loaders of a run, at the sizes it trains with."""

    imgsz: int
    grid_stride: int
    batch_size: int  # total over processes
    train_set: YoloDataset
    train_loader: DataLoader
    sampler: EpochSampler
    val_loader: DataLoader
    val_indices: list[int]  # the validation images this process sees, in order
    class_weights: np.ndarray  # (nc,) inverse class frequencies x nc, for --image-weights


def train(config: TrainConfig, callbacks: Callbacks | None = None) -> Path:
    """Train as `yolo-accel train` does; returns the run folder, or raises TrainingInterrupted after saving the
    state when stopped by SIGINT/SIGTERM. `callbacks`: the user's hooks (callbacks.py), run on the main process."""
    with process_settings_kept(), contextlib.ExitStack() as held:
        run = prepare_run(config, held)
        run.callbacks = callbacks or Callbacks()
        model = build_training_model(run)
        data = build_data(run, model)
        fit_anchors(run, model, data)
        training, plan = build_training_state(run, model, data)
        if run.resuming:
            restore(run, training, plan)
        start(run, data)
        run.started, run.first_epoch = time.time(), training.loop.epoch
        notify(run, training, "on_train_start")
        try:
            interrupted = fit(run, training, data, plan)
            finish(run, training, data, plan, interrupted)
        except RuntimeError as err:
            if run.accelerator.num_processes > 1 and is_lost_peer(err):
                raise ProcessLost.explain(run.accelerator, run.paths.save_dir) from None
            raise
    if interrupted:
        raise TrainingInterrupted(run.paths.save_dir)
    return run.paths.save_dir


def fit(run: Run, training: TrainingState, data: Data, plan: StepPlan) -> bool:
    """The epochs, until the last or early stopping; True if stopped by a signal (the state is saved)."""
    interval = SnapshotInterval(*parse_snapshot_interval(run.config.snapshot_interval))

    def save_mid_epoch() -> None:
        save_state(run, training)
        interval.restart()

    lost_worker = functools.partial(save_state, run, training)
    with StopRequest() as stop_request, worker_failures_between_batches(), \
            saved_when_a_worker_dies(lost_worker, training.loop, plan.batches_per_epoch,
                                     run.accelerator.num_processes, run.paths.save_dir):
        while training.loop.epoch < run.config.epochs:
            epoch = training.loop.epoch
            if run.config.image_weights:
                weights = data.class_weights * (1 - training.maps) ** 2 / run.nc
                data.sampler.set_weights(labels_to_image_weights(data.train_set.labels, run.nc, weights))
            loader = data.train_loader
            if training.loop.batch:
                loader = run.accelerator.skip_first_batches(data.train_loader, training.loop.batch)
            loader.set_epoch(epoch)
            data.sampler.set_epoch(epoch)  # also under a multi-process skip, where set_epoch does not reach it
            notify(run, training, "on_train_epoch_start")
            on_batch = batch_hooks(run, training, plot=run.plots and epoch == 0)
            if not train_one_epoch(plan, training, loader, run.config.epochs, lambda: stop_request.requested,
                                   on_batch=on_batch, snapshot_due=interval.due if interval else None,
                                   save_snapshot=save_mid_epoch):
                save_state(run, training)
                return True
            stop = end_epoch(run, training, data, plan)
            interval.restart()
            if stop:
                break
    return False


@contextlib.contextmanager
def process_settings_kept() -> Iterator[None]:
    """Training switches torch to deterministic algorithms; put process-wide settings back when it returns."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def trains_anchor_free(config: TrainConfig, weights: tuple | None = None) -> bool:
    """Whether the model it trains is anchor-free (YOLOv5u): its yaml's, or --weights' (`weights`, as
    read_any_weights gives them, if already read)."""
    if config.model:
        return is_anchor_free(load_model_yaml(config.model)[0])
    if config.weights:
        return is_anchor_free((weights or read_any_weights(config.weights))[1])
    return False


def with_model_defaults(config: TrainConfig, weights: tuple | None = None) -> TrainConfig:
    """The recipe defaults for the model it trains (TrainConfig.for_model)."""
    return config.for_model(trains_anchor_free(config, weights))


def prepare_run(config: TrainConfig, held: contextlib.ExitStack) -> Run:
    """Resolve the options (a resumed run's own), choose the precision, form the process group, claim the run
    folder (held until training ends), seed every generator, read the hyperparameters and the dataset yaml."""
    restarted = restarted_run_folder()
    if restarted is not None:
        config = continue_restarted_run(config, restarted)
    resuming = config.resume is not None
    if resuming:
        folder = find_resume_run(config.resume, config.project)
        saved = TrainConfig.from_dict(read_yaml(folder / "opt.yaml"), str(folder / "opt.yaml"))
        extend = config.epochs is not None and config.epochs != saved.epochs
        # compiling is how this invocation runs, not what the run is: a compiled run resumes plain and vice versa
        config = replace(saved, resume=str(folder), epochs=config.epochs if extend else saved.epochs,
                         compile=config.compile).resolved()
        if (folder / "hyp.yaml").is_file():  # the run's own hyperparameters, as its optimizer was built with them
            config = replace(config, hyp=str(folder / "hyp.yaml"))
        if extend:
            LOGGER.info(f"Resuming {folder} with --epochs {config.epochs} (was {saved.epochs}): the learning-rate "
                        f"schedule is re-planned over {config.epochs} epochs")
    else:
        config = config.resolved()
    weights = read_any_weights(config.weights) if config.weights else None  # (state, model yaml, names)
    anchor_free = trains_anchor_free(config, weights)
    config = config.for_model(anchor_free)
    hyp = Hyp.from_values(load_hyp(config.hyp))
    unused = check_hyp_for_model(hyp.values, anchor_free, config.hyp)
    check_fsdp_launch()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ConfigError("DeepSpeed is not supported: launch with DDP (--multi_gpu) or FSDP "
                          "(configs/accelerate/fsdp.yaml)")
    # without CUDA, Accelerate needs cpu=True to form a multi-process (gloo) group from `accelerate launch`
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    mixed_precision = resolve_precision(config, use_cpu)
    if config.batch_size == -1 and use_cpu:
        raise ConfigError("--batch-size -1 (AutoBatch) needs a CUDA device; pass a batch size instead")
    if config.sync_bn and use_cpu:
        raise ConfigError("--sync-bn needs CUDA processes (PyTorch's SyncBatchNorm is GPU-only); drop it on CPU")
    if restart_count():
        join_restarted_group(use_cpu)
    process = PartialState(cpu=use_cpu)  # the process group, before the run folder every rank must agree on
    register_process()
    save_dir, refusal = None, None
    if process.is_main_process:
        try:  # a refusal reaches every process, which would otherwise wait for the folder's name
            save_dir = Path(config.resume) if resuming else \
                increment_path(Path(config.project) / config.name, exist_ok=config.exist_ok, mkdir=True)
            held.enter_context(exclusive_use(save_dir, "training run"))
            remember_run_folder(save_dir)
        except ConfigError as err:  # a place that cannot be written, a folder in use (FolderInUse)
            refusal = str(err)
    save_dir, refusal = broadcast_object_list([save_dir, refusal])
    if refusal:
        raise ConfigError(refusal)
    save_dir = Path(save_dir)
    trackers = resolve_trackers(config.log_with)
    accelerator = new_accelerator(mixed_precision, cpu=use_cpu, log_with=trackers or None,
                                  dynamo_plugin=compile_plugin(config.compile),
                                  project_config=ProjectConfiguration(project_dir=str(save_dir),
                                                                      logging_dir=str(save_dir)),
                                  dataloader_config=DataLoaderConfiguration(even_batches=True))
    if fsdp_requested():
        enable_fsdp(accelerator)
    set_seed(config.seed + 1 + accelerator.process_index, deterministic=True)
    if accelerator.is_main_process:
        LOGGER.info("hyperparameters: " + ", ".join(f"{k}={v:g}" for k, v in hyp.values.items()))
        if unused:
            LOGGER.info(f"hyperparameters: {', '.join(unused)} do not apply to anchor-free models (unused)")
        if anchor_free and config.label_smoothing:
            LOGGER.warning("--label-smoothing does not apply to anchor-free models (their class loss has none)")
    data = load_data_config(config.data)
    nc, names = (1, ["item"]) if config.single_cls else (data.nc, data.names)
    return Run(config, resuming, accelerator, RunPaths(save_dir), hyp, data, nc, names, trackers, weights)


def build_training_model(run: Run) -> DetectionModel:
    """The model from its yaml, or from --weights' (their matching tensors transferred), with --freeze applied."""
    config, accelerator = run.config, run.accelerator
    weights_state, weights_yaml, _ = run.weights or ({}, None, None)
    anchors = round(run.hyp.anchors) if run.hyp.anchors else None  # an anchor count per level (evolve)
    model = build_model(config.model or weights_yaml, nc=run.nc, anchors=anchors)
    if weights_state and not run.resuming:
        exclude = ("anchor",) if config.model or anchors else ()
        count = transfer_weights(model, weights_state, exclude)
        if accelerator.is_main_process:
            LOGGER.info(f"Transferred {count}/{len(model.state_dict())} items from {config.weights}")
    model.names = run.names
    if accelerator.is_main_process:
        LOGGER.info(str(summarize(model)))
    freeze = [f"model.{x}." for x in (config.freeze if len(config.freeze) > 1 else range(config.freeze[0]))]
    for key, param in model.named_parameters():
        if not param.requires_grad:  # fixed by the model itself (the DFL integral): never trained, not in DDP
            continue
        param.requires_grad_(not any(f in key for f in freeze))
        if not param.requires_grad and accelerator.is_main_process:
            LOGGER.info(f"freezing {key}")
    if not any(param.requires_grad for param in model.parameters()):
        raise ConfigError(f"--freeze {','.join(map(str, config.freeze))} freezes every layer of this model (it has "
                          f"{len(model.model)}); nothing would train. Freeze fewer (10 is YOLOv5's backbone)")
    return model


def build_data(run: Run, model: DetectionModel) -> Data:
    """Image size and batch size for this model and these processes; the scanned datasets and their loaders."""
    config, accelerator = run.config, run.accelerator
    grid_stride = max(int(model.stride.max()), 32)
    imgsz = math.ceil(config.imgsz / grid_stride) * grid_stride
    if imgsz != config.imgsz:
        LOGGER.warning(f"--imgsz {config.imgsz} must be a multiple of max stride {grid_stride}, updating to {imgsz}")
    batch_size = config.batch_size
    if batch_size == -1:
        from .autobatch import autobatch

        batch_size = autobatch(model.to(accelerator.device), imgsz) * accelerator.num_processes
    world = accelerator.num_processes
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world})")
    batch_per_device = batch_size // world
    if config.quad and batch_per_device % 4:
        raise ConfigError(f"--quad needs a batch size per process that 4 divides, got {batch_per_device}")
    with accelerator.main_process_first():  # the main process writes the label caches the others read
        verbose = accelerator.is_main_process
        train_index = scan_labels(list_images(run.data, "train"), prefix="train: ", workers=config.workers,
                                  verbose=verbose)
        val_split = "val" if "val" in run.data.splits else "train"
        val_index = scan_labels(list_images(run.data, val_split), prefix="val: ", workers=config.workers,
                                verbose=verbose)
    train_set = YoloDataset(train_index, imgsz, batch_per_device, augment=True, hyp=run.hyp.augment, rect=config.rect,
                            stride=grid_stride, single_cls=config.single_cls, cache=config.cache, seed=config.seed,
                            mosaic_epochs=config.epochs - config.close_mosaic if config.close_mosaic else None,
                            prefix="train: ")
    train_set.quad = config.quad
    # batched on the GPU; on CPUs (and for --quad's tiles of four samples) the workers do it
    train_set.hsv_on_device = accelerator.device.type == "cuda" and not config.quad
    check_labels(train_set, run.nc, str(run.data.source))
    val_set = YoloDataset(val_index, imgsz, batch_size * 2, rect=True, stride=grid_stride, pad=0.5,
                          single_cls=config.single_cls, cache=config.cache, seed=config.seed, prefix="val: ")
    check_labels(val_set, run.nc, str(run.data.source), split="validation")
    train_loader = build_dataloader(train_set, batch_per_device, config.workers, shuffle=not config.rect,
                                    seed=config.seed, pin_memory=accelerator.device.type == "cuda")
    val_loader, val_indices = build_val_batches(val_set, batch_size * 2, config.workers * 2,
                                                accelerator.process_index, world)
    return Data(imgsz, grid_stride, batch_size, train_set, train_loader, train_loader.batch_sampler.sampler,
                val_loader, val_indices, labels_to_class_weights(train_set.labels, run.nc) * run.nc)


def fit_anchors(run: Run, model: DetectionModel, data: Data) -> None:
    """AutoAnchor on a new run (the main process decides, every process takes its anchors), then YOLOv5's
    rounding of the initial weights to fp16 precision."""
    if run.resuming or model.anchor_free:  # anchor-free models have no anchors to fit
        return
    if not run.config.noautoanchor:
        from .anchors import check_anchors

        if run.accelerator.is_main_process:
            check_anchors(model, data.train_set, thr=run.hyp.loss.anchor_t, imgsz=data.imgsz,
                          rng=np.random.default_rng(run.config.seed))
        model.model[-1].anchors.copy_(broadcast(model.model[-1].anchors.contiguous(), from_process=0))
    model.half().float()  # yolov5 parity: pre-reduce anchor (and weight) precision to fp16's


def build_training_state(run: Run, model: DetectionModel, data: Data) -> tuple[TrainingState, StepPlan]:
    """Loss, optimizer and LR schedule; the model and optimizer prepared by Accelerate; the EMA; the step plan."""
    config, hyp, accelerator = run.config, run.hyp, run.accelerator
    python_rng = random.Random(config.seed)
    gains = replace(hyp.loss, label_smoothing=config.label_smoothing)
    if model.anchor_free:
        criterion = AnchorFreeLoss.from_detect(model.model[-1], gains).to(accelerator.device)
    else:
        gains = scale_loss_gains(gains, model.model[-1].nl, run.nc, data.imgsz)
        criterion = DetectionLoss.from_detect(model.model[-1], gains).to(accelerator.device)
    run.columns = result_columns(criterion.loss_names)
    if config.optimizer == "auto":
        choose_optimizer(run, len(data.train_set), data.batch_size)
        config, hyp = run.config, run.hyp
    weight_decay = scaled_weight_decay(hyp.optimizer.weight_decay, data.batch_size)
    if config.sync_bn and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        LOGGER.info("Using SyncBatchNorm()")
    ema = None
    if not is_sharded(accelerator):  # (FSDP2 shards only dense parameters; channels_last images still lead)
        model = model.to(memory_format=torch.channels_last)  # ~20% faster convolutions on CPU, tensor-core friendly
    else:  # the EMA from the whole model, then it follows the shards
        broadcast_module(model, accelerator)
        ema = ModelEMA(model)
        shard_model(model, accelerator)
    optimizer = build_optimizer(model, config.optimizer, hyp.optimizer.lr0, hyp.optimizer.momentum, weight_decay)
    if accelerator.is_main_process:
        biases, weights, norms = (len(g["params"]) for g in optimizer.param_groups)
        LOGGER.info(f"optimizer: {type(optimizer).__name__}(lr={hyp.optimizer.lr0:g}) with parameter groups "
                    f"{norms} weight(decay=0.0), {weights} weight(decay={weight_decay:g}), {biases} bias")
    lr_factor = lr_lambda(config.epochs, hyp.optimizer.lrf, cosine=config.cos_lr)
    scheduler = LambdaLR(optimizer, lr_lambda=lr_factor)
    prepared, optimizer, data.train_loader = accelerator.prepare(model, optimizer, data.train_loader)
    # the plain module: its parameters are the compiled one's, and its state-dict keys have no "_orig_mod." (weights,
    # EMA, resumable state and validation are those of any run)
    unwrapped = accelerator.unwrap_model(prepared, keep_torch_compile=False)
    if ema is None:
        ema = ModelEMA(unwrapped)
    else:
        ema.follow_shards(unwrapped)
    training = TrainingState(prepared, unwrapped, ema, optimizer, scheduler, accelerator.scaler,
                             EarlyStopping(config.patience), config.epochs, python_rng, maps=np.zeros(run.nc))
    batches_per_epoch = len(data.train_loader)
    warmup = Warmup.plan(hyp.warmup, hyp.optimizer.momentum, batches_per_epoch, data.batch_size,
                         epochs=config.epochs if model.anchor_free else None)
    plan = StepPlan(accelerator, criterion, warmup, lr_factor, 4.0 if config.quad else 1.0,
                    data.imgsz, data.grid_stride, config.multi_scale, batches_per_epoch)
    return training, plan


def choose_optimizer(run: Run, images: int, batch_size: int) -> None:
    """--optimizer auto (the YOLOv5u recipe's default; optim.auto_optimizer): AdamW or SGD with its lr0 and
    momentum 0.9, the bias warmup from 0. The choice goes into the run's opt.yaml and hyp.yaml, so a resume keeps
    it."""
    name, lr0, momentum = auto_optimizer(images, batch_size, run.config.epochs, run.nc)
    hyp = run.hyp
    run.hyp = replace(hyp, optimizer=replace(hyp.optimizer, lr0=lr0, momentum=momentum),
                      warmup=replace(hyp.warmup, warmup_bias_lr=0.0),
                      values={**hyp.values, "lr0": lr0, "momentum": momentum, "warmup_bias_lr": 0.0})
    run.config = replace(run.config, optimizer=name)
    if run.accelerator.is_main_process:
        LOGGER.info(f"optimizer: auto chose {name}(lr={lr0:g}, momentum={momentum:g}) for {images} images, "
                    f"{run.config.epochs} epochs (lr0, momentum and warmup_bias_lr of the hyp file replaced)")


def restore(run: Run, training: TrainingState, plan: StepPlan) -> None:
    """Load the latest snapshot into the training state: every tensor, counter and random generator. A damaged
    snapshot is reported and the one before it used."""
    config, accelerator = run.config, run.accelerator
    candidates = snapshots(run.paths.state)
    for i, snapshot in enumerate(candidates):
        try:
            saved = read_snapshot(snapshot)
            check_state_dict(training.unwrapped, saved["model"], str(snapshot / "model.safetensors"))
            training.load_state_dict(saved)
            found_rng = read_rank_files(snapshot, accelerator.process_index, training.rng)
            pending = read_pending_grads(snapshot, accelerator.process_index)
            break
        except (StateError, WeightsError) as err:
            if i + 1 == len(candidates):
                raise StateError(f"{err} (and no earlier snapshot in {run.paths.state} is usable)") from None
            LOGGER.warning(f"WARNING ⚠️ {err}; resuming from the snapshot before it, {candidates[i + 1]}")
    if not found_rng:
        LOGGER.warning(f"{snapshot}: no random state for process {accelerator.process_index}; reseeding")
    training.load_pending_gradients(pending)
    if training.planned_epochs != config.epochs:  # extended: continue on the re-planned schedule
        for group in training.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * plan.lr_factor(training.loop.epoch)
        training.planned_epochs = config.epochs
    if not training.unwrapped.anchor_free:
        plan.criterion.set_anchors(training.unwrapped.model[-1].anchors)  # AutoAnchor's, as saved
    if training.loop.epoch >= config.epochs:
        raise ConfigError(f"{run.paths.save_dir} finished its {config.epochs} epochs; pass --epochs N (more) to "
                          f"extend it")
    if accelerator.is_main_process:
        drop_results_from(run.paths.results, training.loop.epoch)
        LOGGER.info(f"Resuming training from {snapshot} at epoch {training.loop.epoch}, batch {training.loop.batch}")


def start(run: Run, data: Data) -> None:
    """Label plots, hyp.yaml and opt.yaml, the trackers, and the run's first log lines."""
    config, accelerator, save_dir = run.config, run.accelerator, run.paths.save_dir
    if run.plots and not run.resuming:
        from .plots import plot_labels

        plot_labels(data.train_set.labels, run.names, save_dir)
    if accelerator.is_main_process:
        atomic_write(save_dir / "hyp.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(dict(run.hyp.values),
                                                                                        sort_keys=False)))
        atomic_write(save_dir / "opt.yaml", lambda tmp: tmp.write_text(
            yaml.safe_dump(replace(config, resume=None).to_dict(), sort_keys=False)))
        run.paths.weights.mkdir(parents=True, exist_ok=True)
    if run.trackers:
        accelerator.init_trackers(save_dir.name, config={**{k: str(v) for k, v in config.to_dict().items()},
                                                         **run.hyp.values},
                                  init_kwargs={"wandb": {"dir": str(save_dir), "name": save_dir.name}})
    if accelerator.is_main_process:
        precision = {"no": "fp32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}.get(
            accelerator.mixed_precision, accelerator.mixed_precision)
        backend = accelerator.state.dynamo_plugin.backend
        compiled = f", compiled ({backend.value.lower()})" if backend.value != "NO" else ""
        LOGGER.info(f"Image sizes {data.imgsz} train, {data.imgsz} val; {precision} on {accelerator.device}{compiled}\n"
                    f"Logging results to {save_dir}\n"
                    f"Starting training for {config.epochs} epochs...")


def end_epoch(run: Run, training: TrainingState, data: Data, plan: StepPlan) -> bool:
    """Step the LR schedule, validate the EMA model, record fitness and the results row, save weights and the
    state; True when early stopping says to stop."""
    config, accelerator, loop = run.config, run.accelerator, training.loop
    epoch = loop.epoch
    lrs = [g["lr"] for g in training.optimizer.param_groups]
    training.scheduler.step()
    training.ema.gather()  # whole on every process (FSDP)
    final_epoch = epoch + 1 == config.epochs or training.stopper.possible_stop
    notify(run, training, "on_train_epoch_end", losses=list(loop.mean_loss), lrs=lrs)
    results = (0.0,) * 7
    if not config.noval or final_epoch or epoch + 1 in config.val_epochs:
        result = evaluate(training.ema.module, data.val_loader, data.val_indices, accelerator, nc=run.nc,
                          criterion=plan.criterion, single_cls=config.single_cls)
        results, training.maps = result.results(), result.metrics.class_maps
        if accelerator.is_main_process:
            LOGGER.info("\n".join(format_results(result, run.names)))
        notify(run, training, "on_val_end", metrics=dict(zip(run.columns[3:10], results)))
    stop = training.stopper(epoch, float(fitness(np.array(results).reshape(1, -1))[0]))
    values = [*loop.mean_loss, *results, *lrs]
    failure = None
    if accelerator.is_main_process:
        try:
            append_results(run.paths.results, epoch, values, run.columns)
            if not config.nosave or final_epoch:
                saved = save_epoch_weights(run, training, epoch)
                notify(run, training, "on_model_save", weights=saved)
        except OSError as err:  # every process stops on it, below
            failure = save_failure(run.paths.weights, err).replace("training state", "weights")
        stop = notify(run, training, "on_fit_epoch_end", metrics=dict(zip(run.columns, values))) or stop
    if run.trackers:
        accelerator.log(dict(zip(run.columns, values)), step=epoch)
        if epoch == run.first_epoch == 0 and run.plots:  # the first training mosaics, as YOLOv5's loggers
            log_images(accelerator, [run.paths.save_dir / f"train_batch{i}.jpg" for i in range(3)], step=epoch)
    loop.epoch, loop.batch, loop.mean_loss = epoch + 1, 0, [0.0, 0.0, 0.0]
    if any_process(accelerator, failure is not None)[0]:
        raise StateError(failure or "the main process could not save this epoch's weights")
    save_state(run, training)
    return bool(broadcast_object_list([stop])[0])


def save_epoch_weights(run: Run, training: TrainingState, epoch: int) -> list[Path]:
    """last.safetensors, best.safetensors when fitness matched or beat the best, epoch{N} every --save-period; in
    fp16 unless --save-fp32. Returns the files written."""
    extra = {"epoch": epoch, "best_fitness": training.stopper.best_fitness,
             "date": datetime.now().isoformat(timespec="seconds")}
    weights, ema = run.paths.weights, training.ema.module
    half = not run.config.save_fp32  # as YOLOv5 strips them; the resumable state keeps full precision
    names = ["last"] + (["best"] if training.stopper.improved else []) + \
        ([f"epoch{epoch}"] if run.config.save_period > 0 and epoch % run.config.save_period == 0 else [])
    return [save_weights(ema, weights / f"{name}.safetensors", run.names, extra, half=half) for name in names]


def save_state(run: Run, training: TrainingState) -> None:
    """A resumable snapshot from every process (not with --nosave, but for evolve's candidates, which resume)."""
    if run.config.nosave and not run.config.candidate:
        return
    accelerator = run.accelerator
    # on every process: gathering a sharded model's state is collective (only the main process keeps it)
    state = training.state_dict(keep=accelerator.is_main_process)
    save_snapshot(run.paths.state, training.loop.step, accelerator.process_index,
                  (lambda: state) if accelerator.is_main_process else None, training.rng,
                  training.pending_gradients(), accelerator.wait_for_everyone,
                  lambda failed: any_process(accelerator, failed)[0])


def batch_hooks(run: Run, training: TrainingState, plot: bool):
    """train_one_epoch's per-batch hook, if anything needs one: the first three batches drawn (train_batch{i}.jpg)
    and the user's on_train_batch_end hooks."""
    hooks = run.callbacks.hooks["on_train_batch_end"] if run.accelerator.is_main_process else []
    if not (plot or hooks):
        return None

    def hook(i: int, images: torch.Tensor, targets: torch.Tensor, batch_paths: tuple) -> None:
        if plot and i < 3:
            from .plots import plot_images

            plot_images(images, targets, batch_paths, run.paths.save_dir / f"train_batch{i}.jpg", run.names)
        if hooks:
            notify(run, training, "on_train_batch_end", batch=i, losses=list(training.loop.mean_loss))

    return hook


def notify(run: Run, training: TrainingState, event: str, **values: Any) -> bool:
    """The user's hooks for `event`, on the main process; True if one asked to stop."""
    if not run.callbacks.hooks[event] or not run.accelerator.is_main_process:
        return False
    values = {"epoch": training.loop.epoch, **values}
    return run.callbacks.run(event, epochs=run.config.epochs, save_dir=run.paths.save_dir,
                             model=training.ema.module, **values).stop


def finish(run: Run, training: TrainingState, data: Data, plan: StepPlan, interrupted: bool) -> None:
    """results.png and the final validation of best.safetensors (or, interrupted, how to resume); close the
    trackers and the process group."""
    accelerator, paths = run.accelerator, run.paths
    if interrupted:
        if accelerator.is_main_process:
            LOGGER.info(f"Training interrupted at epoch {training.loop.epoch}, batch {training.loop.batch}; state "
                        f"saved. Continue with: yolo-accel train --resume {paths.save_dir}")
    else:
        if run.plots and paths.results.exists():
            from .plots import plot_results

            plot_results(paths.results)
        if accelerator.is_main_process:
            LOGGER.info(f"\n{training.loop.epoch - run.first_epoch} epochs completed in "
                        f"{(time.time() - run.started) / 3600:.3f} hours. Results saved to {paths.save_dir}")
        best = paths.weights / "best.safetensors"
        metrics = {}
        if best.exists() and not run.config.candidate:  # as YOLOv5, --noval too
            result = validate_best(best, accelerator, data.val_loader, data.val_indices, nc=run.nc, names=run.names,
                                   criterion=plan.criterion, single_cls=run.config.single_cls,
                                   plots_dir=paths.save_dir if run.plots else None)
            metrics = dict(zip(run.columns[3:10], result.results()))
        notify(run, training, "on_train_end", metrics=metrics)
    if run.trackers:
        if run.plots and not interrupted:
            names = [f"val_batch{i}_pred.jpg" for i in range(3)] + [
                "results.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"]
            log_images(accelerator, [paths.save_dir / n for n in names], step=training.loop.epoch)
        if accelerator.is_main_process and not interrupted:
            log_weights(accelerator, paths.weights / "best.safetensors", f"{paths.save_dir.name}-best")
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit on every rank (gloo aborts otherwise)

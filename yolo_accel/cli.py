"""`yolo-accel` command line: parse flags, call one function. No logic lives here."""

from __future__ import annotations

import codecs
import faulthandler
import os
import signal

# DataLoader workers share the CPU with PyTorch's threads; passive OpenMP waiting stops those threads spinning on
# cores the workers need (about 10% faster CPU training here). It must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .checkpoint import WeightsError
from .config import ConfigError

app = typer.Typer(name="yolo-accel", no_args_is_help=True, add_completion=False,
                  help="YOLOv5 (v7.0 semantics) object detection on Hugging Face Accelerate.")



def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


# options several commands share (each command gives its own default)
ImageSize = Annotated[int, typer.Option("--imgsz", "--img", "--img-size", help="image size (pixels)")]
ConfThres = Annotated[float, typer.Option(help="confidence threshold")]
IouThres = Annotated[float, typer.Option(help="NMS IoU threshold")]
MaxDet = Annotated[int, typer.Option(help="maximum detections per image")]
SaveTxt = Annotated[bool, typer.Option("--save-txt", help="save results to *.txt")]
SaveConf = Annotated[bool, typer.Option("--save-conf", help="save confidences in --save-txt labels")]
Half = Annotated[bool, typer.Option("--half", help="FP16 (CUDA)")]
RunFolder = Annotated[str, typer.Option(help="save to PROJECT/NAME")]
ExistOk = Annotated[bool, typer.Option("--exist-ok", help="reuse an existing PROJECT/NAME")]
Device = Annotated[str, typer.Option(help="cpu, or a CUDA index like 0")]
DataYaml = Annotated[str, typer.Option(help="dataset yaml path, shipped name (coco128), or 'demo'")]
# training flags that train and evolve share
ModelCfg = Annotated[str, typer.Option(help="model yaml or name (default: the weights' own, else yolov5n)")]
Rect = Annotated[bool, typer.Option("--rect", help="rectangular training batches")]
Cache = Annotated[str | None, typer.Option(help="cache images in ram (bare --cache) or disk")]
ImageWeights = Annotated[bool, typer.Option("--image-weights", help="weighted image selection")]
MultiScale = Annotated[bool, typer.Option("--multi-scale", help="vary image size +/- 50%")]
SingleCls = Annotated[bool, typer.Option("--single-cls", help="train as single-class")]
Optimizer = Annotated[str, typer.Option(help="SGD, Adam, AdamW or auto [default: SGD; auto for YOLOv5u models]")]
CosLr = Annotated[bool, typer.Option("--cos-lr", help="cosine LR schedule")]


def launch_command(device: str, argv: list[str]) -> list[str] | None:
    """For `train --device 0,1,...` outside a launcher: the `accelerate launch` command that runs one process per
    listed GPU with the same arguments (as Ultralytics 8 starts DDP); None for one device or inside a launch."""
    indices = [i for i in device.replace(" ", "").split(",") if i]
    if len(indices) < 2 or "LOCAL_RANK" in os.environ or os.environ.get("ACCELERATE_LAUNCH") == "1":
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(len(indices)),
            "--num_machines", "1", "--dynamo_backend", "no", "-m", "yolo_accel.cli", *argv]


def select_device(device: str) -> None:
    """--device cpu, or CUDA indices ("0" or "0,1"): those become the only visible GPUs, and asking for one that is
    not there is an error naming what is (never a silent fall back to the CPU)."""
    if device in ("", "cpu"):
        return
    indices = device.replace(" ", "").split(",")
    if not all(i.isdigit() for i in indices):
        fail(f"--device {device!r}: use cpu, or CUDA indices like 0 or 0,1")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(indices)
    import torch

    if not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device is available here (the devices are: cpu); use --device cpu")
    if torch.cuda.device_count() < len(indices):
        fail(f"--device {device}: only {torch.cuda.device_count()} of these CUDA devices exist here "
             f"(nvidia-smi lists them)")


def escape_unprintable(err: UnicodeError) -> tuple[str, int]:
    """An encoding error handler: a byte of a file name that was not valid text (Python keeps it as a surrogate,
    U+DC80-U+DCFF) prints as \\xNN, as the byte it was; any other character the stream cannot take as \\uNNNN."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start:err.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                   c.encode("ascii", "backslashreplace").decode() for c in text), err.end


ESCAPE_ERRORS = "yolo_accel.escape"
codecs.register_error(ESCAPE_ERRORS, escape_unprintable)


def setup_logging() -> None:
    """INFO on the main process, warnings only on the others (ranks come from the launcher's environment)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid text print escaped, never raise
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ESCAPE_ERRORS)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stdout, force=True)
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # no "building the font cache" chatter


def parse_freeze(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        fail(f"--freeze takes layer counts like 10, or indices like 0,1,2; got {text!r}")
        raise


@app.command()
def train(
    data: DataYaml = "demo",
    cfg: ModelCfg = "",
    weights: Annotated[str, typer.Option(help="initial weights: .safetensors or an Ultralytics .pt")] = "",
    hyp: Annotated[str, typer.Option(help="hyperparameters: scratch-low|med|high, anchor-free or a yaml path "
                                          "[default: scratch-low; anchor-free for YOLOv5u models]")] = "",
    epochs: Annotated[int | None, typer.Option(help="total epochs [default: 100; 50 on the demo data]")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch",
                                            help="total batch over all processes; -1 AutoBatch (CUDA)")] = 16,
    imgsz: Annotated[int | None, typer.Option("--imgsz", "--img", "--img-size",
                                              help="train/val image size [default: 640; 128 on the demo data]")] = None,
    rect: Rect = False,
    resume: Annotated[str | None, typer.Option(help="resume the latest run (bare --resume), or the run at PATH")
                      ] = None,
    nosave: Annotated[bool, typer.Option("--nosave", help="only save final weights")] = False,
    noval: Annotated[bool, typer.Option("--noval", help="only validate the final epoch")] = False,
    noautoanchor: Annotated[bool, typer.Option("--noautoanchor", help="disable AutoAnchor")] = False,
    noplots: Annotated[bool, typer.Option("--noplots", help="save no plot files")] = False,
    cache: Cache = None,
    image_weights: ImageWeights = False,
    multi_scale: MultiScale = False,
    single_cls: SingleCls = False,
    optimizer: Optimizer = "",
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm across processes")] = False,
    workers: Annotated[int, typer.Option(help="max dataloader workers per process")] = 8,
    project: RunFolder = "runs/train",
    name: Annotated[str, typer.Option(help="save to PROJECT/NAME")] = "exp",
    exist_ok: ExistOk = False,
    cos_lr: CosLr = False,
    label_smoothing: Annotated[float, typer.Option(help="label smoothing epsilon")] = 0.0,
    patience: Annotated[int, typer.Option(help="early stopping patience (epochs without improvement)")] = 100,
    freeze: Annotated[str, typer.Option(help="freeze the first N layers (10 = backbone) or layers 0,1,2")] = "0",
    save_period: Annotated[int, typer.Option(help="save weights every N epochs (disabled if < 1)")] = -1,
    snapshot_interval: Annotated[str, typer.Option(
        help="also save the resumable state inside epochs: every N batches (500) or minutes (30m)")] = "",
    seed: Annotated[int, typer.Option(help="global training seed")] = 0,
    close_mosaic: Annotated[int | None, typer.Option(help="train the last N epochs without mosaic "
                                                     "[default: 0; 10 for YOLOv5u models]")] = None,
    mixed_precision: Annotated[str, typer.Option(
        help="auto (accelerate launch's choice, else fp16 on CUDA and fp32 on CPU), no, fp16 or bf16")] = "auto",
    device: Annotated[str, typer.Option(help="single process: cpu, or a CUDA index like 0")] = "",
    log_with: Annotated[str, typer.Option(help="trackers, comma-separated: tensorboard, wandb, comet_ml, mlflow, "
                                               "clearml, aim, dvclive, ...; all (every installed one) or none")
                        ] = "none",
    quad: Annotated[bool, typer.Option("--quad", help="quad dataloader: 4 images per sample at 2x size")] = False,
    save_fp32: Annotated[bool, typer.Option("--save-fp32", help="weights files in fp32 (default fp16)")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training (Accelerate's "
                                          "dynamo_backend inductor); pays on GPUs, see the README")] = False,
    evolve: Annotated[int | None, typer.Option(help="evolve hyperparameters for N generations (bare: 300)")] = None,
) -> None:
    """Train a YOLOv5 model (`--device 0,1,2,3`, or `accelerate launch cli.py train ...`, for several GPUs)."""
    setup_logging()
    select_device(device)
    command = launch_command(device, expand_optional_values(sys.argv[1:]))
    if command is not None:
        typer.echo(f"Starting {command[command.index('--num_processes') + 1]} processes: {' '.join(command)}")
        os.environ["ACCELERATE_LAUNCH"] = "1"
        raise typer.Exit(subprocess.call(command))
    from .config import TrainConfig
    from .data.loader import LoaderWorkerLost
    from .data.sources import DataError
    from .distributed import ProcessLost
    from .engine import NonFiniteLoss
    from .state import StateError
    from .stopping import TrainingInterrupted
    from .train import train as run_training

    config = TrainConfig(
        data=data, model=cfg, weights=weights, hyp=hyp, epochs=epochs, batch_size=batch_size, imgsz=imgsz,
        rect=rect, resume=resume, nosave=nosave, noval=noval, noautoanchor=noautoanchor,
        noplots=noplots, cache=cache, image_weights=image_weights, multi_scale=multi_scale, single_cls=single_cls,
        optimizer=optimizer, sync_bn=sync_bn, workers=workers, project=project, name=name, exist_ok=exist_ok,
        cos_lr=cos_lr, label_smoothing=label_smoothing, patience=patience, freeze=parse_freeze(freeze),
        save_period=save_period, snapshot_interval=snapshot_interval, seed=seed, close_mosaic=close_mosaic,
        mixed_precision=mixed_precision,
        device=device, log_with=log_with, quad=quad, save_fp32=save_fp32, compile=compile)
    try:
        if evolve:
            from .evolve import evolve as run_evolve

            run_evolve(config, generations=evolve, project="runs/evolve" if project == "runs/train" else project,
                       name=name)
        else:
            run_training(config)
    except TrainingInterrupted:
        raise typer.Exit(0) from None  # a deliberate stop: the state is saved and the message says how to resume
    except ProcessLost as err:  # one line, from one survivor
        fail(str(err)) if err.report else sys.exit(1)
    except (ConfigError, WeightsError, DataError, StateError, NonFiniteLoss, LoaderWorkerLost) as err:
        fail(str(err))


@app.command()
def val(
    data: DataYaml = "demo",
    weights: Annotated[list[str] | None, typer.Option(help="weights file(s): .safetensors or Ultralytics .pt; "
                                                           "repeat the flag for several")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch", help="total over all processes")] = 32,
    imgsz: ImageSize = 640,
    conf_thres: ConfThres = 0.001,
    iou_thres: IouThres = 0.6,
    max_det: MaxDet = 300,
    task: Annotated[str, typer.Option(help="val, test or speed")] = "val",
    single_cls: Annotated[bool, typer.Option("--single-cls", help="treat as single-class dataset")] = False,
    augment: Annotated[bool, typer.Option("--augment", help="test-time augmentation (scales and a flip)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="report mAP by class")] = False,
    save_txt: SaveTxt = False,
    save_conf: SaveConf = False,
    save_json: Annotated[bool, typer.Option("--save-json", help="save a COCO-format detections JSON")] = False,
    project: RunFolder = "runs/val",
    name: RunFolder = "exp",
    exist_ok: ExistOk = False,
    half: Half = False,
    workers: Annotated[int, typer.Option(help="max dataloader workers per process")] = 8,
    device: Annotated[str, typer.Option(help="single process: cpu, or a CUDA index like 0")] = "",
    noplots: Annotated[bool, typer.Option("--noplots", help="save no plot files")] = False,
) -> None:
    """Validate weights on a dataset split (`accelerate launch cli.py val ...` shards it over processes)."""
    setup_logging()
    select_device(device)
    from .data.sources import DataError
    from .val import validate

    try:
        validate(data, weights or [], batch_size=batch_size, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres,
                 max_det=max_det, task=task, single_cls=single_cls, verbose=verbose, save_txt=save_txt,
                 save_conf=save_conf, save_json=save_json, project=project, name=name, exist_ok=exist_ok,
                 half=half, workers=workers, device=device, augment=augment, plots=not noplots)
    except (ConfigError, WeightsError, DataError) as err:
        fail(str(err))


@app.command()
def detect(
    source: Annotated[str, typer.Option(help="image, folder, glob or .txt list of images")] = "",
    weights: Annotated[str, typer.Option(help="weights: .safetensors or an Ultralytics .pt")] = "",
    imgsz: ImageSize = 640,
    conf_thres: ConfThres = 0.25,
    iou_thres: IouThres = 0.45,
    max_det: MaxDet = 1000,
    classes: Annotated[str, typer.Option(help="keep only these classes, e.g. 0,2,3")] = "",
    agnostic_nms: Annotated[bool, typer.Option("--agnostic-nms", help="class-agnostic NMS")] = False,
    save_txt: SaveTxt = False,
    save_conf: SaveConf = False,
    save_crop: Annotated[bool, typer.Option("--save-crop", help="save cropped prediction boxes")] = False,
    nosave: Annotated[bool, typer.Option("--nosave", help="do not save annotated images")] = False,
    line_thickness: Annotated[int, typer.Option(help="bounding box thickness (pixels)")] = 3,
    hide_labels: Annotated[bool, typer.Option("--hide-labels", help="hide labels")] = False,
    hide_conf: Annotated[bool, typer.Option("--hide-conf", help="hide confidences")] = False,
    half: Half = False,
    project: RunFolder = "runs/detect",
    name: RunFolder = "exp",
    exist_ok: ExistOk = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per inference batch")] = 16,
    device: Device = "",
) -> None:
    """Detect objects in images and save annotated copies (and labels/crops) to runs/detect/exp{N}."""
    setup_logging()
    if not source or not weights:
        fail("detect needs --source (image, folder, glob or .txt list) and --weights")
    select_device(device)
    from .data.sources import DataError
    from .predict import detect as run_detect

    try:
        keep = [int(c) for c in classes.replace(",", " ").split()] if classes else None
    except ValueError:
        fail(f"--classes takes class indices like 0,2,3; got {classes!r}")
    try:
        run_detect(source, weights, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                   classes=keep, agnostic_nms=agnostic_nms, save_txt=save_txt, save_conf=save_conf,
                   save_crop=save_crop, nosave=nosave, line_thickness=line_thickness, hide_labels=hide_labels,
                   hide_conf=hide_conf, half=half, project=project, name=name, exist_ok=exist_ok,
                   batch_size=batch_size, device=device)
    except (ConfigError, WeightsError, DataError) as err:
        fail(str(err))


@app.command()
def export(
    weights: Annotated[str, typer.Option(help="weights: .safetensors or an Ultralytics .pt")] = "",
    include: Annotated[list[str] | None, typer.Option(help="torchscript and/or onnx (repeat the flag)")] = None,
    imgsz: ImageSize = 640,
    batch_size: Annotated[int, typer.Option("--batch-size", help="batch size of the example input")] = 1,
    opset: Annotated[int, typer.Option(help="ONNX opset version")] = 17,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="ONNX: dynamic batch and image size")] = False,
    half: Half = False,
    simplify: Annotated[bool, typer.Option("--simplify", help="ONNX: simplify with onnxslim if installed")] = False,
    device: Device = "",
) -> None:
    """Export weights to TorchScript and/or ONNX next to them, each checked against PyTorch's output."""
    setup_logging()
    if not weights:
        fail("export needs --weights")
    select_device(device)
    from .export import FORMATS
    from .export import export as run_export

    formats = tuple(x for item in (include or FORMATS) for x in item.replace(",", " ").split())
    try:
        run_export(weights, include=formats, imgsz=imgsz, batch_size=batch_size, opset=opset, dynamic=dynamic,
                   half=half, simplify=simplify, device=device)
    except (ConfigError, WeightsError) as err:
        fail(str(err))


@app.command()
def evolve(
    data: DataYaml = "demo",
    cfg: ModelCfg = "",
    weights: Annotated[str, typer.Option(help="initial weights for every candidate")] = "",
    hyp: Annotated[str, typer.Option(help="starting hyperparameters: scratch-low|med|high, anchor-free or a yaml "
                                          "[default: the model's recipe]")] = "",
    epochs: Annotated[int | None, typer.Option(help="epochs per candidate [default: as train]")] = None,
    generations: Annotated[int, typer.Option(help="total candidates in the ledger, all workers together")] = 300,
    parallel: Annotated[int, typer.Option(help="worker processes to start here (one per GPU if there are GPUs)")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch", help="batch size per candidate")] = 16,
    imgsz: Annotated[int | None, typer.Option("--imgsz", "--img", "--img-size", help="image size")] = None,
    noautoanchor: Annotated[bool, typer.Option("--noautoanchor", help="no AutoAnchor (anchors not evolved)")] = False,
    single_cls: SingleCls = False,
    optimizer: Optimizer = "",
    cache: Cache = None,
    rect: Rect = False,
    image_weights: ImageWeights = False,
    multi_scale: MultiScale = False,
    cos_lr: CosLr = False,
    workers: Annotated[int, typer.Option(help="max dataloader workers per candidate")] = 8,
    seed: Annotated[int, typer.Option(help="training seed of every candidate")] = 0,
    project: RunFolder = "runs/evolve",
    name: Annotated[str, typer.Option(help="save to PROJECT/NAME (re-running continues the latest)")] = "exp",
    resume: Annotated[str | None, typer.Option(help="continue the evolve folder at PATH")] = None,
    halving: Annotated[bool, typer.Option("--halving", help="successive halving: stop candidates that rank in the "
                                                            "bottom two thirds at epochs E/9 and E/3")] = False,
    restarts: Annotated[bool, typer.Option("--restarts", help="with --halving: promotions, each rung a "
                                                              "whole run of its epochs (every candidate E/9; the top "
                                                              "third of a rung's runs go on to the next)")] = False,
    backend: Annotated[str, typer.Option(help="file (workers sharing a locked ledger) or ray (one task per "
                                              "candidate on a Ray cluster)")] = "file",
    address: Annotated[str | None, typer.Option(help="--backend ray: the cluster's address [default: $RAY_ADDRESS, "
                                                     "else a local Ray]")] = None,
    device: Device = "",
) -> None:
    """Evolve hyperparameters with YOLOv5's genetic search; workers share evolve.csv through a file lock."""
    setup_logging()
    select_device(device)
    from .config import TrainConfig
    from .data.sources import DataError
    from .evolve import evolve as run_evolve

    config = TrainConfig(data=data, model=cfg, weights=weights, hyp=hyp, epochs=epochs, batch_size=batch_size,
                         imgsz=imgsz, noautoanchor=noautoanchor, single_cls=single_cls, optimizer=optimizer,
                         cache=cache, rect=rect, image_weights=image_weights, multi_scale=multi_scale, cos_lr=cos_lr,
                         workers=workers, seed=seed, device=device)
    from .stopping import TrainingInterrupted

    if resume is not None and not (Path(resume) / "opt.yaml").is_file():  # a typo would start a new search there
        fail(f"--resume {resume}: not an evolve folder (it holds opt.yaml and evolve.csv); leave --resume out to "
             f"start one")
    try:
        run_evolve(config, generations=generations, parallel=parallel, project=project, name=name,
                   resume=resume, halving=halving, restarts=restarts, backend=backend, address=address)
    except TrainingInterrupted:
        typer.echo("evolve stopped; its unfinished candidate is saved. Re-run the same command to continue it.")
        raise typer.Exit(0) from None
    except (ConfigError, WeightsError, DataError) as err:
        fail(str(err))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Ultralytics YOLOv5 checkpoint (.pt)")],
    destination: Annotated[Path | None,
                           typer.Argument(help="output .safetensors (default: SOURCE with that suffix)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace DESTINATION if it exists")] = False,
) -> None:
    """Import an Ultralytics .pt checkpoint as .safetensors, running no code from the pickle."""
    from .checkpoint import import_ultralytics, save_weights

    destination = destination or source.with_suffix(".safetensors")
    if destination.suffix != ".safetensors":
        fail(f"{destination}: the destination must end in .safetensors")
    if destination.exists() and not overwrite:
        fail(f"{destination}: already exists (pass --overwrite to replace it)")
    try:
        model, names, info = import_ultralytics(source)
    except (WeightsError, ConfigError) as err:
        fail(str(err))
    save_weights(model, destination, names=names, extra={"converted_from": info["source"]})
    count = len(model.state_dict())
    typer.echo(f"Converted {source} ({info['weights']} weights, {count} tensors, nc={model.nc}) -> {destination}")


@app.command()
def info(
    model: Annotated[str, typer.Option("--model", "--cfg", "--weights",
                                       help="model yaml (name like yolov5s, or path) or weights file")] = "yolov5s",
    img: Annotated[int, typer.Option("--img", "--imgsz", help="image size the GFLOPs are counted at")] = 640,
    nc: Annotated[int | None, typer.Option(help="override the number of classes of a yaml")] = None,
    fuse: Annotated[bool, typer.Option(help="fold BatchNorm into convs first, as for inference")] = False,
    verbose: Annotated[bool, typer.Option(help="print one row per layer")] = True,
) -> None:
    """Print layers, parameters, gradients and GFLOPs of a model, like YOLOv5's summary."""
    from .checkpoint import load_model
    from .config import MAX_IMGSZ
    from .model import build_model
    from .model.summary import layer_rows, summarize

    if not 32 <= img <= MAX_IMGSZ:
        fail(f"--img must be from 32 to {MAX_IMGSZ}, got {img}")
    if nc is not None and nc < 1:
        fail(f"--nc must be at least 1, got {nc}")
    is_weights = Path(model).suffix in (".safetensors", ".pt")
    try:
        net = load_model(model) if is_weights else build_model(model, nc=nc)
    except (WeightsError, ConfigError) as err:
        fail(str(err))
    if fuse:
        net.eval().fuse()
    if verbose:
        typer.echo(f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  module")
        for index, src, repeats, params, kind in layer_rows(net):
            typer.echo(f"{index:>3}{src:>18}{repeats:>3}{params:10.0f}  {kind}")
    name = Path(model).stem if is_weights else None
    typer.echo(str(summarize(net, img, name=name)))


@app.command("convert-dataset")
def convert_dataset(
    kind: Annotated[str, typer.Argument(help="coco (an instances JSON) or voc (a folder of XML annotations)")],
    annotations: Annotated[str, typer.Option(help="coco: the JSON file; voc: the Annotations folder")],
    images: Annotated[str, typer.Option(help="the folder of the images they describe")],
    out: Annotated[str, typer.Option(help="the YOLO dataset folder to write (images linked, labels, data.yaml)")],
    split: Annotated[str, typer.Option(help="the split these images are: train, val or test")] = "train",
    names: Annotated[str, typer.Option(help="voc: class names in order, comma-separated (default: all found)")
                     ] = "",
) -> None:
    """Convert a COCO-JSON or Pascal VOC dataset to YOLO labels (once; the originals are not touched)."""
    setup_logging()
    from .data.convert import convert_coco, convert_voc
    from .data.sources import DataError

    if kind not in ("coco", "voc"):
        fail(f"convert-dataset {kind}: choose coco or voc")
    if split not in ("train", "val", "test"):
        fail(f"--split must be train, val or test, got {split!r}")
    try:
        if kind == "coco":
            data_yaml = convert_coco(Path(annotations), Path(images), Path(out), split)
        else:
            classes = [n.strip() for n in names.split(",") if n.strip()] or None
            data_yaml = convert_voc(Path(annotations), Path(images), Path(out), split, classes)
    except DataError as err:
        fail(str(err))
    typer.echo(f"Wrote {data_yaml}; train with: yolo-accel train --data {data_yaml}")


# YOLOv5 flags that may stand alone or take a value (argparse nargs="?"): the value they mean alone
OPTIONAL_VALUES = {"--resume": "", "--cache": "ram", "--evolve": "300"}  # an empty --resume: the latest run
MANY_VALUES = {"--freeze"}  # YOLOv5 flags that take several values (argparse nargs="+"): `--freeze 0 1 2`


def expand_optional_values(args: list[str]) -> list[str]:
    """YOLOv5's flag forms for a parser that takes one value per flag: `--resume --epochs 5` -> `--resume ""
    --epochs 5` (a flag alone takes its default value), `--freeze 0 1 2` -> `--freeze "0 1 2"`."""
    out = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg in MANY_VALUES:
            values = []
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            out.append(" ".join(values))
        elif arg in OPTIONAL_VALUES and (i == len(args) or args[i].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main(argv: list[str] | None = None) -> None:
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack to stderr: where a hung run waits
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    app(args=expand_optional_values(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":  # `python -m yolo_accel.cli` (how `train --device 0,1` starts its processes)
    main()

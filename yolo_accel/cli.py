"""`yolo-accel` command line: parse flags, call one function. No logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .checkpoint import WeightsError
from .config import ConfigError

app = typer.Typer(name="yolo-accel", no_args_is_help=True, add_completion=False,
                  help="YOLOv5 (v7.0 semantics) object detection on Hugging Face Accelerate.")

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def not_available(command: str) -> None:
    fail(f"`yolo-accel {command}` is not available in this version yet; see the README for what is.", code=3)


@app.command(context_settings=PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Train a YOLOv5 model (not available in this version yet)."""
    not_available("train")


@app.command(context_settings=PASSTHROUGH)
def val(ctx: typer.Context) -> None:
    """Validate weights on a dataset (not available in this version yet)."""
    not_available("val")


@app.command(context_settings=PASSTHROUGH)
def detect(ctx: typer.Context) -> None:
    """Run inference on images (not available in this version yet)."""
    not_available("detect")


@app.command(context_settings=PASSTHROUGH)
def export(ctx: typer.Context) -> None:
    """Export weights to ONNX / TorchScript (not available in this version yet)."""
    not_available("export")


@app.command(context_settings=PASSTHROUGH)
def evolve(ctx: typer.Context) -> None:
    """Evolve hyperparameters (not available in this version yet)."""
    not_available("evolve")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Ultralytics YOLOv5 checkpoint (.pt)")],
    destination: Annotated[Path | None,
                           typer.Argument(help="output .safetensors (default: SOURCE with that suffix)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace DESTINATION if it exists")] = False,
) -> None:
    """Import an Ultralytics .pt checkpoint as .safetensors, running no code from the pickle."""
    from .checkpoint import save_weights
    from .ultralytics_import import import_ultralytics

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
    from .model import build_model
    from .model.summary import layer_rows, summarize

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


def main() -> None:
    app()

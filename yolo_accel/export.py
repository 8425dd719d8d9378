"""export(...): `yolo-accel export` — TorchScript and ONNX files of fused weights, checked against PyTorch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import MAX_IMGSZ, ConfigError, check_options
from .files import check_output_folder

LOGGER = logging.getLogger("yolo_accel")
FORMATS = ("torchscript", "onnx")


def export_torchscript(model: torch.nn.Module, images: torch.Tensor, path: Path, metadata: dict) -> Path:
    traced = torch.jit.trace(model, images, strict=False)
    traced.save(str(path), _extra_files={"config.txt": json.dumps(metadata)})
    return path


def export_onnx(model: torch.nn.Module, images: torch.Tensor, path: Path, metadata: dict, opset: int,
                dynamic: bool, simplify: bool) -> Path:
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'yolo-accel[export]'") from None
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    torch.onnx.export(model, images, str(path), opset_version=opset, dynamo=False, do_constant_folding=True,
                      input_names=["images"], output_names=["output0"], dynamic_axes=axes if dynamic else None)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    if simplify:
        try:
            import onnxslim

            proto = onnxslim.slim(proto)
        except ImportError:
            LOGGER.warning("--simplify: onnxslim is not installed; exporting without simplifying")
    onnx.save(proto, str(path))
    return path


def output_difference(output: torch.Tensor, expected: torch.Tensor, size: int) -> float:
    """Max abs difference with boxes in image units (pixels / size) and scores as they are."""
    scale = torch.ones(expected.shape[-1])
    scale[:4] = size
    return float(((output.cpu().float() - expected.cpu().float()) / scale).abs().max())


def check_onnx(path: Path, images: torch.Tensor, expected: torch.Tensor, size: int) -> float | None:
    """output_difference of onnxruntime's output from PyTorch's, or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": images.cpu().float().numpy()})[0]
    return output_difference(torch.from_numpy(output), expected, size)


@torch.no_grad()
def export(weights: str, *, include: tuple[str, ...] = FORMATS, imgsz: int = 640, batch_size: int = 1, opset: int = 17,
           dynamic: bool = False, half: bool = False, simplify: bool = False, device: str = "") -> list[Path]:
    """Write the requested formats next to `weights`; each is run once on a random image and compared with
    PyTorch's output (boxes in image units, scores as they are)."""
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--include: unknown format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    check_options((32 <= imgsz <= MAX_IMGSZ, f"--imgsz must be from 32 to {MAX_IMGSZ}, got {imgsz}"),
                  (batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}"),
                  (7 <= opset <= 30, f"--opset must be an ONNX opset from 7 to 30, got {opset}"))
    if Path(weights).is_file():
        check_output_folder(Path(weights).parent, "exported files into")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if half and not use_cuda:
        raise ConfigError("--half export needs a CUDA device")
    if half and dynamic:
        raise ConfigError("--half and --dynamic cannot be combined")
    target = torch.device("cuda" if use_cuda else "cpu")
    model = load_model(weights, device=target).eval().fuse()
    for p in model.parameters():
        p.requires_grad_(False)
    stride = max(int(model.stride.max()), 32)
    size = -(-imgsz // stride) * stride
    images = torch.zeros(batch_size, 3, size, size, device=target)
    if half:
        model, images = model.half(), images.half()
    model.model[-1].dynamic = dynamic
    reference = model(images)
    anchor_free = bool(getattr(model, "anchor_free", False))
    layout = f"xywh + {model.nc} class scores" if anchor_free else f"xywh + objectness + {model.nc} class scores"
    metadata = {"stride": stride, "names": list(model.names), "imgsz": [size, size], "nc": model.nc,
                "anchor_free": anchor_free, "output": f"(batch, boxes, {layout})"}
    base = Path(weights)
    written = []
    check = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(target)
    check = check.half() if half else check
    expected = model(check)
    if "torchscript" in include:
        path = export_torchscript(model, images, base.with_suffix(".torchscript"), metadata)
        difference = output_difference(torch.jit.load(str(path), map_location=target)(check), expected, size)
        LOGGER.info(f"TorchScript: saved {path} ({path.stat().st_size / 1e6:.1f} MB), max |diff| {difference:.2e}")
        written.append(path)
    if "onnx" in include:
        path = export_onnx(model, images, base.with_suffix(".onnx"), metadata, opset, dynamic, simplify)
        difference = check_onnx(path, check, expected, size) if not half else None
        shown = f"{difference:.2e}" if difference is not None else "n/a (onnxruntime not installed or fp16)"
        LOGGER.info(f"ONNX: saved {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}), max |diff| {shown}")
        written.append(path)
    LOGGER.info(f"Output shape {tuple(reference.shape)}: (batch, boxes, {layout}), boxes in input pixels")
    return written

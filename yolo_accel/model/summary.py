"""Model summaries: layers, parameters, gradients and GFLOPs, counted the way YOLOv5 v7.0 reports them."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _norm_flops(input_shape, *args, **kwargs) -> int:
    # yolov5 parity: its counter charges an affine norm 4 multiply-adds per element, reported as 8 FLOPs
    return 8 * math.prod(input_shape)


def _upsample_flops(*args, out_shape, **kwargs) -> int:
    # yolov5 parity: nearest upsampling is charged one multiply-add per output element
    return 2 * math.prod(out_shape)


def _with_overloads(formulas: dict) -> dict:
    # the counter decomposes any overload it has no formula for before it counts by op packet
    overloads = {getattr(op, name): f for op, f in formulas.items() for name in op.overloads()}
    return {**formulas, **overloads}


YOLOV5_FORMULAS = _with_overloads({
    **{op: _norm_flops for op in (aten.native_batch_norm, aten._native_batch_norm_legit,
                                  aten._native_batch_norm_legit_no_training, aten.cudnn_batch_norm)},
    aten.upsample_nearest2d: _upsample_flops,
})


@dataclass(frozen=True)
class ModelSummary:
    name: str
    layers: int
    parameters: int
    gradients: int
    gflops: float

    def __str__(self) -> str:
        return (f"{self.name} summary: {self.layers} layers, {self.parameters} parameters, "
                f"{self.gradients} gradients, {self.gflops:.1f} GFLOPs")


@torch.no_grad()
def count_gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of one forward pass at `imgsz`, from torch's FLOP counter (convs 2 per MAC, norms as above).

    yolov5 parity: counted on a stride-sized square, then scaled by area.
    """
    param = next(model.parameters())
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    probe = copy.deepcopy(model).eval()
    counter = FlopCounterMode(display=False, custom_mapping=YOLOV5_FORMULAS)
    with counter:
        probe(torch.zeros(1, param.shape[1], stride, stride, device=param.device, dtype=param.dtype))
    return counter.get_total_flops() / 1e9 * height / stride * width / stride


def summarize(model: nn.Module, imgsz: int | tuple[int, int] = 640, name: str | None = None) -> ModelSummary:
    """Counts as YOLOv5's summary line prints them."""
    if name is None:
        yaml_file = getattr(model, "yaml_file", None)
        name = yaml_file.rsplit(".", 1)[0].replace("yolov5", "YOLOv5") if yaml_file else "Model"
    params = list(model.parameters())
    # YOLOv5 counts every module; Ultralytics 8 (whose YOLOv5u models these are) counts the leaf modules
    modules = [m for _, m in model.named_modules() if not m._modules] if getattr(model, "anchor_free", False) \
        else list(model.modules())
    return ModelSummary(name=name, layers=len(modules), parameters=sum(p.numel() for p in params),
                        gradients=sum(p.numel() for p in params if p.requires_grad),
                        gflops=count_gflops(model, imgsz))


def layer_rows(model: nn.Module) -> list[tuple[int, str, int, int, str]]:
    """(index, from, repeats, parameters, module type) per top-level layer, as YOLOv5 prints while building."""
    rows = []
    for i, (layer, src) in enumerate(zip(model.model, model.sources)):
        first = layer[0] if isinstance(layer, nn.Sequential) else layer
        kind = type(first).__name__
        repeats = len(layer) if isinstance(layer, nn.Sequential) else len(first.m) if kind == "C3" else 1
        rows.append((i, str(src), repeats, sum(p.numel() for p in layer.parameters()), kind))
    return rows

"""Which precision a run trains in: `--mixed-precision auto|no|fp16|bf16`, and the check before autocast is used.

`auto` takes `accelerate launch`'s choice when launched by it; otherwise fp16 autocast on CUDA (YOLOv5's AMP) and
fp32 on CPUs, also on CPUs with bf16 instructions. bf16 there is faster (about 2x at 640 px on a Xeon with
AVX512-BF16) but cost yolov5n 0.051 mean mAP50-95 on the demo data (3 seeds); with the detection head's output
convolutions in fp32 (model.yolo.output_conv) 0.015 was still lost, more than a default may cost, so bf16 on CPU is
a choice the user makes (the README's precision notes give the numbers).
"""

from __future__ import annotations

import logging
import os

import torch

from .config import ConfigError, TrainConfig

LOGGER = logging.getLogger("yolo_accel")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions are native, ~1.5x fp32's speed (elsewhere they are emulated)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def choose_mixed_precision(requested: str, use_cpu: bool) -> str:
    """--mixed-precision auto: `accelerate launch`'s choice when launched by it, else fp16 on CUDA (YOLOv5's AMP
    default) and fp32 on CPU."""
    if requested != "auto":
        return requested
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    announce = os.environ.get("RANK", "0") == "0"
    if launched == "fp16" and use_cpu:  # a launch config written for GPU machines, run where there are none
        if announce:
            LOGGER.warning("WARNING ⚠️ the launch asks for fp16, which needs CUDA; these processes run on CPUs and "
                           "train in fp32")
        return "no"
    if launched:
        return launched
    if not use_cpu:
        return "fp16"
    if announce and cpu_has_bf16():
        LOGGER.info("This CPU has bf16 instructions: --mixed-precision bf16 trains faster, at a cost in accuracy "
                    "(see the README's precision notes); training in fp32")
    return "no"


def check_amp(model: torch.nn.Module, device: torch.device, imgsz: int, dtype: torch.dtype) -> bool:
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


def resolve_precision(config: TrainConfig, use_cpu: bool) -> str:
    """The precision this run trains in (Accelerate's mixed_precision: no, fp16 or bf16), its AMP check passed."""
    mixed_precision = choose_mixed_precision(config.mixed_precision, use_cpu)
    if mixed_precision not in ("fp16", "bf16"):
        return mixed_precision
    from .model import build_model

    device = torch.device("cpu") if use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("--mixed-precision fp16 needs a CUDA device; use bf16 (or no) on CPU")
    return mixed_precision if check_amp(build_model(config.model or "yolov5n"), device, config.imgsz, dtype) else "no"

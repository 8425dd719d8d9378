"""AutoBatch (--batch-size -1): the largest batch that fits a fraction of free CUDA memory, as YOLOv5 estimates it."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

LOGGER = logging.getLogger("yolo_accel")


def autobatch(model: nn.Module, imgsz: int, fraction: float = 0.6, default: int = 16) -> int:
    """Profile forward+backward memory at batch 1..16, fit a line, and solve for `fraction` of free memory."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError("--batch-size -1 (AutoBatch) needs a CUDA device; pass a batch size instead")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    free = total - reserved - allocated
    sizes, used = [1, 2, 4, 8, 16], []
    model.train()
    for size in sizes:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            images = torch.rand(size, 3, imgsz, imgsz, device=device)
            sum(p.float().mean() for p in model(images)).backward()
            model.zero_grad(set_to_none=True)
            used.append(torch.cuda.max_memory_allocated(device))
        except torch.cuda.OutOfMemoryError:
            break
    torch.cuda.empty_cache()
    if len(used) < 2:
        LOGGER.warning(f"AutoBatch: profiling failed, using batch-size {default}")
        return default
    slope, intercept = np.polyfit(sizes[: len(used)], used, deg=1)
    batch = int((free * fraction - intercept) / slope)
    batch = max(1, min(batch, 1024))
    LOGGER.info(f"AutoBatch: batch-size {batch} for {torch.cuda.get_device_name(device)} "
                f"({total / 2**30:.1f}G total, {free / 2**30:.1f}G free, {fraction:.0%} target)")
    return batch

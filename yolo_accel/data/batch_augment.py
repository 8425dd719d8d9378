"""Augmentation of whole batches on the training device, after the transfer.

The per-sample random draws are made on the CPU from (seed, epoch, index) and travel with the batch
(`Batch.hsv_gains`); this stage applies them to all images at once. The HSV round trip reproduces OpenCV's 8-bit
conversions (integer RGB -> HSV with its division tables, float HSV -> RGB), so the result equals the CPU path
(`augment.apply_hsv`) within one grey level.
"""

from __future__ import annotations

import functools

import torch

_SHIFT = 12  # OpenCV's fixed-point bits for 8-bit RGB -> HSV


@functools.cache
def _division_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's saturation and hue division tables: round(255 * 2^12 / v) and round(180 * 2^12 / (6 * diff))."""
    saturation = [0] + [round((255 << _SHIFT) / v) for v in range(1, 256)]
    hue = [0] + [round((180 << _SHIFT) / (6 * d)) for d in range(1, 256)]
    return torch.tensor(saturation, dtype=torch.int32), torch.tensor(hue, dtype=torch.int32)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> int32 (B, 3, H, W) HSV as OpenCV's COLOR_RGB2HSV gives it (hue 0..179)."""
    saturation_table, hue_table = (t.to(images.device) for t in _division_tables())
    red, green, blue = images.int().unbind(1)
    value = torch.maximum(torch.maximum(red, green), blue)
    diff = value - torch.minimum(torch.minimum(red, green), blue)
    half = 1 << (_SHIFT - 1)
    saturation = (diff * saturation_table[value] + half) >> _SHIFT
    hue = torch.where(value == red, green - blue, torch.where(value == green, blue - red + 2 * diff,
                                                                red - green + 4 * diff))
    hue = (hue * hue_table[diff] + half) >> _SHIFT
    hue = torch.where(hue < 0, hue + 180, hue)
    return torch.stack((hue, saturation, value), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """int (B, 3, H, W) HSV (hue 0..179) -> uint8 RGB, as OpenCV's COLOR_HSV2RGB computes it (in float32; equal
    but for one level in about 0.01% of colours)."""
    hue, saturation, value = hsv.float().unbind(1)
    saturation = saturation * (1 / 255)
    value = value * (1 / 255)
    hue = hue * (6 / 180)
    sector = torch.floor(hue)
    fraction = hue - sector
    sector = sector.long() % 6
    tab = torch.stack((value, value * (1 - saturation), value * (1 - saturation * fraction),
                       value * (1 - saturation * (1 - fraction))), 0)  # (4, B, H, W)
    # OpenCV's sector_data: which tab entry each of (red, green, blue) takes, per sector of the hue circle
    pick = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], device=hsv.device)
    channels = [tab.gather(0, pick[:, c][sector][None]).squeeze(0) for c in range(3)]
    rgb = torch.stack(channels, 1)
    grey = (saturation == 0)[:, None]
    rgb = torch.where(grey, value[:, None], rgb)
    # OpenCV's vectorised conversion (what images of more than one column get) truncates rather than rounds
    return (rgb * 255).clamp_(0, 255).to(torch.uint8)


def hsv_tables(gains: torch.Tensor) -> torch.Tensor:
    """(B, 3) gains -> (B, 3, 256) lookup tables, as augment.hsv_luts makes them (computed in float64)."""
    x = torch.arange(256, dtype=torch.float64, device=gains.device)
    scaled = x[None, None] * gains.double()[:, :, None]  # (B, 3, 256)
    hue = torch.remainder(scaled[:, 0], 180)
    return torch.stack((hue, scaled[:, 1].clamp(0, 255), scaled[:, 2].clamp(0, 255)), 1).to(torch.uint8)


def apply_hsv_batch(images: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB with per-image HSV gains (B, 3) applied, on the images' device."""
    hsv = rgb_to_hsv(images).long()
    tables = hsv_tables(gains.to(images.device))
    batch, channels = hsv.shape[:2]
    offsets = (torch.arange(batch * channels, device=images.device) * 256).view(batch, channels, 1, 1)
    mapped = tables.reshape(-1)[hsv + offsets]
    return hsv_to_rgb(mapped)

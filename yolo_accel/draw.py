"""Detections drawn on images with Pillow: a stable colour per class, boxes with "name conf" tags."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def class_colour(index: int) -> tuple[int, int, int]:
    """Distinct, stable colours: hues spaced by the golden ratio."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def annotate(image: Image.Image, boxes_xyxy: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
             names: Sequence[str], *, line_thickness: int = 3, hide_labels: bool = False,
             hide_conf: bool = False) -> Image.Image:
    """A copy of `image` with boxes (n, 4) in class colours and 'name conf' tags, drawn with Pillow's built-in font
    (nothing downloaded)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, line_thickness * 4))
    for box, score, cls in zip(boxes_xyxy.tolist(), scores.tolist(), classes.int().tolist()):
        colour = class_colour(cls)
        draw.rectangle(box, outline=colour, width=line_thickness)
        if hide_labels:
            continue
        text = names[cls] if hide_conf else f"{names[cls]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top + 4
        x = max(0, min(box[0], image.width - w - 4))  # keep the tag inside the image
        y = box[1] - h if box[1] - h >= 0 else box[1]
        draw.rectangle((x, y, x + w + 4, y + h), fill=colour)
        draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=font)
    return image

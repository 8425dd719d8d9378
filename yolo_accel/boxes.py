"""Box conversions and the IoU family: pure tensor/array functions.

Formats in names: xyxy = corners, xywh = centre + size; a trailing n = normalised to image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def _clone(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy_to_xywh(x: Array) -> Array:
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh_to_xyxy(x: Array) -> Array:
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn_to_xyxy(x: Array, w: float, h: float, padw: float = 0, padh: float = 0) -> Array:
    """Normalised centre boxes to pixel corners, shifted by padding."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy_to_xywhn(x: Array, w: float, h: float, clip: bool = False, eps: float = 0.0) -> Array:
    """Pixel corners to normalised centre boxes, optionally clipped to the image first."""
    if clip:
        x = clip_boxes(_clone(x), (h - eps, w - eps))
    y = _clone(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes_xyxy: Array, shape: tuple[float, float]) -> Array:
    """Clip xyxy boxes in place to an image of shape (height, width); returns them."""
    h, w = shape[0], shape[1]
    if isinstance(boxes_xyxy, torch.Tensor):
        boxes_xyxy[..., 0].clamp_(0, w)
        boxes_xyxy[..., 1].clamp_(0, h)
        boxes_xyxy[..., 2].clamp_(0, w)
        boxes_xyxy[..., 3].clamp_(0, h)
    else:
        boxes_xyxy[..., [0, 2]] = boxes_xyxy[..., [0, 2]].clip(0, w)
        boxes_xyxy[..., [1, 3]] = boxes_xyxy[..., [1, 3]].clip(0, h)
    return boxes_xyxy


def segments_to_boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons (n, 2) in any units to their enclosing xywh boxes, same units."""
    boxes = []
    for s in segments:
        x, y = s[:, 0], s[:, 1]
        boxes.append([x.min(), y.min(), x.max(), y.max()])
    return xyxy_to_xywh(np.array(boxes, dtype=np.float32).reshape(-1, 4))


def box_iou(boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU (N, M) of two sets of xyxy boxes."""
    (a1, a2), (b1, b2) = boxes1_xyxy.unsqueeze(1).chunk(2, 2), boxes2_xyxy.unsqueeze(0).chunk(2, 2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, giou: bool = False, diou: bool = False,
             ciou: bool = False, eps: float = 1e-7, clamp_height: bool = True) -> torch.Tensor:
    """Element-wise IoU (or GIoU/DIoU/CIoU) of boxes (..., 4) broadcast against each other; returns (..., 1).

    xyxy heights are clamped to eps (YOLOv5 v7.0), or with `clamp_height=False` get eps added (Ultralytics 8)."""
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        if clamp_height:
            w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
            w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)
        else:
            w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
            w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps

    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * \
            (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if ciou or diou or giou:
        cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)  # enclosing box width
        ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)  # enclosing box height
        if ciou or diou:
            c2 = cw ** 2 + ch ** 2 + eps  # squared enclosing diagonal
            rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
            if ciou:
                v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
                with torch.no_grad():
                    alpha = v / (v - iou + (1 + eps))
                return iou - (rho2 / c2 + v * alpha)
            return iou - rho2 / c2
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    return iou

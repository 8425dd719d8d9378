"""YOLOv5 augmentations as pure functions on (image, labels) with an explicit random generator.

Images are uint8 RGB arrays (H, W, 3). Labels are float arrays (n, 5) = (class, x1, y1, x2, y2) in pixels,
with continuous coordinates (pixel i covers [i, i+1)), so a box keeps framing the same pixels through every
geometric transform. Resizes, warps and colour conversions run on OpenCV, as YOLOv5's do.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

FILL = 114  # grey used for padding and warped-in borders (YOLOv5's value)


def resize(image: np.ndarray, width: int, height: int, shrink_by_area: bool = False) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, 3) image (OpenCV's INTER_LINEAR: each output pixel interpolates its four
    nearest input pixels, centres aligned); with `shrink_by_area`, a shrink averages every input pixel an output
    pixel covers (INTER_AREA, YOLOv5's choice for images it does not augment)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if any(stride < 0 for stride in image.strides):
        image = np.ascontiguousarray(image)  # OpenCV takes forward-strided memory only
    shrinking = width < image.shape[1] and height < image.shape[0]
    interpolation = cv2.INTER_AREA if shrink_by_area and shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (x0, y0, x1, y1) part of an (H, W, 3) image; where the box leaves the image, grey."""
    x0, y0, x1, y1 = box
    height, width = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1]
    out = np.full((y1 - y0, x1 - x0, 3), FILL, np.uint8)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix0 < ix1 and iy0 < iy1:
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
    return out


def letterbox(image: np.ndarray, new_shape: int | tuple[int, int] = 640, auto: bool = False, scaleup: bool = True,
              stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping aspect ratio, then pad to `new_shape` (h, w) (or to a stride multiple when `auto`).

    Returns (image, (width ratio, height ratio) actually applied, (left, top) padding actually applied).
    yolov5 parity deviation: boxes use the integer padding and exact ratios applied, not the rounded-off
    floats YOLOv5 reports, so they stay on their pixels.
    """
    height, width = image.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / height, new_w / width)
    if not scaleup:
        r = min(r, 1.0)
    unpad_w, unpad_h = round(width * r), round(height * r)
    pad_w, pad_h = new_w - unpad_w, new_h - unpad_h
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    left, top = round(pad_w / 2 - 0.1), round(pad_h / 2 - 0.1)
    image = resize(image, unpad_w, unpad_h)
    out = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=(FILL,) * 3)
    return out, (unpad_w / width, unpad_h / height), (left, top)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep boxes (4, n) that stay > wh_thr px, keep area_thr of their area and an aspect ratio < ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (aspect < ar_thr)


def resample_segments(segments: list[np.ndarray], n: int = 1000) -> list[np.ndarray]:
    """Each polygon (k, 2) resampled to n points along its closed outline."""
    out = []
    for s in segments:
        s = np.concatenate((s, s[0:1, :]), axis=0)
        x = np.linspace(0, len(s) - 1, n)
        xp = np.arange(len(s))
        out.append(np.stack([np.interp(x, xp, s[:, i]) for i in range(2)], 1).astype(np.float32))
    return out


def perspective_matrix(rng: np.random.Generator, image_shape: tuple[int, int], out_shape: tuple[int, int],
                       degrees: float, translate: float, scale: float, shear: float,
                       perspective: float) -> tuple[np.ndarray, float]:
    """YOLOv5's random 3x3 transform (centre, perspective, rotate+scale, shear, translate) and its scale."""
    height, width = out_shape
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -image_shape[1] / 2, -image_shape[0] / 2
    persp = np.eye(3)
    persp[2, 0] = rng.uniform(-perspective, perspective)
    persp[2, 1] = rng.uniform(-perspective, perspective)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    rotate = np.eye(3)
    cos, sin = s * math.cos(math.radians(angle)), s * math.sin(math.radians(angle))
    rotate[:2, :2] = [[cos, sin], [-sin, cos]]  # counter-clockwise on screen, as cv2.getRotationMatrix2D
    shear_m = np.eye(3)
    shear_m[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    shear_m[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    return move @ shear_m @ rotate @ persp @ centre, s


def aligned_matrix(matrix: np.ndarray, out_shape: tuple[int, int],
                   image_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """For a warp that only scales and shifts, the nearest one mapping a whole-pixel box of its (h, w) input
    exactly onto the (h, w) output, and that box (x0, y0, x1, y1), which may reach outside the input.

    Such a warp is a resize of the box, several times faster than a generic warp. Snapping moves the box's edges
    by at most half an input pixel (the scale by under 1/640 at YOLOv5's sizes): a redraw of the random
    transform, which the labels then follow exactly. None for other warps, and for shrinking so far that the box
    would be over twice the size of both input and output (a mostly grey box, cheaper to warp directly).
    """
    matrix = matrix / matrix[2, 2]
    if matrix[0, 1] or matrix[1, 0] or matrix[2, 0] or matrix[2, 1] or matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        return None
    height, width = out_shape
    span_x, span_y = max(1, round(width / matrix[0, 0])), max(1, round(height / matrix[1, 1]))
    if span_x > 2 * max(width, image_shape[1]) or span_y > 2 * max(height, image_shape[0]):
        return None
    x0, y0 = round(-matrix[0, 2] / matrix[0, 0]), round(-matrix[1, 2] / matrix[1, 1])
    scale_x, scale_y = width / span_x, height / span_y
    aligned = np.array([[scale_x, 0, -x0 * scale_x], [0, scale_y, -y0 * scale_y], [0, 0, 1]])
    return aligned, (x0, y0, x0 + span_x, y0 + span_y)


def warp(image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp with a 3x3 forward matrix into (h, w), bilinear, grey outside: (image, the matrix actually applied).

    A scale-and-shift warp is snapped to whole input pixels (see aligned_matrix) and done as a resize.
    """
    aligned = aligned_matrix(matrix, out_shape, image.shape[:2])
    if aligned is None:
        return warp_image(image, matrix, out_shape), matrix
    matrix, box = aligned
    return resize(crop(image, box), out_shape[1], out_shape[0]), matrix


def warp_image(image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """OpenCV's bilinear warp of an (H, W, 3) image by a forward matrix in continuous coordinates; outside is grey."""
    # OpenCV puts pixel centres on whole numbers, our coordinates on halves: shift by half a pixel each side
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    centred = np.linalg.inv(half) @ matrix @ half
    size, fill = (out_shape[1], out_shape[0]), (FILL, FILL, FILL)
    if matrix[2, 0] or matrix[2, 1]:
        return cv2.warpPerspective(image, centred, size, flags=cv2.INTER_LINEAR, borderValue=fill)
    return cv2.warpAffine(image, centred[:2], size, flags=cv2.INTER_LINEAR, borderValue=fill)


def sampled_region(matrix: np.ndarray, out_shape: tuple[int, int],
                   image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of an (h, w) image that warping it into `out_shape` can read.

    Affine warps read a parallelogram whose bounding box comes from the output corners (plus the bilinear
    neighbours); perspective warps get the whole image.
    """
    height, width = image_shape
    if matrix[2, 0] or matrix[2, 1]:
        return 0, 0, width, height
    corners = np.array([[0, 0], [out_shape[1], 0], [0, out_shape[0]], [out_shape[1], out_shape[0]]], np.float64)
    xy = transform_points(corners, np.linalg.inv(matrix))
    x0 = min(max(math.floor(xy[:, 0].min()) - 2, 0), width - 1)
    y0 = min(max(math.floor(xy[:, 1].min()) - 2, 0), height - 1)
    x1 = max(min(math.ceil(xy[:, 0].max()) + 2, width), x0 + 1)
    y1 = max(min(math.ceil(xy[:, 1].max()) + 2, height), y0 + 1)
    return x0, y0, x1, y1


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(k, 2) points through a 3x3 matrix, with the perspective divide."""
    xy = np.ones((len(points), 3))
    xy[:, :2] = points
    xy = xy @ matrix.T
    return xy[:, :2] / xy[:, 2:3]


def random_perspective(image: np.ndarray, labels: np.ndarray, segments: list[np.ndarray] | tuple = (),
                       rng: np.random.Generator | None = None, degrees: float = 10, translate: float = 0.1,
                       scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random affine/perspective warp; output is the input size plus 2*border (negative border crops).

    Boxes are transformed by their corners (or by their polygons when every label has one), clipped, and
    filtered with box_candidates against the input boxes scaled by the random scale.
    """
    rng = rng or np.random.default_rng()
    out_shape = (image.shape[0] + border[0] * 2, image.shape[1] + border[1] * 2)
    matrix, s = perspective_matrix(rng, image.shape[:2], out_shape, degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (matrix != np.eye(3)).any():
        image, matrix = warp(image, matrix, out_shape)
    return image, warp_labels(labels, segments, matrix, s, out_shape)


def warp_labels(labels: np.ndarray, segments: list[np.ndarray] | tuple, matrix: np.ndarray, s: float,
                out_shape: tuple[int, int]) -> np.ndarray:
    """Labels (n, 5) = (class, x1, y1, x2, y2) through `matrix` into an (h, w) output, as random_perspective does."""
    n = len(labels)
    if not n:
        return labels
    height, width = out_shape
    use_segments = len(segments) == n and any(len(x) for x in segments)
    if use_segments:
        new = np.zeros((n, 4))
        for i, segment in enumerate(resample_segments(list(segments))):
            xy = transform_points(segment, matrix)
            inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] <= height)
            xy = xy[inside]
            new[i] = [xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()] if len(xy) else 0
    else:
        corners = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = transform_points(corners, matrix).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.01 if use_segments else 0.10)
    labels = labels[keep]
    labels[:, 1:5] = new[keep]
    return labels


def hsv_gains(rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> np.ndarray:
    """Random (hue, saturation, value) gains 1 + U(-1, 1) * gain, as YOLOv5 draws them."""
    return rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1


def hsv_luts(gains: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 tables for OpenCV's 8-bit HSV (hue in 0..179) under (hue, saturation, value) gains."""
    x = np.arange(0, 256, dtype=np.float64)
    # yolov5 parity: hue is multiplied, wrapping around its 180 steps; saturation and value saturate
    return np.stack([(x * gains[0]) % 180, np.clip(x * gains[1], 0, 255), np.clip(x * gains[2], 0, 255)],
                    1).astype(np.uint8)


def apply_hsv(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """An RGB image with HSV gains applied: OpenCV's RGB -> HSV, one table per channel, HSV -> RGB (YOLOv5's)."""
    if any(stride < 0 for stride in image.strides):
        image = np.ascontiguousarray(image)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    cv2.LUT(hsv, hsv_luts(gains)[:, None, :], dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def augment_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5,
                vgain: float = 0.5) -> np.ndarray:
    """Random gains on hue, saturation and value (YOLOv5's augment_hsv); unchanged when all gains are zero."""
    if not (hgain or sgain or vgain):
        return image
    return apply_hsv(image, hsv_gains(rng, hgain, sgain, vgain))


def mixup(image: np.ndarray, labels: np.ndarray, image2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend two images with a Beta(32, 32) ratio and keep both label sets."""
    r = rng.beta(32.0, 32.0)
    image = (image * r + image2 * (1 - r)).astype(np.uint8)
    return image, np.concatenate((labels, labels2), 0)


def bbox_ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of `box` (4,) with each of `boxes` (n, 4), over each of their areas."""
    inter = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0) * \
            (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return inter / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def copy_paste(image: np.ndarray, labels: np.ndarray, segments: list[np.ndarray], p: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Paste a left-right mirrored copy of round(p*n) segmented objects, if they cover < 30% of any label."""
    n = len(segments)
    if not (p and n):
        return image, labels, segments
    height, width = image.shape[:2]
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    segments = list(segments)
    for j in rng.choice(n, size=round(p * n), replace=False):
        cls, x1, y1, x2, y2 = labels[j]
        box = np.array([width - x2, y1, width - x1, y2])
        if (bbox_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[cls, *box]]), 0)
            mirrored = np.concatenate((width - segments[j][:, 0:1], segments[j][:, 1:2]), 1)
            segments.append(mirrored)
            draw.polygon([tuple(pt) for pt in mirrored.tolist()], fill=1)
    pasted = np.asarray(mask).astype(bool)
    image = image.copy()
    image[pasted] = image[:, ::-1][pasted]
    return image, labels, segments

"""YOLOv5 augmentations as pure functions on (image, labels) with an explicit random generator.

Images are uint8 RGB arrays (H, W, 3). Labels are float arrays (n, 5) = (class, x1, y1, x2, y2) in pixels,
with continuous coordinates (pixel i covers [i, i+1)), so a box keeps framing the same pixels through every
geometric transform. Image warps use Pillow, whose sampling follows that same convention.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

FILL = 114  # grey used for padding and warped-in borders (YOLOv5's value)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


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
    out = np.full((unpad_h + pad_h, unpad_w + pad_w, 3), FILL, dtype=np.uint8)
    out[top:top + unpad_h, left:left + unpad_w] = resize(image, unpad_w, unpad_h)
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


def warp(image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Warp with a 3x3 forward matrix into (h, w), bilinear, grey outside."""
    height, width = out_shape
    inverse = np.linalg.inv(matrix)
    pil = Image.fromarray(image)
    fill = (FILL, FILL, FILL)
    if matrix[2, 0] == 0 and matrix[2, 1] == 0:
        coeffs = (inverse[:2] / inverse[2, 2]).reshape(-1).tolist()
        out = pil.transform((width, height), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                            fillcolor=fill)
    else:
        coeffs = (inverse.reshape(-1)[:8] / inverse[2, 2]).tolist()
        out = pil.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR,
                            fillcolor=fill)
    return np.asarray(out)


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
        image = warp(image, matrix, out_shape)

    n = len(labels)
    if n:
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
    return image, labels


def augment_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5,
                vgain: float = 0.5) -> np.ndarray:
    """Random gains on hue, saturation and value through lookup tables (YOLOv5's scheme, Pillow's HSV)."""
    if not (hgain or sgain or vgain):
        return image
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(0, 256, dtype=np.float64)
    # yolov5 parity: hue is multiplied, wrapping around its range (256 steps in Pillow, 180 in OpenCV)
    lut = np.concatenate([(x * r[0]) % 256, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)])
    hsv = Image.fromarray(image).convert("HSV").point(lut.astype(np.uint8).tolist())
    return np.asarray(hsv.convert("RGB"))


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

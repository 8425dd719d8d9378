"""YOLOv5 augmentations as pure functions on (image, labels) with an explicit random generator.

Images are uint8 RGB arrays (H, W, 3). Labels are float arrays (n, 5) = (class, x1, y1, x2, y2) in pixels,
with continuous coordinates (pixel i covers [i, i+1)), so a box keeps framing the same pixels through every
geometric transform. Image warps use Pillow, whose sampling follows that same convention.
"""

from __future__ import annotations

import functools
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
    return np.asarray(warp_image(Image.fromarray(image), matrix, out_shape))


def warp_image(image: Image.Image, matrix: np.ndarray, out_shape: tuple[int, int]) -> Image.Image:
    """`warp` on an RGB Pillow image: output pixel centres map back through `matrix`; outside the image is grey."""
    height, width = out_shape
    inverse = np.linalg.inv(matrix)
    fill = (FILL, FILL, FILL)
    if matrix[2, 0] == 0 and matrix[2, 1] == 0:
        coeffs = (inverse[:2] / inverse[2, 2]).reshape(-1)
        if coeffs[1] == 0 and coeffs[3] == 0 and 0 < coeffs[0] <= 1 and 0 < coeffs[4] <= 1:
            return _enlarge(image, coeffs, out_shape)
        return image.transform((width, height), Image.Transform.AFFINE, coeffs.tolist(), Image.Resampling.BILINEAR,
                               fillcolor=fill)
    coeffs = (inverse.reshape(-1)[:8] / inverse[2, 2]).tolist()
    return image.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR,
                           fillcolor=fill)


def _enlarge(image: Image.Image, coeffs: np.ndarray, out_shape: tuple[int, int]) -> Image.Image:
    """An axis-aligned warp that does not shrink, as a resize of a sub-pixel box (several times faster).

    Pillow's bilinear resize filter is plain bilinear interpolation when enlarging, so this equals the generic
    transform up to rounding (the transform truncates, the resize rounds: within one grey level). Pixels whose
    centre maps outside the image stay grey; inside, edge pixels are repeated, as the transform does.
    """
    height, width = out_shape
    scale_x, shift_x, scale_y, shift_y = coeffs[0], coeffs[2], coeffs[4], coeffs[5]
    x = scale_x * (np.arange(width) + 0.5) + shift_x  # sample points, computed as Pillow's transform does
    y = scale_y * (np.arange(height) + 0.5) + shift_y
    cols = np.flatnonzero((x >= 0) & (x < image.width))
    rows = np.flatnonzero((y >= 0) & (y < image.height))
    out = Image.new("RGB", (width, height), (FILL, FILL, FILL))
    if not (len(cols) and len(rows)):
        return out
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    box = [scale_x * x0 + shift_x, scale_y * y0 + shift_y, scale_x * x1 + shift_x, scale_y * y1 + shift_y]
    if box[0] < 0 or box[1] < 0 or box[2] > image.width or box[3] > image.height:
        image = _pad_edges(image)  # the first/last sample may sit within half a pixel of the border
        box = [b + 1 for b in box]
    patch = image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box)
    if patch.size == (width, height):
        return patch
    out.paste(patch, (x0, y0))
    return out


def _pad_edges(image: Image.Image) -> Image.Image:
    """The image with a one-pixel border repeating its edge pixels."""
    width, height = image.size
    out = Image.new(image.mode, (width + 2, height + 2))
    out.paste(image, (1, 1))
    out.paste(image.crop((0, 0, 1, height)), (0, 1))
    out.paste(image.crop((width - 1, 0, width, height)), (width + 1, 1))
    out.paste(out.crop((0, 1, width + 2, 2)), (0, 0))
    out.paste(out.crop((0, height, width + 2, height + 1)), (0, height + 1))
    return out


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
        image = warp(image, matrix, out_shape)
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


def augment_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5,
                vgain: float = 0.5) -> np.ndarray:
    """Random gains on hue, saturation and value through lookup tables (YOLOv5's scheme, Pillow's HSV).

    Computes exactly Pillow's `convert("HSV").point(luts).convert("RGB")` through precomputed tables, about
    twice as fast.
    """
    if not (hgain or sgain or vgain):
        return image
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(0, 256, dtype=np.float64)
    # yolov5 parity: hue is multiplied, wrapping around its range (256 steps in Pillow, 180 in OpenCV)
    lut_h = ((x * r[0]) % 256).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hue_table, saturation_table, rgb_table = hsv_tables()
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    red = red.astype(np.int32)
    hue_index = green - red
    hue_index *= 511
    hue_index += blue
    hue_index -= red
    hue_index += 255 * 512  # (green - red + 255) * 511 + (blue - red + 255)
    saturation_index = value.astype(np.uint16)
    saturation_index <<= 8
    saturation_index |= low
    hsv = np.zeros((*image.shape[:2], 4), np.uint8)  # little-endian bytes of (h << 16 | s << 8 | v)
    np.take(lut_h.take(hue_table), hue_index, out=hsv[..., 2])
    np.take(lut_s.take(saturation_table), saturation_index, out=hsv[..., 1])
    np.take(lut_v, value, out=hsv[..., 0])
    rgbx = rgb_table.take(hsv.view("<u4")[..., 0])
    return rgbx.view(np.uint8).reshape(*image.shape[:2], 4)[..., :3]  # a view: callers copy once (flip, CHW)


@functools.cache
def hsv_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's HSV conversions as tables, made by Pillow itself (about 0.5 s and 64 MB, once per process).

    Pillow's hue depends only on (g - r, b - r) and its saturation only on (max, min), so RGB -> HSV is two small
    tables: hue (511 * 511,) and saturation (256 * 256,). HSV -> RGB is one table of 256 ** 3 little-endian RGBX
    words, by h << 16 | s << 8 | v (4-byte entries gather faster than 3-byte rows).
    """
    diffs = np.arange(-255, 256)
    green_red, blue_red = np.meshgrid(diffs, diffs, indexing="ij")
    red = np.maximum(0, np.maximum(-green_red, -blue_red))
    rgb = np.stack([red, red + green_red, red + blue_red], -1)
    rgb[rgb.max(-1) > 255] = 0  # differences no pixel can have
    hue = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("HSV"))[..., 0].reshape(-1).copy()
    levels = np.arange(256)
    high, low = np.meshgrid(levels, levels, indexing="ij")
    low = np.minimum(low, high)
    saturation = np.asarray(Image.fromarray(np.stack([high, low, low], -1).astype(np.uint8)).convert("HSV"))
    saturation = saturation[..., 1].reshape(-1).copy()
    hsv = np.empty((256, 256, 256, 3), np.uint8)
    hsv[..., 0], hsv[..., 1], hsv[..., 2] = levels[:, None, None], levels[None, :, None], levels[None, None, :]
    rgb_image = Image.frombytes("HSV", (4096, 4096), hsv.tobytes()).convert("RGB")
    return hue, saturation, np.frombuffer(rgb_image.tobytes("raw", "RGBX"), "<u4")


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

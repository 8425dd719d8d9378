"""Embedded demo dataset: textured synthetic shapes on noisy gradients, written in the standard YOLO layout.

It is made to be learnable from scratch in minutes on a CPU: shapes are at least a fifth of the image wide and each
class leans towards its own hue, so `yolo-accel train` with no arguments reaches a useful mAP quickly.

`demo_dataset()` generates it once into the user cache and returns its data.yaml; `write_demo_dataset()` writes a
dataset of any size anywhere. Everything is drawn with numpy from seeded generators, so the same arguments always
give the same pixels and labels.

Layout: ROOT/images/{train,val}/NNNNN.png, ROOT/labels/{train,val}/NNNNN.txt (rows of `class xc yc w h`,
normalised), ROOT/data.yaml.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..files import CACHE_ENV, cache_dir

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring", "star")
DEMO_VERSION = 2  # bump whenever the generator's output changes, so a stale cache is never reused
SPLITS = ("train", "val")

# largest shape side as a fraction of the image side: 26 to 64 px at 128 px, so a shape still spans
# several stride-8 cells after mosaic's down-scaling
SIZE_RANGE = (0.2, 0.5)
OBJECTS_PER_IMAGE = (1, 6)
BACKGROUND_FRACTION = 0.05  # images with no objects, so the model also sees pure negatives
MIN_VISIBLE_FRACTION = 0.7  # an occluded shape keeps this share of its pixels and all four box edges
PLACEMENT_ATTEMPTS = 30
MIN_CONTRAST = 90.0  # RGB distance between a shape colour and the background it sits on
# each class leans towards its own hue (degrees), so colour helps a small model tell the classes apart early
CLASS_HUES = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)
HUE_SPREAD = 10.0  # a shape's hue lies within this many degrees of its class hue...
OFF_HUE_FRACTION = 0.05  # ...except for this share of shapes, coloured at random, so the outline still matters
SATURATION_RANGE = (0.55, 1.0)
VALUE_RANGE = (0.45, 1.0)
BACKGROUND_TINT = 20.0  # backgrounds are near-grey gradients, so shapes stand out by colour as well as edges
BACKGROUND_NOISE = (1.0, 5.0)  # per-pixel noise sigma range
TEXTURE_NOISE = (6.0, 14.0)
STRIPE_PERIOD = (4.0, 9.0)
RING_INNER_RADIUS = 0.55
CROSS_HALF_THICKNESS = 0.3
STAR_INNER_RADIUS = 0.45


@dataclass(frozen=True)
class DemoSample:
    """One rendered image with the ground truth needed to check it.

    image, background: (H, W, 3) uint8; background is the image before any shape was painted.
    masks: one (H, W) bool array per object, in paint order (later shapes cover earlier ones).
    classes: (N,) int64. boxes_xyxy: (N, 4) float64 pixel corners, tight around each mask.
    """

    image: np.ndarray
    background: np.ndarray
    masks: list[np.ndarray]
    classes: np.ndarray
    boxes_xyxy: np.ndarray


def demo_dataset(root: str | Path | None = None) -> Path:
    """Return the demo dataset's data.yaml, generating it into `root` (default: the cache's demo-vN) on first use.

    Safe when several processes call it at once: each writes a private sibling folder and renames it into place;
    the first rename wins and the others discard their copy. A folder without data.yaml is never treated as done.
    """
    root = (Path(root).expanduser() if root is not None else cache_dir() / f"demo-v{DEMO_VERSION}").absolute()
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        return data_yaml
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"{root} exists but holds no data.yaml, so it is not a complete demo dataset; delete it")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # a plain mkdir honours the umask, so a shared cache stays readable by everyone it should be
        staging = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as error:
        raise RuntimeError(
            f"cannot write the demo dataset into {root.parent} ({error}); "
            f"set {CACHE_ENV} to a writable folder or pass root= explicitly"
        ) from error
    try:
        _write_dataset(staging, final_root=root)
        os.rename(staging, root)
    except OSError:
        if not data_yaml.is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there if another process won the rename
    return data_yaml


def write_demo_dataset(root: str | Path, train_images: int = 400, val_images: int = 100, imgsz: int = 128,
                       seed: int = 0) -> Path:
    """Write a demo dataset directly into `root` (not atomic: use demo_dataset for shared caches); return data.yaml."""
    root = Path(root).absolute()
    return _write_dataset(root, final_root=root, train_images=train_images, val_images=val_images, imgsz=imgsz,
                          seed=seed)


def render_split(split: str, count: int, imgsz: int = 128, seed: int = 0) -> list[DemoSample]:
    """Render the `count` images of one split exactly as write_demo_dataset writes them."""
    split_index = SPLITS.index(split)
    plan = _plan_classes(count, seed, split_index)
    return [
        _render_sample(np.random.default_rng([seed, split_index, index]), imgsz, classes)
        for index, classes in enumerate(plan)
    ]


def _write_dataset(root: Path, final_root: Path, train_images: int = 400, val_images: int = 100, imgsz: int = 128,
                   seed: int = 0) -> Path:
    for split, count in zip(SPLITS, (train_images, val_images)):
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index, sample in enumerate(render_split(split, count, imgsz, seed)):
            # png keeps pixels exact, so every label stays tight around what was drawn
            Image.fromarray(sample.image).save(image_dir / f"{index:05d}.png", compress_level=1)
            (label_dir / f"{index:05d}.txt").write_text(_label_text(sample, imgsz))
    data = {
        "path": str(final_root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    data_yaml = root / "data.yaml"
    # written last: its presence marks the folder complete
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    return data_yaml


def _label_text(sample: DemoSample, imgsz: int) -> str:
    rows = []
    for class_id, (x1, y1, x2, y2) in zip(sample.classes, sample.boxes_xyxy):
        rows.append(f"{class_id} {(x1 + x2) / 2 / imgsz:.6f} {(y1 + y2) / 2 / imgsz:.6f} "
                    f"{(x2 - x1) / imgsz:.6f} {(y2 - y1) / imgsz:.6f}\n")
    return "".join(rows)


def _plan_classes(count: int, seed: int, split_index: int) -> list[list[int]]:
    """Classes for each image of a split; an empty list is a background image.

    Classes are dealt from shuffled full decks, so every class appears equally often across the split.
    """
    rng = np.random.default_rng([seed, split_index])
    background = set(rng.choice(count, size=round(count * BACKGROUND_FRACTION), replace=False).tolist())
    low, high = OBJECTS_PER_IMAGE
    object_counts = [0 if index in background else int(rng.integers(low, high + 1)) for index in range(count)]
    total = sum(object_counts)
    decks = math.ceil(total / len(CLASS_NAMES))
    dealt = np.concatenate([rng.permutation(len(CLASS_NAMES)) for _ in range(decks)] or [np.zeros(0, int)])
    boundaries = np.cumsum(object_counts)[:-1]
    return [part.tolist() for part in np.split(dealt[:total], boundaries)] if count else []


def _render_sample(rng: np.random.Generator, imgsz: int, classes: Sequence[int]) -> DemoSample:
    background = _render_background(rng, imgsz)
    owner = np.full((imgsz, imgsz), -1, dtype=np.int16)  # index of the topmost shape at each pixel, -1 = none
    placements: list[tuple[int, int, int, np.ndarray]] = []  # (class, top, left, cropped mask)
    for class_id in classes:
        patch = _shape_patch(class_id, rng, imgsz)
        if patch is None:
            continue
        height, width = patch.shape
        for _ in range(PLACEMENT_ATTEMPTS):
            top = int(rng.integers(0, imgsz - height + 1))
            left = int(rng.integers(0, imgsz - width + 1))
            candidate = owner.copy()
            candidate[top:top + height, left:left + width][patch] = len(placements)
            if _earlier_shapes_stay_visible(candidate, placements):
                owner = candidate
                placements.append((class_id, top, left, patch))
                break

    image = background.copy()
    masks, boxes = [], []
    for class_id, top, left, patch in placements:
        height, width = patch.shape
        window = image[top:top + height, left:left + width]
        texture = _render_texture(rng, class_id, patch, window[patch].reshape(-1, 3).mean(0))
        window[patch] = texture[patch]
        mask = np.zeros((imgsz, imgsz), dtype=bool)
        mask[top:top + height, left:left + width] = patch
        masks.append(mask)
        boxes.append((left, top, left + width, top + height))  # patches are cropped tight, so this is the box
    return DemoSample(
        image=image,
        background=background,
        masks=masks,
        classes=np.array([placement[0] for placement in placements], dtype=np.int64),
        boxes_xyxy=np.array(boxes, dtype=np.float64).reshape(-1, 4),
    )


def _earlier_shapes_stay_visible(owner: np.ndarray, placements: list[tuple[int, int, int, np.ndarray]]) -> bool:
    for index, (_, top, left, patch) in enumerate(placements):
        height, width = patch.shape
        visible = owner[top:top + height, left:left + width] == index
        if visible.sum() < MIN_VISIBLE_FRACTION * patch.sum():
            return False
        # the label box must still be tight around what stays visible
        if not (visible[0].any() and visible[-1].any() and visible[:, 0].any() and visible[:, -1].any()):
            return False
    return True


def _render_background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    start = rng.uniform(30, 225) + rng.normal(0, BACKGROUND_TINT, 3)
    end = np.clip(start + rng.normal(0, 50) + rng.normal(0, BACKGROUND_TINT / 2, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    coordinates = (np.arange(imgsz) + 0.5) / imgsz
    ramp = np.cos(angle) * coordinates[None, :] + np.sin(angle) * coordinates[:, None]  # (H, W)
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9)
    image = start + ramp[..., None] * (end - start)
    image = image + rng.uniform(*BACKGROUND_NOISE) * rng.standard_normal((imgsz, imgsz, 3), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_patch(class_id: int, rng: np.random.Generator, imgsz: int) -> np.ndarray | None:
    """Boolean mask of one shape, cropped to its pixels: (h, w), or None if it rasterised to nothing."""
    name = CLASS_NAMES[class_id]
    half_size = max(rng.uniform(*SIZE_RANGE) * imgsz, 4.0) / 2
    radius_x, radius_y = half_size, half_size * rng.uniform(0.75, 1.0)
    if rng.random() < 0.5:
        radius_x, radius_y = radius_y, radius_x
    # squares and crosses turn only a little, so a cross never becomes an X nor a square a diamond
    max_angle = np.pi / 9 if name in ("square", "cross") else np.pi
    angle = rng.uniform(-max_angle, max_angle)
    side = min(math.ceil(2 * half_size * math.sqrt(2)) + 3, imgsz)
    centre = side / 2 + rng.uniform(-0.5, 0.5, 2)
    pixel_centres = np.arange(side) + 0.5
    x = pixel_centres[None, :] - centre[0]
    y = pixel_centres[:, None] - centre[1]
    u = (np.cos(angle) * x + np.sin(angle) * y) / radius_x  # shape frame: the shape spans [-1, 1]
    v = (-np.sin(angle) * x + np.cos(angle) * y) / radius_y
    mask = _unit_shape(name, u, v)
    rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return mask[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]


def _unit_shape(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership test in the shape's own frame, where the shape fits the square [-1, 1]^2."""
    radius_squared = u * u + v * v
    if name == "circle":
        return radius_squared <= 1
    if name == "ring":
        return (radius_squared <= 1) & (radius_squared >= RING_INNER_RADIUS**2)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 1
    if name == "cross":
        u, v = np.abs(u), np.abs(v)
        return ((u <= 1) & (v <= CROSS_HALF_THICKNESS)) | ((u <= CROSS_HALF_THICKNESS) & (v <= 1))
    if name == "triangle":
        # equilateral and 2 wide (circumradius 2/sqrt(3)): inside all three edges, each 1/sqrt(3) from the centre
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for normal_angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= np.cos(normal_angle) * u - np.sin(normal_angle) * v <= 1 / math.sqrt(3)
        return inside
    if name == "star":
        # fold every point into the wedge between an outer tip (angle 0) and the next inner corner (36 degrees)
        wedge = np.pi / 5
        polar_angle = np.abs((np.arctan2(-v, u) - np.pi / 2 + wedge) % (2 * wedge) - wedge)
        radius = np.sqrt(radius_squared)
        point_x, point_y = radius * np.cos(polar_angle), radius * np.sin(polar_angle)
        corner_x, corner_y = STAR_INNER_RADIUS * np.cos(wedge), STAR_INNER_RADIUS * np.sin(wedge)
        # inside when on the centre's side of the edge from the tip (1, 0) to the inner corner
        return (corner_x - 1) * point_y - corner_y * (point_x - 1) >= 0
    raise ValueError(f"unknown shape {name!r}")


def _render_texture(rng: np.random.Generator, class_id: int, patch: np.ndarray,
                    background_colour: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 fill for a shape: solid, stripes or noisy, always contrasting with what lies beneath.

    The colour leans towards the class hue (see CLASS_HUES); the texture is drawn independently of class.
    """
    height, width = patch.shape
    colour = _contrasting_colour(rng, class_id, background_colour)
    kind = rng.integers(3)
    if kind == 0:
        fill = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    elif kind == 1:
        second = colour * rng.uniform(0.45, 0.7)  # a darker shade of the same hue
        angle, period = rng.uniform(0, np.pi), rng.uniform(*STRIPE_PERIOD)
        phase = (np.cos(angle) * np.arange(width)[None, :] + np.sin(angle) * np.arange(height)[:, None]) / period
        fill = np.where(((phase % 1) < 0.5)[..., None], colour, second).astype(np.float32)
    else:
        noise = rng.uniform(*TEXTURE_NOISE) * rng.standard_normal((height, width, 1), dtype=np.float32)
        fill = colour + noise
    return np.clip(np.rint(fill), 0, 255).astype(np.uint8)


def _class_colour(rng: np.random.Generator, class_id: int) -> np.ndarray:
    """An RGB colour (3,) in [0, 255] whose hue is near the class hue, or anywhere for OFF_HUE_FRACTION of draws."""
    hue = CLASS_HUES[class_id] + rng.uniform(-HUE_SPREAD, HUE_SPREAD)
    if rng.random() < OFF_HUE_FRACTION:
        hue = rng.uniform(0, 360)
    saturation, value = rng.uniform(*SATURATION_RANGE), rng.uniform(*VALUE_RANGE)
    # hsv -> rgb: each channel ramps down from `value` as the hue moves away from the channel's own hue
    offsets = (hue / 60 + np.array([5.0, 3.0, 1.0])) % 6
    return 255 * value * (1 - saturation * np.clip(np.minimum(offsets, 4 - offsets), 0, 1))


def _contrasting_colour(rng: np.random.Generator, class_id: int, background_colour: np.ndarray) -> np.ndarray:
    colour = _class_colour(rng, class_id)
    for _ in range(20):
        if np.linalg.norm(colour - background_colour) >= MIN_CONTRAST:
            break
        colour = _class_colour(rng, class_id)
    return colour

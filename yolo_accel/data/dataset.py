"""YoloDataset: one split's images and labels with YOLOv5's loading, mosaic and augmentation, a batch at a time."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..boxes import xywhn_to_xyxy, xyxy_to_xywhn
from ..config import AugmentHyp
from ..files import atomic_write, cache_dir
from ..progress import Progress
from .augment import (
    FILL,
    aligned_matrix,
    apply_hsv,
    copy_paste,
    hsv_gains,
    letterbox,
    mixup,
    perspective_matrix,
    random_perspective,
    resize,
    sampled_region,
    warp_image,
    warp_labels,
)
from .images import ImageDecodeError, read_image, reduction_for
from .labels import LabelIndex

LOGGER = logging.getLogger("yolo_accel")
Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] | None
# (image uint8 (H, W, 3) RGB; labels (n, 6); path; shapes; HSV gains to apply or None)
Sample = tuple[np.ndarray, torch.Tensor, str, Shapes, np.ndarray | None]
Decoded = tuple[np.ndarray, tuple[int, int], tuple[int, int]]
MAX_REPLACEMENTS = 8  # a training sample whose image cannot be decoded is replaced by the next one's, this often
# Mosaic partners of the epoch's batch k are drawn from a pool: the images of batches k - 4, k - 8, k - 12 and k - 16
# of the order, the first batches reaching back into the previous epoch's (in a run's first epoch, slots of batches
# before the first are filled by uniform draws over the dataset). A worker that built those batches still holds
# their images; with 1, 2 or 4 loader processes in all (every 4th batch each) it built all of them, with 8 half.
POOL_STRIDE, POOL_DEPTH = 4, 4
HELD_BYTES = 1 << 30  # at most this much decoded image data kept from batch to batch, per process


class Key(NamedTuple):
    """What a loader asks the dataset for: sample `index` of `epoch`; in training also the sample's batch (its
    place in the epoch's order) and that batch's mosaic partner pool (POOL_DEPTH blocks of batch-size image
    indices, -1 where a block has no image)."""

    epoch: int
    index: int
    batch: int = -1
    pool: tuple[int, ...] = ()


def as_key(key: int | tuple) -> Key:
    return Key(*key) if isinstance(key, tuple) else Key(0, key)


class HeldImages:
    """Decoded images one process keeps from batch to batch, each tagged with the latest batch whose pool or own
    images it belongs to: batch k's pool reaches back POOL_DEPTH x POOL_STRIDE batches, so an image tagged
    k - POOL_DEPTH x POOL_STRIDE or earlier is no use to batches after k. At the next epoch the images still held
    are tagged -1, its first pools' reach. They only save decoding: a batch is the same whether its images come
    from here or from the files."""

    def __init__(self, budget: int = HELD_BYTES):
        self.budget = budget
        self.at: tuple[int, int] = (-1, -1)  # (epoch, batch) last built
        self.images: dict[int, Decoded] = {}
        self.tags: dict[int, int] = {}

    def start(self, key: Key) -> dict[int, Decoded]:
        """The images held for batch `key.batch`: a dict the batch adds its decoded images to."""
        epoch, batch = self.at
        if key.epoch == epoch + 1:  # the next epoch, whose first pools reach back at most to its batch -1
            self.tags = dict.fromkeys(self.images, -1)
        elif key.epoch != epoch or key.batch <= batch:  # another epoch, or the order started again
            self.images, self.tags = {}, {}
        return dict(self.images)

    def keep(self, keys: list[Key], decoded: dict[int, Decoded]) -> None:
        """After building the batch of `keys` with `decoded`: keep what later batches' pools may draw."""
        key = keys[0]
        self.at = (key.epoch, key.batch)
        tags = {}
        block = max(1, len(key.pool) // POOL_DEPTH)
        for slot, i in enumerate(key.pool):
            if i >= 0:
                tags[i] = max(tags.get(i, -1), key.batch - (slot // block + 1) * POOL_STRIDE)
        for k in keys:
            tags[k.index] = key.batch
        for i, tag in tags.items():
            self.tags[i] = max(self.tags.get(i, -1), tag)
        oldest = key.batch - POOL_DEPTH * POOL_STRIDE  # tags at or below it: of no use to later batches
        kept, size = {}, 0
        for i in sorted(decoded, key=lambda i: -self.tags.get(i, oldest)):
            image = decoded[i]
            if self.tags.get(i, oldest) > oldest and not isinstance(image, Exception):
                size += image[0].nbytes
                if size > self.budget:
                    break
                kept[i] = image
        self.images = kept
        self.tags = {i: self.tags[i] for i in kept}


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def offsets_of(sizes: Sequence[int]) -> np.ndarray:
    """(n + 1,) start offsets of n consecutive items of these sizes, then the total."""
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).astype(np.int64)


class Ragged(Sequence):
    """A list of arrays kept as one array and offsets.

    Forked DataLoader workers read it without touching a Python object per item, whose reference count would copy
    its memory page into every worker (worker memory that grows with the dataset, PyTorch issue 13246).
    """

    def __init__(self, arrays: Sequence[np.ndarray], row_shape: tuple[int, ...], dtype: Any = np.float32):
        self.offsets = offsets_of([len(a) for a in arrays])
        rows = [np.asarray(a, dtype).reshape(-1, *row_shape) for a in arrays]
        self.data = np.concatenate(rows) if rows else np.zeros((0, *row_shape), dtype)

    @classmethod
    def allocate(cls, sizes: Sequence[int], dtype: Any) -> Ragged:
        """Uninitialised items of the given sizes (flat), to be filled in place."""
        ragged = cls.__new__(cls)
        ragged.offsets = offsets_of(sizes)
        ragged.data = np.empty(int(ragged.offsets[-1]), dtype)
        return ragged


    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


class YoloDataset(Dataset):
    """Images + labels of one split.

    `dataset[index]` or `dataset[(epoch, index)]` -> (image uint8 (3, H, W) RGB, labels (n, 6) float =
    (0, class, x, y, w, h normalised), image path, shapes, hsv gains). `shapes` is None for mosaics, else
    ((h0, w0), ((gain_h, gain_w), (pad_x, pad_y))) to map boxes back to the original image. `hsv gains` (3,) are the
    HSV gains still to apply when `hsv_on_device` is set (a later stage applies them to the whole batch), else None.

    A sample's randomness comes from a generator seeded by (seed, epoch, index), so it is the same whichever
    worker or process loads it, and a resumed run sees exactly the batches an uninterrupted one would. The
    DataLoader fetches whole batches (`__getitems__`): each file is decoded at most once per batch, images of
    earlier batches that mosaic partners are drawn from stay decoded, and a batch is a function of (seed, epoch,
    its keys) alone.
    """

    def __init__(self, index: LabelIndex, imgsz: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: AugmentHyp | None = None, rect: bool = False, stride: int = 32, pad: float = 0.0,
                 single_cls: bool = False, cache: str | None = None, seed: int = 0,
                 mosaic_epochs: int | None = None, prefix: str = ""):
        self.imgsz, self.augment, self.hyp, self.rect, self.stride = imgsz, augment, hyp or AugmentHyp(), rect, stride
        self.seed, self.mosaic_epochs, self.prefix = seed, mosaic_epochs, prefix
        self.mosaic = augment and not rect
        self.mosaic_border = (-imgsz // 2, -imgsz // 2)
        self.hsv = augment and any((self.hyp.hsv_h, self.hyp.hsv_s, self.hyp.hsv_v))
        self.hsv_on_device = False  # set before the first epoch: HSV gains travel with the batch instead
        self.quad = False  # YOLOv5's --quad (see _quads); HSV then stays in the workers
        order = np.arange(len(index.images))
        self.batch_index = np.zeros(len(order), dtype=np.int64)
        self.batch_shapes = None
        if rect:
            order = self._plan_rect_batches(np.asarray(index.shapes).reshape(-1, 2), batch_size, pad)
        self.files = [index.images[i] for i in order]
        self.paths = np.array([os.fsencode(f) for f in self.files])  # for workers: no Python object per item
        self.shapes = np.asarray(index.shapes, dtype=np.int64).reshape(-1, 2)[order]  # (n, 2) width, height
        self.restore = np.asarray(index.restore, dtype=bool).reshape(-1)[order]
        labels = [index.labels[i] for i in order]
        if single_cls:
            labels = [np.concatenate((np.zeros_like(x[:, :1]), x[:, 1:]), 1) for x in labels]
        self.labels = Ragged(labels, (5,))
        polygons = [index.segments[i] for i in order]
        self.polygons = Ragged([p for image in polygons for p in image], (2,))
        self.polygon_offsets = offsets_of([len(p) for p in polygons])
        self.ram: Ragged | None = None
        self.npy_dir: Path | None = None
        if cache == "ram":
            self._cache_ram()
        elif cache == "disk":
            self._cache_disk()
        elif cache:
            raise ValueError(f"cache must be 'ram', 'disk' or None, got {cache!r}")

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        """Without the images a process holds (a spawned worker starts without them, as a forked one does)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_held", "_scratch")}

    @property
    def geometry(self) -> dict[str, float]:
        """random_perspective's arguments from the hyperparameters."""
        h = self.hyp
        return dict(degrees=h.degrees, translate=h.translate, scale=h.scale, shear=h.shear, perspective=h.perspective)

    def segments(self, i: int) -> list[np.ndarray]:
        """Image i's polygons, (p, 2) normalised each."""
        return [self.polygons[k] for k in range(self.polygon_offsets[i], self.polygon_offsets[i + 1])]

    def _plan_rect_batches(self, shapes: np.ndarray, batch_size: int, pad: float) -> np.ndarray:
        """Sort by aspect ratio and give each batch of `batch_size` one (h, w), a stride multiple; the new order."""
        aspect = shapes[:, 1] / shapes[:, 0]
        order = aspect.argsort()
        aspect = aspect[order]
        self.batch_index = np.arange(len(order)) // batch_size
        batch_shapes = []
        for b in range(int(self.batch_index[-1]) + 1 if len(order) else 0):
            ratios = aspect[self.batch_index == b]
            low, high = ratios.min(), ratios.max()
            batch_shapes.append([high, 1] if high < 1 else [1, 1 / low] if low > 1 else [1, 1])
        self.batch_shapes = np.ceil(np.array(batch_shapes) * self.imgsz / self.stride + pad).astype(int) * self.stride
        return order

    def resized_shape(self, i: int) -> tuple[int, int]:
        """(h, w) of image i after load_image's resize (long side = imgsz)."""
        w0, h0 = self.shapes[i]
        r = self.imgsz / max(h0, w0)
        return (max(1, round(h0 * r)), max(1, round(w0 * r))) if r != 1 else (int(h0), int(w0))

    def decode(self, i: int) -> np.ndarray:
        """Image i as stored: from the disk cache, or decoded (at a reduced size when it will shrink 2x or more)."""
        if self.npy_dir is not None:
            return np.load(self._npy_path(i, self.npy_dir), allow_pickle=False)
        return self._decode_file(i)

    def _decode_file(self, i: int) -> np.ndarray:
        path = Path(os.fsdecode(self.paths[i]))
        reduce = reduction_for(int(self.shapes[i].max()), self.imgsz, path)
        return read_image(path, reduce=reduce, restore=bool(self.restore[i]))

    def load_image(self, i: int) -> Decoded:
        """(image resized so its long side is imgsz, (h0, w0) original, (h, w) resized)."""
        w0, h0 = (int(v) for v in self.shapes[i])
        h, w = self.resized_shape(i)
        if self.ram is not None:
            return self.ram[i].reshape(h, w, 3), (h0, w0), (h, w)
        # yolov5 parity: bilinear when augmenting or enlarging, area averaging for other shrinks
        return resize(self.decode(i), w, h, shrink_by_area=not self.augment), (h0, w0), (h, w)

    def _cache_ram(self) -> None:
        """Every image resized (long side imgsz) into one block of memory that forked workers share."""
        sizes = [h * w * 3 for h, w in (self.resized_shape(i) for i in range(len(self)))]
        needed, free = sum(sizes), available_memory()
        if needed * 1.3 > free:
            LOGGER.warning(f"{self.prefix}WARNING ⚠️ --cache ram needs {needed / 2**30:.1f} GB and "
                           f"{free / 2**30:.1f} GB is available: not caching images")
            return
        block = Ragged.allocate(sizes, np.uint8)

        def store(i: int) -> None:
            block[i][:] = self.load_image(i)[0].reshape(-1)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
                Progress(len(self), f"{self.prefix}Caching images ({needed / 2**30:.2f} GB ram)") as bar:
            for _ in pool.map(store, range(len(self))):
                bar.update()
        block.data.flags.writeable = False  # samples are built from views of it
        self.ram = block

    def _npy_path(self, i: int, folder: Path) -> Path:
        path = self.files[i]
        stat = path.stat()
        key = hashlib.sha256(os.fsencode(path.resolve()) + f":{stat.st_size}:{stat.st_mtime_ns}".encode())
        return folder / f"{key.hexdigest()[:24]}.npy"

    def _cache_disk(self) -> None:
        """Decoded images as .npy in the yolo-accel cache folder (the dataset folder is left untouched); big JPEGs
        at the reduced size they decode to for this image size."""
        folder = cache_dir() / "images" / str(self.imgsz)
        folder.mkdir(parents=True, exist_ok=True)

        def store(i: int) -> None:
            target = self._npy_path(i, folder)
            if not target.exists():
                image = self._decode_file(i)

                def write(tmp: Path) -> None:
                    with open(tmp, "wb") as f:
                        np.save(f, image, allow_pickle=False)

                atomic_write(target, write)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
                Progress(len(self), f"{self.prefix}Caching images (disk: {folder})") as bar:
            for _ in pool.map(store, range(len(self))):
                bar.update()
        self.npy_dir = folder

    def mosaic_active(self, epoch: int) -> bool:
        return self.mosaic and (self.mosaic_epochs is None or epoch < self.mosaic_epochs)

    def __getitem__(self, key: int | tuple) -> tuple[torch.Tensor, torch.Tensor, str, Shapes, np.ndarray | None]:
        """One sample on its own, its image as a (3, H, W) tensor; loaders fetch whole batches (__getitems__)."""
        key = as_key(key)
        image, *rest = self.sample(key.epoch, key.index, {}, key.pool)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), *rest

    def __getitems__(self, keys: list[int | tuple]) -> list[Sample]:
        """A whole batch, each file decoded at most once for it (an image that is also another mosaic's partner,
        or in view twice, is decoded once).

        Mosaic partners are drawn from the batch's pool (see Key, POOL_STRIDE): images of earlier batches that
        this process built and still holds, so a training image is decoded about once per epoch instead of about
        3.4 times with partners drawn from the whole dataset (YOLOv5's draw). Without a pool (keys made by hand, the
        first batches of a run) partners are drawn from the whole dataset. Drawing them from the batch's own
        images instead cost yolov5n 4.6 points of mean mAP50-95 on the demo data (3 seeds): a batch then holds a
        quarter as many different images; a pool of four earlier batches keeps about 50 different images in 64
        mosaic tiles of a batch of 16, against about 63 with YOLOv5's draw.
        """
        keys = [as_key(key) for key in keys]
        held = bool(self.ram is None and keys and keys[0].pool and self.mosaic_active(keys[0].epoch))
        if held:
            self._held = getattr(self, "_held", None) or HeldImages()
            decoded = self._held.start(keys[0])
        else:
            decoded = {}
        samples = [self.sample(key.epoch, key.index, decoded, key.pool) for key in keys]
        if held:
            self._held.keep(keys, decoded)
        return self._quads(keys, samples) if self.quad else samples

    def _quads(self, keys: list[Key], samples: list[Sample]) -> list[Sample]:
        """YOLOv5's --quad: every four samples become one at twice the size, either the first upsampled 2x or the
        four tiled (first and second down the left, third and fourth down the right), even odds drawn from the
        group's first key; a batch's last 1-3 samples are dropped."""
        out = []
        for k in range(0, len(samples) - 3, 4):
            epoch, index = keys[k].epoch, keys[k].index
            group = samples[k:k + 4]
            image, labels, path, shapes, _ = group[0]
            if np.random.default_rng([self.seed, epoch, index, 4]).random() < 0.5:
                height, width = image.shape[:2]
                image = resize(np.ascontiguousarray(image), width * 2, height * 2)
            else:
                left = np.concatenate([np.ascontiguousarray(s[0]) for s in group[:2]], 0)
                right = np.concatenate([np.ascontiguousarray(s[0]) for s in group[2:]], 0)
                image = np.concatenate((left, right), 1)
                parts = [s[1].clone() for s in group]
                for part, (dx, dy) in zip(parts, ((0, 0), (0, 1), (1, 0), (1, 1))):
                    part[:, 2] += dx
                    part[:, 3] += dy
                labels = torch.cat(parts, 0)
                labels[:, 2:] *= 0.5
            out.append((image, labels, path, shapes, None))
        return out

    def _image(self, i: int, decoded: dict[int, Decoded]) -> Decoded:
        if i not in decoded:
            try:
                decoded[i] = self.load_image(i)
            except ImageDecodeError as err:
                decoded[i] = err  # fail again at once if another sample of the batch needs it
        if isinstance(decoded[i], ImageDecodeError):
            raise decoded[i]
        return decoded[i]

    def sample(self, epoch: int, index: int, decoded: dict[int, Decoded], pool: Sequence[int] = ()) -> Sample:
        """Sample `index` of `epoch`, mosaic partners drawn from `pool` (see Key); decoded images are taken from and
        put into `decoded`. An image that cannot be decoded is reported and skipped: in training the next image's
        sample takes its place, in validation a grey image without labels (both the same every epoch)."""
        for attempt in range(MAX_REPLACEMENTS + 1):
            try:
                return self._sample(epoch, (index + attempt) % len(self), decoded, pool)
            except ImageDecodeError as err:
                LOGGER.warning(f"{self.prefix}WARNING ⚠️ {err}; skipping it")
                if not self.augment:
                    return self._blank_sample(index)
        raise ImageDecodeError(f"{self.prefix}{MAX_REPLACEMENTS + 1} images in a row around "
                               f"{os.fsdecode(self.paths[index])} cannot be decoded; check the dataset")

    def _blank_sample(self, index: int) -> Sample:
        """A grey image in place of image `index`, letterboxed as it would be, with no labels."""
        h, w = self.resized_shape(index)
        h0, w0 = int(self.shapes[index][1]), int(self.shapes[index][0])
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.imgsz
        image, ratio, pad = letterbox(np.full((h, w, 3), FILL, np.uint8), shape, auto=False, scaleup=False)
        shapes = (h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), (float(pad[0]), float(pad[1])))
        return image, torch.zeros((0, 6)), os.fsdecode(self.paths[index]), shapes, None

    def _sample(self, epoch: int, index: int, decoded: dict[int, Decoded], pool: Sequence[int]) -> Sample:
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp = self.hyp
        shapes: Shapes = None
        if self.mosaic_active(epoch) and rng.random() < hyp.mosaic:
            image, labels = self.load_mosaic(index, rng, decoded, pool)
            if rng.random() < hyp.mixup:
                other = int(rng.integers(len(self)))
                image, labels = mixup(image, labels, *self.load_mosaic(other, rng, decoded, pool), rng)
        else:
            image, (h0, w0), (h, w) = self._image(index, decoded)
            shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.imgsz
            image, ratio, pad = letterbox(image, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), (float(pad[0]), float(pad[1])))
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn_to_xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
            if self.augment:
                image, labels = random_perspective(image, labels, rng=rng, **self.geometry)
        labels = labels.astype(np.float32)
        if len(labels):
            labels[:, 1:5] = xyxy_to_xywhn(labels[:, 1:5], w=image.shape[1], h=image.shape[0], clip=True, eps=1e-3)
        gains = None
        if self.augment:
            if self.hsv:
                gains = hsv_gains(rng, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v)
                if not self.hsv_on_device:
                    image, gains = apply_hsv(image, gains), None
            up_down, left_right = rng.random() < hyp.flipud, rng.random() < hyp.fliplr
            if up_down:
                labels[:, 2] = 1 - labels[:, 2]
            if left_right:
                labels[:, 1] = 1 - labels[:, 1]
            if up_down or left_right:  # a new array: copying a mirrored view into the batch is 50x slower
                image = cv2.flip(np.ascontiguousarray(image), -1 if up_down and left_right else 0 if up_down else 1)
        out = np.zeros((len(labels), 6), dtype=np.float32)
        out[:, 1:] = labels
        return image, torch.from_numpy(out), os.fsdecode(self.paths[index]), shapes, gains

    def load_mosaic(self, index: int, rng: np.random.Generator, decoded: dict[int, Decoded] | None = None,
                    pool: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Four images around a random centre on a 2s x 2s canvas, then copy-paste and a random warp to s x s.

        The three partners are drawn from `pool` (see partners()). Labels come back as (n, 5) = (class, x1, y1,
        x2, y2) in output pixels. Without copy-paste only the part of the canvas that the warp reads
        is assembled, and images that fall outside it are not decoded; the result is the same as warping the full
        canvas (within one grey level for rotations and shears, which OpenCV interpolates in fixed point from the
        region's origin).
        """
        decoded = {} if decoded is None else decoded
        s = self.imgsz
        yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in self.mosaic_border)
        indices = [index, *self.partners(rng, pool)]
        rng.shuffle(indices)
        tiles = []  # (image index, (x, y) of its top-left corner on the canvas)
        all_labels, all_segments = [], []
        for tile, i in enumerate(indices):
            h, w = self.resized_shape(i)
            # top left, top right, bottom left, bottom right of the centre; the canvas edges clip them
            padw, padh = (xc - w, yc - h) if tile == 0 else (xc, yc - h) if tile == 1 else \
                (xc - w, yc) if tile == 2 else (xc, yc)
            tiles.append((i, (padw, padh)))
            labels = self.labels[i].copy()
            segments = [seg * [w, h] + [padw, padh] for seg in self.segments(i)]
            if labels.size:
                labels[:, 1:] = xywhn_to_xyxy(labels[:, 1:], w, h, padw, padh)
            all_labels.append(labels)
            all_segments.extend(segments)
        labels = np.concatenate(all_labels, 0).astype(np.float64)
        for x in (labels[:, 1:], *all_segments):
            np.clip(x, 0, 2 * s, out=x)
        geometry = self.geometry
        if self.hyp.copy_paste and all_segments:  # copy-paste mirrors the whole canvas
            canvas = self._assemble(tiles, (0, 0, 2 * s, 2 * s), decoded)
            canvas, labels, all_segments = copy_paste(canvas, labels, all_segments, self.hyp.copy_paste, rng)
            return random_perspective(canvas, labels, all_segments, rng=rng, border=self.mosaic_border, **geometry)
        out_shape = (2 * s + 2 * self.mosaic_border[0], 2 * s + 2 * self.mosaic_border[1])
        # the draws random_perspective would make, in its order
        matrix, scale = perspective_matrix(rng, (2 * s, 2 * s), out_shape, **geometry)
        aligned = aligned_matrix(matrix, out_shape, (2 * s, 2 * s))
        if aligned is not None:  # scale and shift (YOLOv5's hyps): a resize of the part of the canvas in view
            matrix, region = aligned
            image = resize(self._assemble(tiles, region, decoded), out_shape[1], out_shape[0])
            if np.may_share_memory(image, self._scratch):  # a resize to its own size returns the buffer itself
                image = image.copy()
        else:
            region = sampled_region(matrix, out_shape, (2 * s, 2 * s))
            shift = np.eye(3)
            shift[:2, 2] = region[:2]  # region pixels -> canvas pixels
            image = warp_image(self._assemble(tiles, region, decoded), matrix @ shift, out_shape)
        return image, warp_labels(labels, all_segments, matrix, scale, out_shape)

    def partners(self, rng: np.random.Generator, pool: Sequence[int] = ()) -> list[int]:
        """Three mosaic partners: slots drawn uniformly from `pool`, an empty slot (-1) filled by a uniform draw over
        the dataset; without a pool, three uniform draws over the dataset (YOLOv5's draw)."""
        if not len(pool):
            return rng.integers(0, len(self), size=3).tolist()
        picks = [int(pool[slot]) for slot in rng.integers(0, len(pool), size=3).tolist()]
        return [i if i >= 0 else int(rng.integers(len(self))) for i in picks]

    def _canvas(self, height: int, width: int) -> np.ndarray:
        """A grey (height, width, 3) view of one buffer this process reuses: the mosaic regions vary in size from
        sample to sample, and fresh allocations of every size fragment the heap (worker memory creeping up)."""
        scratch = getattr(self, "_scratch", None)
        if scratch is None or scratch.shape[0] < height or scratch.shape[1] < width:
            side = max(height, width, 2 * self.imgsz)
            scratch = self._scratch = np.empty((max(height, side), max(width, side), 3), np.uint8)
        canvas = scratch[:height, :width]
        canvas[...] = FILL
        return canvas

    def _assemble(self, tiles: list[tuple[int, tuple[int, int]]], region: tuple[int, int, int, int],
                  decoded: dict[int, Decoded]) -> np.ndarray:
        """The (x0, y0, x1, y1) part of the grey 2s x 2s mosaic canvas, each image at its corner, clipped by the
        canvas edges; the region may reach past them. Images with no pixel in the region are not loaded."""
        x0, y0, x1, y1 = region
        size = 2 * self.imgsz
        canvas = self._canvas(y1 - y0, x1 - x0)
        for i, (left, top) in tiles:
            h, w = self.resized_shape(i)
            cx0, cy0 = max(left, x0, 0), max(top, y0, 0)  # the image's visible part, in canvas pixels
            cx1, cy1 = min(left + w, x1, size), min(top + h, y1, size)
            if cx0 < cx1 and cy0 < cy1:
                image = self._image(i, decoded)[0]
                canvas[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = image[cy0 - top:cy1 - top, cx0 - left:cx1 - left]
        return canvas


def labels_to_class_weights(labels: list[np.ndarray], nc: int) -> np.ndarray:
    """Inverse class frequency, normalised to sum 1 (YOLOv5's model.class_weights)."""
    classes = np.concatenate([x[:, 0] for x in labels]).astype(int) if labels else np.zeros(0, int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1
    weights = 1 / counts
    return weights / weights.sum()


def labels_to_image_weights(labels: list[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Per-image sampling weight: the sum of its labels' class weights."""
    counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in labels]).reshape(-1, nc)
    return (class_weights.reshape(1, nc) * counts).sum(1)


def check_labels(dataset: YoloDataset, nc: int, source: str, split: str = "training") -> None:
    """Stop before training on class ids >= nc (any split) or, in the training split, no labels at all, saying what
    to fix."""
    from .sources import DataError

    classes = dataset.labels.data[:, 0]
    if not len(classes):
        if split != "training":
            return
        raise DataError(f"{source}: no labels found in {len(dataset)} training images; label files belong in a "
                        f"'labels' folder beside 'images' (image .../images/a.jpg -> .../labels/a.txt)")
    top = int(classes.max())
    if top >= nc:
        bad = next(f for f, x in zip(dataset.files, dataset.labels) if len(x) and x[:, 0].max() >= nc)
        raise DataError(f"{source}: {split} label class {top} exceeds nc={nc} (e.g. in {bad}); class ids run "
                        f"0..{nc - 1} — fix the labels or the names in the dataset yaml")


"""Verify image/label pairs in parallel and cache the result next to the labels (an .npz, never a pickle)."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..boxes import segments_to_boxes
from ..files import atomic_write
from ..progress import Progress
from .images import exif_size, read_image
from .sources import IMAGE_FORMATS, label_path

LOGGER = logging.getLogger("yolo_accel")
CACHE_VERSION = 2  # 2: JPEGs with corrupt data are named (jpeg_damage)
COUNTS = ("found", "missing", "empty", "corrupt", "damaged")
MIN_SIDE = 10  # pixels; smaller images are skipped as corrupt


@dataclass
class LabelIndex:
    """What a scan found: the usable images with their labels (class, x, y, w, h normalised)."""

    images: list[Path]
    shapes: np.ndarray  # (n, 2) width, height after EXIF rotation
    labels: list[np.ndarray]  # n x (k, 5)
    segments: list[list[np.ndarray]]  # n x polygons (p, 2) normalised
    restore: np.ndarray  # (n,) truncated JPEGs, decoded leniently
    counts: dict[str, int] = field(default_factory=dict)  # found, missing, empty, corrupt
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        damaged = f", {c['damaged']} with corrupt JPEG data (kept)" if c.get("damaged") else ""
        return (f"{len(self.images)} images, {c.get('missing', 0) + c.get('empty', 0)} backgrounds, "
                f"{c.get('corrupt', 0)} corrupt{damaged}")


@dataclass
class PairResult:
    image: Path
    shape: tuple[int, int] | None = None
    labels: np.ndarray | None = None
    segments: list[np.ndarray] = field(default_factory=list)
    restore: bool = False
    damaged: bool = False  # corrupt JPEG data that still decodes (named, kept)
    status: str = "found"  # found | missing | empty | corrupt
    message: str = ""


def jpeg_damage(data: bytes, path: Path) -> str:
    """libjpeg's warning for a JPEG whose data is corrupt but still decodes ("Corrupt JPEG data: 1817 extraneous
    bytes before marker 0xd9", "... premature end of data segment", "... bad Huffman code"): such a file trains as
    garbled pixels. One decode at 1/8 scale, in grey (the entropy data is read in full, the rest is skipped); ""
    when clean, or when the check cannot run (simplejpeg missing; a colour space it does not convert)."""
    try:
        import simplejpeg
    except ImportError:
        return ""
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=True)
        return ""
    except ValueError as err:
        warning = str(err)
    try:  # a warning stops only the strict decode; an error stops both and is the decoders' to judge (read_image)
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=False)
    except ValueError:
        read_image(path)
        return ""
    return warning.rstrip(".") or "corrupt JPEG data"


def verify_pair(image_path: Path, label_file: Path) -> PairResult:
    """Check one image and its label file; never modifies either. Problems become a corrupt result + message."""
    result = PairResult(image_path)
    try:
        with Image.open(image_path) as im:
            shape = exif_size(im)
            fmt = (im.format or "").lower()
            try:
                im.verify()
            except Exception:
                if fmt not in ("jpeg", "mpo"):
                    raise
                read_image(image_path, restore=True)  # a truncated JPEG that still decodes is kept
        if fmt not in IMAGE_FORMATS and not (fmt == "mpo" and image_path.suffix.lower() in (".jpg", ".jpeg")):
            raise ValueError(f"invalid image format {im.format}")
        if shape[0] < MIN_SIDE or shape[1] < MIN_SIDE:
            raise ValueError(f"image size {shape[0]}x{shape[1]} is under {MIN_SIDE} pixels")
        if fmt in ("jpeg", "mpo"):
            with open(image_path, "rb") as f:
                data = f.read()
            if not data.endswith(b"\xff\xd9"):
                result.restore = True
                result.message = f"{image_path}: truncated JPEG, restored when loaded (the file is not changed)"
            elif damage := jpeg_damage(data, image_path):
                result.damaged = True
                result.message = f"{image_path}: {damage}; it decodes, and trains as decoded (check the file)"
        result.shape = shape
    except Exception as err:  # any decoder error means an unusable image
        reason = str(err) or type(err).__name__
        result.status, result.message = "corrupt", f"{image_path}: ignoring corrupt image: {reason}"
        return result
    try:
        result.labels, result.segments, result.status, note = parse_label_file(label_file)
        if note:
            result.message = f"{image_path}: {note}"
    except ValueError as err:
        result.status, result.message = "corrupt", f"{label_file}: ignoring image and label: {err}"
    return result


def parse_label_file(path: Path) -> tuple[np.ndarray, list[np.ndarray], str, str]:
    """(labels (k, 5), polygons, status, note) of a YOLO label file; raises ValueError on bad content."""
    if not path.is_file():
        return np.zeros((0, 5), np.float32), [], "missing", ""
    rows = [line.split() for line in path.read_text(errors="replace").strip().splitlines() if line.strip()]
    if not rows:
        return np.zeros((0, 5), np.float32), [], "empty", ""
    segments: list[np.ndarray] = []
    try:
        if any(len(r) > 6 for r in rows):  # polygon rows: class x1 y1 x2 y2 ...
            if any(len(r) % 2 == 0 or len(r) < 7 for r in rows):
                raise ValueError("polygon rows need a class and at least 3 x y pairs")
            classes = np.array([r[0] for r in rows], dtype=np.float32)
            segments = [np.array(r[1:], dtype=np.float32).reshape(-1, 2) for r in rows]
            labels = np.concatenate((classes[:, None], segments_to_boxes(segments)), 1)
        else:
            widths = {len(r) for r in rows}
            if widths != {5}:
                raise ValueError(f"labels need 5 columns (class x y w h), found rows of {sorted(widths)} columns")
            labels = np.array(rows, dtype=np.float32)
    except ValueError as err:
        if "could not convert" in str(err):
            raise ValueError(f"non-numeric value ({err})") from None
        raise
    if not np.isfinite(labels).all():
        bad = [i + 1 for i, row in enumerate(labels) if not np.isfinite(row).all()]
        raise ValueError(f"non-finite values (nan or inf) in row(s) {bad}")
    if (labels < 0).any():
        raise ValueError(f"negative label values {labels[labels < 0].tolist()}")
    if (labels[:, 1:] > 1).any():
        raise ValueError(f"non-normalised or out of bounds coordinates {labels[:, 1:][labels[:, 1:] > 1].tolist()}")
    if (labels[:, 0] != np.floor(labels[:, 0])).any():
        raise ValueError("class ids must be whole numbers")
    _, unique = np.unique(labels, axis=0, return_index=True)
    note = ""
    if len(unique) < len(labels):
        note = f"{len(labels) - len(unique)} duplicate labels removed"
        unique = np.sort(unique)
        labels = labels[unique]
        if segments:
            segments = [segments[i] for i in unique]
    return labels, segments, "found", note


def dataset_hash(images: list[Path], label_files: list[Path]) -> str:
    """Hash of every path and the size and modification time of every existing file: changes when files are added,
    removed or edited (an edit that keeps the size included)."""
    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for p in [*label_files, *images]:
        try:
            stat = p.stat()
            mark = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            mark = "-1"
        digest.update(os.fsencode(p))
        digest.update(mark.encode())
    return digest.hexdigest()


def cache_path_for(images: list[Path]) -> Path:
    # not YOLOv5's "<split>.cache": the two formats differ, and neither tool should clobber the other's
    return label_path(images[0]).parent.with_suffix(".yolo-accel.cache")


def save_cache(path: Path, index: LabelIndex, digest: str) -> bool:
    label_counts = np.array([len(x) for x in index.labels], np.int64)
    seg_counts = np.array([len(s) for s in index.segments], np.int64)
    flat_segments = [p for s in index.segments for p in s]
    arrays = {
        "version": np.array(CACHE_VERSION),
        "hash": np.array(digest),
        "images": np.array([str(p) for p in index.images]),
        "shapes": index.shapes.astype(np.int64).reshape(-1, 2),
        "label_counts": label_counts,
        "labels": np.concatenate(index.labels).astype(np.float32) if index.labels else np.zeros((0, 5), np.float32),
        "segment_counts": seg_counts,
        "segment_sizes": np.array([len(p) for p in flat_segments], np.int64),
        "segment_points": (np.concatenate(flat_segments) if flat_segments else np.zeros((0, 2))).astype(np.float32),
        "restore": index.restore.astype(bool),
        "counts": np.array([index.counts.get(k, 0) for k in COUNTS]),
        "messages": np.array(index.messages if index.messages else [""]),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        atomic_write(path, write)
        return True
    except OSError as err:
        LOGGER.warning(f"WARNING ⚠️ label cache not saved: {path.parent} is not writeable ({err.strerror})")
        return False


def load_cache(path: Path, digest: str) -> LabelIndex | None:
    """The cached index if the file exists, has our version and matches `digest`; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["hash"]) != digest:
                return None
            label_counts, seg_counts, seg_sizes = z["label_counts"], z["segment_counts"], z["segment_sizes"]
            labels = np.split(z["labels"], np.cumsum(label_counts)[:-1]) if len(label_counts) else []
            polygons = np.split(z["segment_points"], np.cumsum(seg_sizes)[:-1]) if len(seg_sizes) else []
            grouped = np.split(np.arange(len(polygons)), np.cumsum(seg_counts)[:-1]) if len(seg_counts) else []
            counts = dict(zip(COUNTS, z["counts"].tolist()))
            return LabelIndex(images=[Path(p) for p in z["images"].tolist()], shapes=z["shapes"],
                              labels=[x.reshape(-1, 5) for x in labels],
                              segments=[[polygons[i] for i in g] for g in grouped], restore=z["restore"],
                              counts=counts, messages=[m for m in z["messages"].tolist() if m])
    except (OSError, KeyError, ValueError):
        return None


def scan_labels(images: list[Path], prefix: str = "", workers: int = 8, use_cache: bool = True,
                verbose: bool = True) -> LabelIndex:
    """Verify every pair (or reuse a fresh cache) and log one warning per problem file plus a summary line."""
    label_files = [label_path(p) for p in images]
    cache = cache_path_for(images)
    digest = dataset_hash(images, label_files)
    index = load_cache(cache, digest) if use_cache else None
    if index is not None:
        if verbose:
            LOGGER.info(f"{prefix}Scanning {cache}... {index.summary()} (cached)")
        for message in index.messages if verbose else ():
            LOGGER.warning(f"{prefix}WARNING ⚠️ {message}")
        return index

    results: list[PairResult] = []
    counts = dict.fromkeys(COUNTS, 0)
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool, \
            Progress(len(images), f"{prefix}Scanning {cache.parent}", enabled=verbose) as bar:
        for result in pool.map(verify_pair, images, label_files):
            counts[result.status] += 1
            counts["damaged"] += result.damaged
            results.append(result)
            bar.update(1, f"{counts['found']} found, {counts['missing']} missing, {counts['empty']} empty, "
                          f"{counts['corrupt']} corrupt")
    usable = [r for r in results if r.status != "corrupt"]
    index = LabelIndex(images=[r.image for r in usable],
                       shapes=np.array([r.shape for r in usable], np.int64).reshape(-1, 2),
                       labels=[r.labels for r in usable], segments=[r.segments for r in usable],
                       restore=np.array([r.restore for r in usable], bool), counts=counts,
                       messages=[r.message for r in results if r.message])
    for message in index.messages if verbose else ():
        LOGGER.warning(f"{prefix}WARNING ⚠️ {message}")
    if verbose:
        LOGGER.info(f"{prefix}{index.summary()}")
    if use_cache and save_cache(cache, index, digest) and verbose:
        LOGGER.info(f"{prefix}New cache created: {cache}")
    return index

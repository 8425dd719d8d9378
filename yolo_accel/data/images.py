"""Image files to uint8 RGB arrays: OpenCV (YOLOv5's decoder) first, Pillow for what OpenCV cannot read.

Big JPEGs that will be shrunk anyway decode at 1/2, 1/4 or 1/8 of their size in the DCT domain (libjpeg's scaled
decoding), which skips most of the work: a 4032x3024 photo trained at 640 px decodes at 1008x756 in about half
the time of a full decode. EXIF orientation is applied either way; grey, alpha, palette and 16-bit images come
back as 8-bit RGB.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

JPEG_SUFFIXES = (".jpg", ".jpeg")
_REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # with IMREAD_COLOR_RGB: the reduced colour modes, in RGB
_truncated_lock = threading.Lock()  # Pillow's switch for truncated files is one global


class ImageDecodeError(OSError):
    """An image file that neither OpenCV nor Pillow can decode; the message names it."""


def reduction_for(long_side: int, target: int, path: Path) -> int:
    """The largest of 8, 4 and 2 by which a JPEG with this long side can be decoded and still have a long side of
    at least `target`; 1 for smaller shrinks and for other formats (their decoders cannot skip work)."""
    if path.suffix.lower() not in JPEG_SUFFIXES:
        return 1
    return next((f for f in (8, 4, 2) if long_side // f >= target), 1)


def read_image(path: Path, reduce: int = 1, restore: bool = False) -> np.ndarray:
    """Decode to uint8 RGB (H, W, 3), upright as EXIF says; with `reduce` (2, 4 or 8) a JPEG decodes at about
    1/reduce of its size (other formats may come back at full size). `restore` decodes a truncated JPEG as far as
    its data goes (Pillow's lenient mode), as the label scan found it usable."""
    if not restore:
        # from the file's bytes, not its name: OpenCV cannot open names that are not valid text (Linux names are
        # bytes; it crashed on some), nor non-ASCII names on Windows
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB | _REDUCED[reduce]) if data.size else None
        if image is not None:
            return image
    try:
        return np.asarray(open_image(path, restore=restore, reduce=reduce))
    except (OSError, ValueError, SyntaxError) as err:  # what Pillow's decoders raise on bad data
        raise ImageDecodeError(f"{path}: cannot be decoded ({err})") from None


def open_image(path: Path, restore: bool = False, reduce: int = 1) -> Image.Image:
    """Decode with Pillow to a loaded RGB image honouring EXIF orientation; grey, alpha, palette and 16-bit are
    converted. For drawing on, and for files OpenCV cannot read."""
    with Image.open(path) as im:
        if reduce > 1 and im.format == "JPEG":
            im.draft("RGB", (-(-im.size[0] // reduce), -(-im.size[1] // reduce)))
        if restore:
            with _truncated_lock:
                previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
                try:
                    im.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = previous
        else:
            im.load()  # before reading EXIF, which a PNG may store after the pixels
        if im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):  # exif_transpose copies even upright images
            im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(im, dtype=np.float64)
            array = (array / (65535.0 if array.max() > 255 else 255.0) * 255).clip(0, 255).astype(np.uint8)
            return Image.fromarray(np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2)))
        if im.mode != "RGB":
            im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
        return im


def exif_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. swapped for 90/270-degree EXIF orientations. Call before verify()."""
    has_exif = image.format in ("JPEG", "MPO", "TIFF", "WEBP") or "exif" in image.info
    orientation = image.getexif().get(0x0112, 1) if has_exif else 1
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_for_size(path: Path, target: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for a model input whose long side is `target` (a JPEG that would shrink 2x or more decodes reduced);
    returns (image, (h0, w0) its full upright size, from the header)."""
    with Image.open(path) as im:
        width, height = exif_size(im)
    return read_image(path, reduce=reduction_for(max(width, height), target, path)), (height, width)

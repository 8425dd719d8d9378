from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(FIXTURES))  # seeded_weights helper shared with the fixture generator


@pytest.fixture(scope="session")
def tiny_yaml() -> Path:
    return REFERENCE / "tiny.yaml"


def generic_warp(image, matrix, out_shape, pad=0):
    """Pillow's generic affine transform: the definition the fast paths must reproduce.

    With `pad`, the image first gets a grey border that wide: pixels at its edges then blend with the grey around
    them (as in YOLOv5's OpenCV warp) instead of being repeated.
    """
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=114)
        shift = np.eye(3)
        shift[:2, 2] = -pad
        matrix = matrix @ shift
    inverse = np.linalg.inv(matrix)
    coeffs = (inverse[:2] / inverse[2, 2]).reshape(-1).tolist()
    return np.asarray(Image.fromarray(image).transform((out_shape[1], out_shape[0]), Image.Transform.AFFINE, coeffs,
                                                       Image.Resampling.BILINEAR, fillcolor=(114, 114, 114)))

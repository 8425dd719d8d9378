from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(FIXTURES))  # seeded_weights helper shared with the fixture generator


@pytest.fixture(scope="session")
def tiny_yaml() -> Path:
    return REFERENCE / "tiny.yaml"

"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from fastlayers import backend


@pytest.fixture
def im2col_path():
    """Float32 3x3 convolutions run im2col + GEMM while the test runs (they may otherwise take
    the Winograd path, which rounds differently and has bounds of its own in
    tests/test_native_winograd.py): for tests whose tolerances or worked numbers are im2col's."""
    with backend.conv_algorithm("im2col"):
        yield

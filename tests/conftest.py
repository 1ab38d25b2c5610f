from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ot_hook.serve import Receiver
from tests.support import running


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A fresh state directory (--home) for one test."""
    return tmp_path / "home"


@pytest.fixture
async def receiver(state: Path) -> AsyncIterator[Receiver]:
    async with running(state) as started:
        yield started

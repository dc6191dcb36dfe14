"""Files that appear whole or not at all: written beside their path under a temporary name, then renamed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields ``.tmp-<name>`` beside ``path`` (the same suffix, so writers that go by it still do) to write to, and
    renames it ``path`` when the block ends. A crash or an error inside the block leaves ``path`` as it was (a
    kill can leave the hidden temporary file, which the next write replaces)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

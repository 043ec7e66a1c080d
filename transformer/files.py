"""Files written whole or not at all: into PATH.tmp, then renamed over PATH, so that a crash
or a full disk never leaves half a vocabulary, config or output file."""

from __future__ import annotations

import os


def write_atomically(path: str, content: str | bytes) -> None:
    """Writes `content` (text as UTF-8, or bytes) to `path` through `path`.tmp."""
    tmp = f"{path}.tmp"
    if isinstance(content, bytes):
        with open(tmp, "wb") as f:
            f.write(content)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    os.replace(tmp, path)

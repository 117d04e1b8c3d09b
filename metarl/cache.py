"""Where generated or preprocessed data is cached: $METARL_CACHE, default ~/.cache/metarl."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def cache_root() -> Path:
    return Path(os.environ.get("METARL_CACHE", Path.home() / ".cache" / "metarl"))


def save_atomic(obj, path: Path) -> Path:
    """torch.save to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path

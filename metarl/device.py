"""Device choice for `--device auto|cpu|cuda`."""
from __future__ import annotations

import torch

from metarl.errors import UserError


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but this torch has no CUDA device; "
                            "install a CUDA build of torch or use --device cpu (or auto)")
        return torch.device(name)
    raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")

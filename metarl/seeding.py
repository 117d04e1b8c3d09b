"""Named, independent torch.Generators derived from one run seed (no global RNG)."""
from __future__ import annotations

import hashlib

import torch


def make_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for stream `name` of run `seed`; different names give unrelated streams."""
    digest = hashlib.sha256(f"{name}:{seed}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g

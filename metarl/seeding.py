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


def stream_state() -> torch.Tensor:
    """A fresh random stream's state, seeded from the global RNG (which the trainer seeds before
    building a learner): keep it as a module buffer and draw with draw_from_state."""
    return torch.Generator().manual_seed(int(torch.randint(2**31, ()))).get_state()


def draw_from_state(state: torch.Tensor, draw):
    """draw(gen) with a CPU generator whose state is the tensor `state` (a module buffer, so
    checkpoints hold it and a resumed run draws the same; the buffer may sit on any device),
    which is then advanced in place. Returns draw's result (on the CPU)."""
    gen = torch.Generator().set_state(state.detach().cpu())
    out = draw(gen)
    state.copy_(gen.get_state())
    return out

"""Procedurally generated handwritten glyphs: an Omniglot-like few-shot dataset made from a
seed, so tests and demos need no download.

A class is 1-3 random cubic Bezier strokes (control points in the middle of the canvas). Each of
its variants redraws the strokes with jittered control points, a small random rotation, scale
and shift, a random pen width and pixel noise: like different people writing one character.
Images are 28x28 uint8, ink = 255 on 0 background: images [classes, variants, 28, 28].
Generation is deterministic given (seed, classes, variants) and cached under $METARL_CACHE/glyphs.
"""
from __future__ import annotations

import math

import torch

from metarl.cache import cache_root, save_atomic
from metarl.seeding import make_generator

SIZE = 28
POINTS = 32          # samples along each stroke (spacing under a pixel for the longest strokes)
MAX_STROKES = 3


def _bezier(ctrl: torch.Tensor) -> torch.Tensor:
    """ctrl [..., 4, 2] -> POINTS points on the cubic Bezier curve [..., POINTS, 2]."""
    t = torch.linspace(0, 1, POINTS).view(-1, 1)
    b = torch.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], -1)  # [P, 1, 4]
    return (b.squeeze(1) @ ctrl)                                                              # [..., P, 2]


def _render(points: torch.Tensor, valid: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """points [B, S, P, 2] in [0, 1]^2, valid [B, S] stroke mask, width [B] pen half-width in
    pixels -> intensities [B, 28, 28] in [0, 1] (1 on the stroke, fading over one pixel)."""
    b = points.shape[0]
    px = (points * (SIZE - 1)).flatten(1, 2)                                      # [B, S*P, 2]
    far = torch.full_like(px, 1e4)
    px = torch.where(valid.repeat_interleave(POINTS, 1).unsqueeze(-1), px, far)
    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1).view(1, -1, 2).expand(b, -1, -1)            # [B, 784, 2]
    d = torch.cdist(grid, px).amin(-1)                                             # [B, 784]
    return (width.view(-1, 1) + 0.5 - d).clamp(0, 1).view(b, SIZE, SIZE)


def generate_glyphs(seed: int = 0, classes: int = 1200, variants: int = 20, chunk: int = 2000) -> torch.Tensor:
    """The dataset for (seed, classes, variants) -> uint8 [classes, variants, 28, 28]."""
    g = make_generator(seed, "glyphs")
    strokes = torch.randint(1, MAX_STROKES + 1, (classes,), generator=g)
    ctrl = 0.2 + 0.6 * torch.rand(classes, MAX_STROKES, 4, 2, generator=g)      # class shapes
    valid = torch.arange(MAX_STROKES).view(1, -1) < strokes.view(-1, 1)         # [C, S]
    n = classes * variants
    # Per-variant distortions, drawn all at once so the result does not depend on `chunk`.
    jitter = 0.035 * torch.randn(n, MAX_STROKES, 4, 2, generator=g)
    angle = math.radians(12) * (2 * torch.rand(n, generator=g) - 1)
    scale = 0.9 + 0.2 * torch.rand(n, generator=g)
    shift = 0.06 * (2 * torch.rand(n, 1, 2, generator=g) - 1)
    width = 0.6 + 0.6 * torch.rand(n, generator=g)
    noise = torch.randn(n, SIZE, SIZE, generator=g)
    out = torch.empty(n, SIZE, SIZE, dtype=torch.uint8)
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(s + chunk, n))
        cls = idx // variants
        pts = _bezier(ctrl[cls] + jitter[idx])                                      # [b, S, P, 2]
        c, si = torch.cos(angle[idx]), torch.sin(angle[idx])
        rot = torch.stack([torch.stack([c, -si], -1), torch.stack([si, c], -1)], -2)  # [b, 2, 2]
        centred = (pts - 0.5).flatten(1, 2) @ rot.transpose(1, 2) * scale[idx].view(-1, 1, 1)
        pts = (centred + 0.5 + shift[idx]).view_as(pts)
        img = _render(pts, valid[cls], width[idx]) + 0.08 * noise[idx]
        out[idx] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out.view(classes, variants, SIZE, SIZE)


def load_glyphs(seed: int = 0, classes: int = 1200, variants: int = 20) -> torch.Tensor:
    """generate_glyphs, cached on disk (generated once per (seed, classes, variants))."""
    path = cache_root() / "glyphs" / f"glyphs_s{seed}_c{classes}_v{variants}.pt"
    if path.exists():
        try:
            data = torch.load(path, weights_only=True)
            if data.shape == (classes, variants, SIZE, SIZE):
                return data
        except Exception:  # a damaged cache file is regenerated
            pass
    return save_atomic(generate_glyphs(seed, classes, variants), path) and torch.load(path, weights_only=True)

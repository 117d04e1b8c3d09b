"""N-way K-shot image classification task families: generated glyphs and Omniglot.

Both hold images [classes, drawings, 28, 28] (uint8, ink bright) split by class into disjoint
train / val / test sets. A task draws `ways` classes of its split and, per class, `shots`
support and `query` query drawings: xs [N, ways*shots, 1, 28, 28] (float in [0, 1]),
ys [N, ways*shots] labels 0..ways-1 (class-major), xq / yq likewise with `query` per class.

Omniglot is read from a local folder in torchvision's layout (never downloaded at run time):
    DATA_DIR/omniglot-py/images_background/<alphabet>/<character>/<drawing>.png
    DATA_DIR/omniglot-py/images_evaluation/<alphabet>/<character>/<drawing>.png
Its 1623 characters are split 1100 train / 100 val / 423 test (the evaluation alphabets are the
last 659 characters, so the test classes come from them), resized to 28x28; with
env.rotations each class in a task is rotated by a random multiple of 90 degrees (Vinyals et
al.'s augmentation: rotations act as new classes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from metarl.cache import cache_root, save_atomic
from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import FEWSHOT_SPLITS, Batch, FewShotDistribution, FewShotSpec

from metarl.envs.glyphs import load_glyphs


class ImageClassDistribution(FewShotDistribution):
    kind = "classification"

    def __init__(self, images: torch.Tensor, bounds: dict[str, tuple[int, int]], ways: int, shots: int, query: int,
                 eval_query: int, rotations: bool = False, train_ways: int = 0, fixed_labels: bool = False):
        self.images, self.bounds = images, bounds
        self.fixed_labels = fixed_labels
        if fixed_labels and train_ways not in (0, ways):
            raise UserError("env.fixed_labels gives each training class the label of its group of env.ways; "
                            "leave env.train_ways at 0 with it")
        self.ways, self.shots, self.query, self.eval_query = ways, shots, query, eval_query
        self.train_ways = train_ways or ways  # ProtoNets train with more ways than they test with
        self.rotations = rotations
        self.x_shape = (1, images.shape[-2], images.shape[-1])
        drawings = images.shape[1]
        for split, (lo, hi) in bounds.items():
            w = self.train_ways if split == "train" else ways
            if hi - lo < w:
                key = "env.train_ways" if split == "train" and train_ways else "env.ways"
                raise UserError(f"{key}={w} is more than the {hi - lo} classes of the {split} split")
        if shots + max(query, eval_query) > drawings:
            raise UserError(f"env.shots + query = {shots + max(query, eval_query)} is more than the {drawings} "
                            f"drawings per class; lower env.shots or env.query / env.eval_query")

    def sample(self, n: int, generator: torch.Generator, split: str = "train", *, shots: int | None = None,
               query: int | None = None, grid: bool = False) -> Batch:
        if split not in FEWSHOT_SPLITS:
            raise ValueError(f"split must be one of {FEWSHOT_SPLITS}, got {split!r}")
        k, q, dev = shots or self.shots, query or self.query, generator.device
        w = self.train_ways if split == "train" else self.ways
        lo, hi = self.bounds[split]
        if self.fixed_labels and split == "train":  # class c is always label c % w: tasks are not mutually exclusive
            groups = (hi - lo) // w                                     # classes lo + g + w * j, j < groups, get label g
            pick = (torch.rand(n, w, generator=generator, device=dev) * groups).long()
            cls = lo + torch.arange(w, device=dev) + w * pick                                          # [N, W]
        else:
            cls = lo + torch.rand(n, hi - lo, generator=generator, device=dev).argsort(1)[:, :w]       # [N, W]
        draw = torch.rand(n, w, self.images.shape[1], generator=generator, device=dev).argsort(-1)[..., :k + q]
        imgs = self.images[cls.cpu().unsqueeze(-1), draw.cpu()].to(dev, torch.float32) / 255  # [N, W, K+Q, H, W]
        if self.rotations:
            rot = torch.randint(0, 4, (n, w), generator=generator, device=dev)
            for r in (1, 2, 3):
                m = rot == r
                if m.any():
                    imgs[m] = torch.rot90(imgs[m], r, (-2, -1))
        labels = torch.arange(w, device=dev).view(1, w, 1)
        xs, xq = imgs[:, :, :k], imgs[:, :, k:]
        return {"xs": xs.reshape(n, w * k, 1, *imgs.shape[-2:]), "ys": labels.expand(n, w, k).reshape(n, w * k),
                "xq": xq.reshape(n, w * q, 1, *imgs.shape[-2:]), "yq": labels.expand(n, w, q).reshape(n, w * q),
                "classes": cls}


def split_bounds(classes: int, val: int, test: int) -> dict[str, tuple[int, int]]:
    """Contiguous, disjoint class ranges: train first, then val, then test."""
    train = classes - val - test
    if train < 1 or val < 1 or test < 1:
        raise UserError(f"{classes} classes cannot be split into train / {val} val / {test} test classes")
    return {"train": (0, train), "val": (train, train + val), "test": (train + val, classes)}


@dataclass
class GlyphConfig:
    ways: int = option(5, "N: classes per task", ge=2)
    shots: int = option(1, "K: support drawings per class", ge=1)
    query: int = option(15, "query drawings per class during meta-training", ge=1)
    eval_query: int = option(15, "query drawings per class during evaluation", ge=1)
    classes: int = option(1200, "generated glyph classes (70% train, 10% val, 20% test)", ge=10)
    variants: int = option(20, "drawings per class", ge=2)
    train_ways: int = option(0, "classes per meta-training task, 0 = env.ways (ProtoNets train with more, "
                                "e.g. 60 on Omniglot; metric learners only)", ge=0)
    data_seed: int = option(0, "seed of the generated dataset (the same seed gives the same images)", ge=0)
    fixed_labels: bool = option(False, "non-mutually-exclusive training tasks (Yin et al. 2020): each training class "
                                       "always gets the same label (its index mod env.ways), so a learner can "
                                       "memorise labels and ignore the support set; held-out tasks stay shuffled")


def make_glyphs(cfg: GlyphConfig) -> ImageClassDistribution:
    images = load_glyphs(cfg.data_seed, cfg.classes, cfg.variants)
    val = max(1, cfg.classes // 10)
    bounds = split_bounds(cfg.classes, val, max(1, cfg.classes // 5))
    return ImageClassDistribution(images, bounds, cfg.ways, cfg.shots, cfg.query, cfg.eval_query,
                                  train_ways=cfg.train_ways, fixed_labels=cfg.fixed_labels)


@dataclass
class OmniglotConfig:
    data_dir: str = option("", "folder holding omniglot-py/ in torchvision's layout (see metarl list)")
    ways: int = option(5, "N: classes per task", ge=2)
    shots: int = option(1, "K: support drawings per class", ge=1)
    query: int = option(15, "query drawings per class during meta-training", ge=1)
    eval_query: int = option(5, "query drawings per class during evaluation", ge=1)
    rotations: bool = option(True, "rotate each class in a task by a random multiple of 90 degrees")
    train_ways: int = option(0, "classes per meta-training task, 0 = env.ways (ProtoNets paper: 60; metric "
                                "learners only)", ge=0)


OMNIGLOT_HELP = ("put Omniglot there in torchvision's layout, DATA_DIR/omniglot-py/images_background/<alphabet>/"
                 "<character>/*.png and .../images_evaluation/... (unzip images_background.zip and "
                 "images_evaluation.zip from github.com/brendenlake/omniglot); metarl never downloads at run time")


def _omniglot_root(data_dir: str) -> Path:
    if not data_dir:
        raise UserError(f"env omniglot needs --set env.data_dir=DATA_DIR; {OMNIGLOT_HELP}")
    root = Path(data_dir).expanduser()
    for cand in (root / "omniglot-py", root):
        if (cand / "images_background").is_dir() and (cand / "images_evaluation").is_dir():
            return cand
    raise UserError(f"Omniglot not found in {root}: {OMNIGLOT_HELP}")


def read_omniglot(data_dir: str, size: int = 28) -> torch.Tensor:
    """All characters, background alphabets first -> uint8 [1623, 20, size, size], ink bright;
    cached under $METARL_CACHE/omniglot keyed by the folder's path."""
    root = _omniglot_root(data_dir)
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    cache = cache_root() / "omniglot" / f"omniglot_{key}_{size}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    from PIL import Image, UnidentifiedImageError
    chars = [c for part in ("images_background", "images_evaluation")
             for a in sorted((root / part).iterdir()) if a.is_dir() for c in sorted(a.iterdir()) if c.is_dir()]
    if not chars:
        raise UserError(f"no character folders in {root}: {OMNIGLOT_HELP}")
    out = []
    for c in chars:
        files = sorted(c.glob("*.png"))
        if len(files) < 2:
            raise UserError(f"{c} holds {len(files)} .png drawings (Omniglot has 20 per character): {OMNIGLOT_HELP}")
        imgs = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("L").resize((size, size), Image.LANCZOS)
                    imgs.append(255 - torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise UserError(f"cannot read image {f} ({type(e).__name__}); replace the file or re-extract "
                                f"Omniglot") from None
        out.append(torch.stack(imgs))
    drawings = min(len(x) for x in out)
    data = torch.stack([x[:drawings] for x in out])
    save_atomic(data, cache)
    return data


def make_omniglot(cfg: OmniglotConfig) -> ImageClassDistribution:
    images = read_omniglot(cfg.data_dir)
    n = images.shape[0]
    test = 423 if n == 1623 else max(1, n // 4)
    bounds = split_bounds(n, 100 if n == 1623 else max(1, n // 10), test)
    return ImageClassDistribution(images, bounds, cfg.ways, cfg.shots, cfg.query, cfg.eval_query, cfg.rotations,
                                  cfg.train_ways)


GLYPHS = FewShotSpec("glyphs", GlyphConfig, ("classification",), make_glyphs)
OMNIGLOT = FewShotSpec("omniglot", OmniglotConfig, ("classification",), make_omniglot)

"""Networks of the few-shot learners as pure functions of a parameter dict.

`forward_with(params, x)` takes either the module's own parameters or per-task parameters with a
leading task dimension (the output of the inner loop), so one definition serves the meta-model,
the vmapped inner loop and the vectorized one. `forward(x)` uses the module's parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.functional import Params, params_of


class FunctionalMLP(nn.Module):
    """MLP with ReLU hidden layers: sizes [d_in, h, ..., d_out]; parameters w0, b0, w1, b1, ...
    (nn.Linear's initialisation). forward_with(params, x): x [..., Q, d_in] with params either
    shared (w [out, in]) or per task (w [N, out, in], x [N, Q, d_in]) -> [..., Q, d_out]."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.depth = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b)
            self.register_parameter(f"w{i}", lin.weight)
            self.register_parameter(f"b{i}", lin.bias)

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = x @ params[f"w{i}"].transpose(-1, -2) + params[f"b{i}"].unsqueeze(-2)
            if i < self.depth - 1:
                x = torch.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(params_of(self), x)


def _batch_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch norm with the statistics of one task's batch: h [..., B, C, H, W], normalised over
    (B, H, W) per leading index and channel (no running statistics, as MAML's reference code)."""
    mean = h.mean((-4, -2, -1), keepdim=True)
    var = h.var((-4, -2, -1), keepdim=True, unbiased=False)
    return (h - mean) / torch.sqrt(var + eps) * w.view(-1, 1, 1) + b.view(-1, 1, 1)


class Conv4(nn.Module):
    """The 4-block CNN of MAML / ProtoNets / Matching Networks for 28x28 images: each block
    3x3 conv (`hidden` channels), batch norm, ReLU, 2x2 max-pool (28 -> 14 -> 7 -> 3 -> 1), so
    the embedding has `hidden` features; with `out` > 0 a linear head gives `out` logits.
    forward_with(params, x [..., B, C, H, W]) -> [..., B, hidden or out]; batch statistics are
    per leading index (per task)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, out: int = 0, blocks: int = 4):
        super().__init__()
        self.blocks, self.out = blocks, out
        c = in_channels
        for i in range(blocks):
            conv = nn.Conv2d(c, hidden, 3, padding=1)
            self.register_parameter(f"conv{i}_w", conv.weight)
            self.register_parameter(f"conv{i}_b", conv.bias)
            self.register_parameter(f"bn{i}_w", nn.Parameter(torch.ones(hidden)))
            self.register_parameter(f"bn{i}_b", nn.Parameter(torch.zeros(hidden)))
            c = hidden
        self.features = hidden
        if out:
            lin = nn.Linear(hidden, out)
            self.register_parameter("head_w", lin.weight)
            self.register_parameter("head_b", lin.bias)

    def embed_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        h = x
        for i in range(self.blocks):
            flat = h.reshape(-1, *h.shape[-3:])
            flat = F.conv2d(flat, params[f"conv{i}_w"], params[f"conv{i}_b"], padding=1)
            h = flat.view(*lead, *flat.shape[-3:])
            h = torch.relu(_batch_norm(h, params[f"bn{i}_w"], params[f"bn{i}_b"]))
            flat = F.max_pool2d(h.reshape(-1, *h.shape[-3:]), 2)
            h = flat.view(*lead, *flat.shape[-3:])
        return h.flatten(-3)

    def head_with(self, params: Params, feats: torch.Tensor) -> torch.Tensor:
        return feats @ params["head_w"].transpose(-1, -2) + params["head_b"].unsqueeze(-2)

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        f = self.embed_with(params, x)
        return self.head_with(params, f) if self.out else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(params_of(self), x)


def make_network(dist, hidden: int, layers: int, channels: int, head: bool = True) -> nn.Module:
    """The papers' networks: an MLP of `layers` x `hidden` ReLU units for regression, Conv4 with
    `channels` channels for image classification (a `ways`-logit head when `head`)."""
    if dist.kind == "regression":
        return FunctionalMLP([dist.x_shape[0]] + [hidden] * layers + [dist.y_dim])
    return Conv4(dist.x_shape[0], channels, dist.ways if head else 0)

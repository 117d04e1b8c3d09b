"""Networks of the few-shot learners as pure functions of a parameter dict.

`forward_with(params, x)` takes either the module's own parameters or per-task parameters with a
leading task dimension (the output of the inner loop), so one definition serves the meta-model,
the vmapped inner loop and the vectorized one. `forward(x)` uses the module's parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.errors import UserError
from metarl.functional import Params, params_of


class FunctionalMLP(nn.Module):
    """MLP with ReLU hidden layers: sizes [d_in, h, ..., d_out]; parameters w0, b0, w1, b1, ...
    forward_with(params, x): x [..., Q, d_in] with params either shared (w [out, in]) or per task
    (w [N, out, in], x [N, Q, d_in]) -> [..., Q, d_out].

    init "reference": weights ~ truncated normal (std 0.01, cut at 2 std), zero biases, as MAML's
    reference code; "torch": nn.Linear's default. On sinusoid the reference init keeps MAML's
    multi-step adaptation stable (with torch's, 2 of 10,000 test tasks blew up after 10 steps)."""

    def __init__(self, sizes: list[int], init: str = "reference"):
        super().__init__()
        self.depth = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b)
            if init == "reference":
                nn.init.trunc_normal_(lin.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(lin.bias)
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


def per_task(p: torch.Tensor, n: int, dims: int) -> torch.Tensor:
    """A parameter with `dims` dims of its own, given shared or per task [n, ...] -> [n * first, ...]."""
    if p.dim() == dims:
        p = p.unsqueeze(0).expand(n, *p.shape)
    return p.reshape(n * p.shape[1], *p.shape[2:])


def fold_tasks(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Images [N, B, C, H, W] (or [B, C, H, W], one task) -> the task-folded layout [B, N*C, H, W]
    that grouped convolutions (groups=N) apply per-task weights in, and N."""
    x = x.unsqueeze(0) if x.dim() == 4 else x
    n, bs = x.shape[:2]
    return x.transpose(0, 1).reshape(bs, n * x.shape[2], *x.shape[-2:]), n


def unfold_features(h: torch.Tensor, n: int, single: bool) -> torch.Tensor:
    """Folded features [B, N*F, 1, 1] -> [N, B, F] ([B, F] for one task, as fold_tasks got)."""
    f = h.view(h.shape[0], n, -1).transpose(0, 1)
    return f[0] if single else f


def grouped_conv(h: torch.Tensor, params: Params, name: str, n: int, **kw) -> torch.Tensor:
    """Conv `name`_w / `name`_b (shared or per task) on the folded layout, one group per task."""
    return F.conv2d(h, per_task(params[f"{name}_w"], n, 4), per_task(params[f"{name}_b"], n, 1), groups=n, **kw)


def bn_relu_pool(h: torch.Tensor, params: Params, i: int, n: int) -> torch.Tensor:
    """Block i's end in the task-folded layout [B, N*C, H, W]: batch norm with batch statistics
    (per task and channel, bn{i}_w / bn{i}_b shared or per task), ReLU, 2x2 max-pool."""
    h = F.batch_norm(h, None, None, per_task(params[f"bn{i}_w"], n, 1), per_task(params[f"bn{i}_b"], n, 1),
                     training=True)
    return F.max_pool2d(torch.relu(h), 2)


class Conv4(nn.Module):
    """The 4-block CNN of MAML / ProtoNets / Matching Networks for 28x28 images: each block
    3x3 conv (`hidden` channels), batch norm, ReLU, 2x2 max-pool (28 -> 14 -> 7 -> 3 -> 1), so
    the embedding has `hidden` features; with `out` > 0 a linear head gives `out` logits.

    forward_with(params, x): x [B, C, H, W] or [N, B, C, H, W] (N tasks) -> [(N,) B, hidden or out].
    Params may be shared or per task ([N, ...], from the inner loop). The N tasks are folded into
    the channels, [B, N*C, H, W], and convolved with groups=N, so per-task weights cost one conv
    call and batch norm (batch statistics, no running averages, as MAML's reference code) is
    computed per task and channel by the fused kernel."""

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
        h, n = fold_tasks(x)                                                       # [B, N*C, H, W]
        for i in range(self.blocks):
            h = bn_relu_pool(grouped_conv(h, params, f"conv{i}", n, padding=1), params, i, n)
        return unfold_features(h, n, single=x.dim() == 4)                          # [(N,) B, hidden]

    def head_with(self, params: Params, feats: torch.Tensor) -> torch.Tensor:
        return feats @ params["head_w"].transpose(-1, -2) + params["head_b"].unsqueeze(-2)

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        f = self.embed_with(params, x)
        return self.head_with(params, f) if self.out else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(params_of(self), x)


def make_network(dist, hidden: int, layers: int, channels: int, head: bool = True,
                 init: str = "reference", search: str = "", arch: str = "") -> nn.Module:
    """The papers' networks: an MLP of `layers` x `hidden` ReLU units for regression (`init`: see
    FunctionalMLP), Conv4 with `channels` channels for image classification (a `ways`-logit head
    when `head`); with `search` or `arch`, metarl.agents.arch_search's CellConv4 instead."""
    if search or arch:
        from metarl.agents.arch_search import CellConv4, parse_arch
        if dist.kind != "classification" or not head:
            raise UserError("agent.search / agent.arch choose the cell of Conv4's blocks: they apply to image "
                            "classification (glyphs, omniglot) with maml, meta-sgd or anil")
        if search and arch:
            raise UserError("agent.search searches the cell and agent.arch fixes one: set one of them")
        return CellConv4(dist.x_shape[0], channels, dist.ways, parse_arch(arch) if arch else None)
    if dist.kind == "regression":
        return FunctionalMLP([dist.x_shape[0]] + [hidden] * layers + [dist.y_dim], init)
    return Conv4(dist.x_shape[0], channels, dist.ways if head else 0)


def mlp(d_in: int, hidden: int, layers: int, d_out: int) -> nn.Sequential:
    """`layers` ReLU hidden layers of `hidden` units, then a linear output: the set encoders and
    generators of CNP, the hypernetwork and LEO."""
    mods, d = [], d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class FlatParams:
    """A parameter dict's layout, to generate its weights as one flat vector: split a flat
    [..., P] into {name: [..., *shape]}, join a dict with `lead` leading dims back into [..., P]."""

    def __init__(self, shapes: dict[str, torch.Size]):
        self.shapes = dict(shapes)
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        self.total = sum(self.sizes)

    def split(self, flat: torch.Tensor) -> Params:
        lead = flat.shape[:-1]
        return {k: t.reshape(*lead, *s) for (k, s), t in zip(self.shapes.items(), flat.split(self.sizes, -1))}

    def join(self, params: Params, lead: int = 1) -> torch.Tensor:
        return torch.cat([params[k].reshape(*params[k].shape[:lead], -1) for k in self.shapes], -1)


def generated_mlp(dist, hidden: int, layers: int) -> tuple[FunctionalMLP, FlatParams]:
    """A regression MLP whose weights a generator outputs (hypernet, LEO), with nn.Linear's init
    and frozen (only its shapes, init and forward_with are used), and its flat layout."""
    net = FunctionalMLP([dist.x_shape[0]] + [hidden] * layers + [dist.y_dim], init="torch").requires_grad_(False)
    return net, FlatParams({k: v.shape for k, v in params_of(net).items()})


def bias_hyperinit(layer: nn.Linear, base: torch.Tensor, scale: float = 0.01) -> None:
    """bias-HyperInit (Beck et al. 2023) of a generator's output layer: its weights `scale` times
    their default init, its bias the flat weights `base` [out] of a standard init, so the
    generated network starts as that network, modulated a little by the generator's input."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        layer.bias.copy_(base)

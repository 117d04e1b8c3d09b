"""A differentiable cell search (DARTS, Liu et al. 2019) inside the few-shot loop, as Auto-Meta /
T-NAS search it: the architecture weights are meta-parameters, updated by the meta-gradient
through the inner loop (the inner loop adapts only the network weights).

CellConv4 is Conv4 (metarl.agents.fewshot_nets) with blocks 1-3 made of a searched operation
(block 0 stays a 3x3 conv from the image's channels). Each searched block is
    h = sum_o softmax(alpha_b)_o BN(op_o(h))  (search)   or   h = op_b(h)   (a chosen cell)
then batch norm, ReLU and 2x2 max-pool as in Conv4 (BN: affine-free batch norm, so operations of
different scales mix on one footing, as in DARTS; skip is left as it is). Operations (C -> C channels, same size):
conv 3x3, conv 5x5, dilated conv 3x3 (dilation 2), max pool 3x3, average pool 3x3, skip, none.

The cell is chosen on the validation classes: the candidates are the `top` cells of highest
joint weight prod_b softmax(alpha_b) (none left out), each at the widest channel count whose
weights fit the budget (agent.search_weights: by default Conv4's, so that the searched cell and
the hand-designed one compare like for like), trained briefly from scratch on the training
classes (first-order, agent.search_proxy_iterations) and scored on validation tasks; the best
is the chosen cell (agent.arch, at agent.channels), written by `metarl eval` of a search run as
eval_arch.txt and eval_arch.png. The supernet's own weights do not rank the cells: with shared
weights the weight-free operations (pools, skip) score highest, and a cell of them trains from
scratch far below Conv4.
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.errors import UserError
from metarl.functional import Params

from metarl.agents.fewshot_nets import Conv4, bn_relu_pool, fold_tasks, grouped_conv, unfold_features

OPS = ("conv3x3", "conv5x5", "dil_conv3x3", "max_pool3x3", "avg_pool3x3", "skip", "none")
CONV = {"conv3x3": (3, 1), "conv5x5": (5, 1), "dil_conv3x3": (3, 2)}  # kernel, dilation
SEARCHED = 3  # blocks 1-3


def parse_arch(spec: str) -> list[str]:
    """agent.arch "op1,op2,op3" -> the three blocks' operations; bad input is a UserError."""
    ops = [o.strip() for o in spec.split(",") if o.strip()]
    if len(ops) != SEARCHED or any(o not in OPS or o == "none" for o in ops):
        raise UserError(f"agent.arch={spec!r}: three comma-separated operations for blocks 1-3, each one of "
                        f"{', '.join(o for o in OPS if o != 'none')}")
    return ops


class CellConv4(nn.Module):
    """forward_with(params, x) as Conv4's: x [B, C, H, W] or [N, B, C, H, W], params shared or per
    task (leading N); the architecture weights 'arch_alpha' [3, len(OPS)] are always shared.
    arch None: the search network (every operation, mixed); else one operation per block."""

    def __init__(self, in_channels: int, hidden: int, out: int, arch: list[str] | None = None):
        super().__init__()
        self.arch, self.out, self.features = arch, out, hidden
        conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.register_parameter("conv0_w", conv.weight)
        self.register_parameter("conv0_b", conv.bias)
        for b in range(SEARCHED + 1):
            self.register_parameter(f"bn{b}_w", nn.Parameter(torch.ones(hidden)))
            self.register_parameter(f"bn{b}_b", nn.Parameter(torch.zeros(hidden)))
        for b in range(1, SEARCHED + 1):
            for op in (OPS if arch is None else [arch[b - 1]]):
                if op in CONV:
                    c = nn.Conv2d(hidden, hidden, CONV[op][0], padding=CONV[op][1] * (CONV[op][0] // 2))
                    self.register_parameter(f"c{b}_{op}_w", c.weight)
                    self.register_parameter(f"c{b}_{op}_b", c.bias)
        if arch is None:
            self.arch_alpha = nn.Parameter(1e-3 * torch.randn(SEARCHED, len(OPS)))
        lin = nn.Linear(hidden, out)
        self.register_parameter("head_w", lin.weight)
        self.register_parameter("head_b", lin.bias)

    def _op(self, op: str, b: int, params: Params, h: torch.Tensor, n: int) -> torch.Tensor:
        if op in CONV:
            k, d = CONV[op]
            return grouped_conv(h, params, f"c{b}_{op}", n, padding=d * (k // 2), dilation=d)
        if op == "max_pool3x3":
            return F.max_pool2d(h, 3, 1, 1)
        if op == "avg_pool3x3":
            return F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
        return h if op == "skip" else torch.zeros_like(h)

    def embed_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        h, n = fold_tasks(x)                                                       # [B, N*C, H, W]
        h = grouped_conv(h, params, "conv0", n, padding=1)
        for b in range(SEARCHED + 1):
            if b > 0:
                if self.arch is None:  # each op normalised (DARTS' ops end in an affine-free batch norm)
                    w = torch.softmax(params["arch_alpha"][b - 1], -1)
                    h = sum(w[i] * (o if op == "skip" else F.batch_norm(o, None, None, training=True))
                            for i, op in enumerate(OPS) if op != "none" for o in [self._op(op, b, params, h, n)])
                else:
                    h = self._op(self.arch[b - 1], b, params, h, n)
            h = bn_relu_pool(h, params, b, n)
        return unfold_features(h, n, single=x.dim() == 4)                          # [(N,) B, hidden]

    head_with = Conv4.head_with
    forward_with = Conv4.forward_with   # always with its head (out > 0)
    forward = Conv4.forward

    def chosen(self) -> list[str]:
        """The cell of a search network: each block's most weighted operation other than none."""
        a = self.arch_alpha.detach().clone()
        a[:, OPS.index("none")] = -float("inf")
        return [OPS[i] for i in a.argmax(-1).tolist()]


def candidates(model: CellConv4, top: int = 4) -> list[list[str]]:
    """The `top` cells of highest joint weight prod_b softmax(alpha_b) over operations other than
    none, best first."""
    a = model.arch_alpha.detach().clone()
    a[:, OPS.index("none")] = -float("inf")
    logp = torch.log_softmax(a, -1).tolist()                                           # [blocks][ops]
    cells = sorted(itertools.product(range(len(OPS)), repeat=SEARCHED),
                   key=lambda c: -sum(logp[b][o] for b, o in enumerate(c)))
    return [[OPS[o] for o in c] for c in cells[:top]]


def with_cell(learner, cell: list[str]):
    """A copy of a search learner whose network is the discrete `cell`, with the supernet's
    weights for the operations it keeps (one-shot weight sharing)."""
    sup = learner.model
    net = CellConv4(sup.conv0_w.shape[1], sup.features, sup.out, cell).to(sup.conv0_w.device)
    net.load_state_dict({k: v for k, v in sup.state_dict().items() if k in net.state_dict()})
    other = copy.copy(learner)
    other._modules = dict(learner._modules, model=net)
    other.fixed = learner.fixed - {"arch_alpha"}
    return other


def cell_weights(model: CellConv4, cell: list[str], channels: int | None = None) -> int:
    """Weights of the discrete network `cell` in the search network's shape (at `channels`)."""
    return weight_count(CellConv4(model.conv0_w.shape[1], channels or model.features, model.out, cell))


def width_within(model: CellConv4, cell: list[str], max_weights: int | None, most: int = 256) -> int:
    """The widest channel count (at most `most`) at which `cell` has at most max_weights weights;
    the search network's width where there is no budget."""
    if max_weights is None:
        return model.features
    width = 0
    while width < most and cell_weights(model, cell, width + 1) <= max_weights:  # weights grow with the width
        width += 1
    if not width:
        raise UserError(f"no width of cell {','.join(cell)} fits {max_weights:,} weights")
    return width


def proxy_accuracy(learner, dist, cell: list[str], channels: int, iterations: int, seed: int, device, tasks: int,
                   steps: int) -> float:
    """`cell` at `channels`, meta-trained from scratch for `iterations` first-order iterations of
    the search's learner (MAML / Meta-SGD / ANIL) on the training classes: its mean accuracy after
    `steps` inner steps on `tasks` validation tasks."""
    from dataclasses import replace
    from metarl.fewshot.core import task_generator
    from metarl.fewshot.evaluation import evaluate_fewshot
    cfg = replace(learner.cfg, search="", arch=",".join(cell), channels=channels, first_order=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = type(learner)(dist, cfg, meta_sgd=learner.step_sizes is not None, anil=learner.anil).to(device)
    opt = torch.optim.Adam(net.parameters(), cfg.meta_lr)
    gen = task_generator(seed, "train", device)
    for _ in range(iterations):
        net.meta_update(dist.sample(cfg.meta_batch, gen, "train"), opt)
    acc = evaluate_fewshot(net, dist, tasks, seed, steps, device, split="val")
    return acc[max(acc)].mean().item()


def choose_on_validation(learner, dist, seed: int, device, tasks: int, steps: int, top: int = 4,
                         max_weights: int | None = None, proxy_iterations: int = 200) -> tuple[dict, dict]:
    """The search's cell chosen on validation classes: each candidate cell (candidates()) at its
    widest width within max_weights (None: the search's width), meta-trained from scratch briefly
    (proxy_accuracy) and scored on `tasks` validation tasks -> ({cell: accuracy}, best first;
    {cell: channels})."""
    widths = {",".join(c): width_within(learner.model, c, max_weights) for c in candidates(learner.model, top)}
    scores = {cell: proxy_accuracy(learner, dist, cell.split(","), w, proxy_iterations, seed, device, tasks, steps)
              for cell, w in widths.items()}
    return dict(sorted(scores.items(), key=lambda kv: -kv[1])), widths


def supernet_accuracy(learner, dist, cells: list[str], seed: int, device, tasks: int, steps: int) -> dict:
    """Each cell with the supernet's weights (one-shot weight sharing), scored on validation tasks:
    reported beside the choice, to show how far the shared weights' ranking is from it."""
    from metarl.fewshot.evaluation import evaluate_fewshot
    scores = {}
    for cell in cells:
        acc = evaluate_fewshot(with_cell(learner, cell.split(",")), dist, tasks, seed, steps, device, split="val")
        scores[cell] = acc[max(acc)].mean().item()
    return scores


def weight_count(model: nn.Module) -> int:
    """Parameters of the network itself (the architecture weights left out)."""
    return sum(p.numel() for k, p in model.named_parameters() if k != "arch_alpha")


def arch_report(model: CellConv4, validation: dict, widths: dict, supernet: dict, out_txt, out_png,
                baseline_params: int, budget: int | None = None) -> dict:
    """The search's outcome: softmax(alpha) per block, the candidates' validation accuracies
    (choose_on_validation: each at its width, trained briefly from scratch; beside them the
    supernet's scores), the chosen cell (the best) with its width and weights against Conv4's;
    written as text and as a heat map."""
    w = torch.softmax(model.arch_alpha.detach().cpu(), -1)
    cell = next(iter(validation)).split(",")
    channels = widths[",".join(cell)]
    info = {"chosen": ",".join(cell), "channels": channels, "argmax": ",".join(model.chosen()),
            "validation_accuracy": validation, "widths": widths, "supernet_validation_accuracy": supernet,
            "alpha_softmax": {f"block {b + 1}": dict(zip(OPS, map(float, w[b]))) for b in range(SEARCHED)},
            "chosen_params": cell_weights(model, cell, channels), "conv4_params": baseline_params,
            "weight_budget": budget}
    lines = [f"chosen cell (agent.arch): {info['chosen']} at {channels} channels (agent.channels)  (best on "
             f"validation classes; argmax of alpha: {info['argmax']})",
             f"weights: {info['chosen_params']:,} (Conv4: {baseline_params:,}"
             + (f"; budget {budget:,})" if budget is not None else ")"), "",
             "validation accuracy of the candidates: trained briefly from scratch at their width; with the "
             "supernet's weights"]
    lines += [f"  {c:<40} {widths[c]:>3} ch  {100 * a:5.1f}%  {100 * supernet[c]:5.1f}%" for c, a in validation.items()]
    lines += ["", "block  " + "  ".join(f"{o:>11}" for o in OPS)]
    lines += [f"{b + 1:>5}  " + "  ".join(f"{v:11.3f}" for v in w[b].tolist()) for b in range(SEARCHED)]
    out_txt.write_text("\n".join(lines) + "\n")
    from metarl.eval.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=max(w.max().item(), 1e-6))
    ax.set_xticks(range(len(OPS)), OPS, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(SEARCHED), [f"block {b + 1}" for b in range(SEARCHED)], fontsize=8)
    for b in range(SEARCHED):
        for i in range(len(OPS)):
            ax.text(i, b, f"{w[b, i]:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if w[b, i] < w.max() / 2 else "k")
    ax.set_title(f"softmax(alpha); chosen: {info['chosen']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return info

"""Meta-objective terms of the MAML family (agent.meta_loss), added to the query loss after
adaptation ("maml") with a weight lambda each:

- l2:       ||theta||^2 over the adapted meta-parameters theta;
- proximal: mean_i ||phi_i - theta||^2, the adapted parameters' distance from the init (iMAML's term);
- aux-maml: the unadapted theta's loss on every task's support and query data (a multi-task term,
            between pretraining and MAML);
- rg:       rapid generalisation, L_inter: how well what was learned on task i carries to the
            tasks most like it. Similarity s_ij is the cosine of the two tasks' adaptation
            directions (phi_i - theta, so it depends on the support sets only), kept for the
            agent.rg_neighbours most similar tasks j != i and softmax-normalised at temperature
            agent.rg_temperature; the weights are constants (no gradient). agent.rg_form:
              cross: sum_j s_ij * loss of phi_i on task j's query set,
              param: sum_j s_ij * ||phi_i - phi_j||^2 (similar tasks adapt to nearby weights);
- mr-maml:  MR-MAML(W) (Yin et al. 2020, "Meta-Learning without Memorization"): the first
            agent.mr_layers layers are an encoder the inner loop does not adapt, with weights drawn
            from q = N(mu, sigma^2) per meta-batch (mu at evaluation), and the term is
            KL(q || N(0, I)) summed over those weights: an information bottleneck on what the
            meta-weights can store, so the learner must read the support set.

agent.meta_loss is comma-separated `term` or `term:lambda`; a term without its own lambda takes
agent.meta_loss_weight. theta is what every task's adaptation departs from: the MAML family's init
(ANIL: its head), the hypernetwork's base network (its generator's output bias); phi_i are the
task's adapted (generated) weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import Batch, task_loss
from metarl.functional import Params
from metarl.seeding import draw_from_state, stream_state

META_TERMS = ("maml", "l2", "proximal", "aux-maml", "rg", "mr-maml")


@dataclass
class ObjectiveOptions:
    """The meta-objective's options, for every learner whose meta-loss takes the terms."""
    meta_loss: str = option("maml", "the meta-objective: maml (query loss after adaptation) plus any of, comma-"
                                    "separated, each as term or term:lambda: l2 (||theta||^2), proximal (mean "
                                    "||phi_i - theta||^2, iMAML's term), aux-maml (the unadapted theta's loss on each "
                                    "task: a multi-task term), rg (rapid generalisation: similarity-weighted inter-"
                                    "task loss, see rg_form), mr-maml (MAML family: KL of a stochastic, unadapted "
                                    "encoder to N(0, I), Yin et al. 2020); each logged on its own "
                                    "(agents/meta_objectives.py)")
    meta_loss_weight: float = option(0.1, "lambda of every meta_loss term beside maml that has none of its own", ge=0.0)
    rg_form: str = option("cross", "rg's inter-task term: cross = phi_i's loss on similar tasks' query sets, param = "
                                   "distance between similar tasks' adapted weights", choices=("cross", "param"))
    rg_neighbours: int = option(4, "rg: the most similar tasks of the meta-batch each task is compared with", ge=1)
    rg_temperature: float = option(0.1, "rg: softmax temperature of the cosine similarities", gt=0.0)


def parse_meta_loss(spec: str, default_weight: float) -> dict[str, float]:
    """agent.meta_loss -> {term: lambda}, 'maml' first with weight 1; bad input is a UserError."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, w = (s.strip() for s in part.partition(":"))
        if name not in META_TERMS:
            raise UserError(f"agent.meta_loss={spec!r}: terms are {', '.join(META_TERMS)}, comma-separated, with maml "
                            f"among them (unknown: {name})")
        if name == "maml" and w:
            raise UserError(f"agent.meta_loss={spec!r}: maml is the objective itself (weight 1); give the other "
                            f"terms their lambdas")
        try:
            weight = float(w) if w else default_weight
        except ValueError:
            raise UserError(f"agent.meta_loss={spec!r}: {part!r} needs a number after ':'") from None
        if not weight >= 0 or name in weights:
            raise UserError(f"agent.meta_loss={spec!r}: {part!r} " +
                            ("appears twice" if name in weights else "needs a weight >= 0"))
        weights[name] = weight
    if "maml" not in weights:
        raise UserError(f"agent.meta_loss={spec!r}: terms are {', '.join(META_TERMS)}, comma-separated, with maml "
                        f"among them")
    return {"maml": 1.0, **{k: v for k, v in weights.items() if k != "maml"}}


def unadapted(theta: Params, n: int) -> Params:
    """theta as the state of n tasks: {name: [n, ...]} views, no copy."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in theta.items()}


def objective_terms(weights: dict[str, float], cfg: ObjectiveOptions, kind: str, phi: Params, theta: Params,
                    batch: Batch, predict: Callable[[Params, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The scalar value of every term of `weights` but maml and mr-maml (the learner's own).
    phi {name: [N, ...]}: the tasks' adapted weights; theta {name: [...]}: what they depart from;
    predict(params of N tasks, x [N, M, ...]) -> outputs [N, M, ...]."""
    xs, ys, xq, yq = batch["xs"], batch["ys"], batch["xq"], batch["yq"]
    terms = {}
    for t in weights:
        if t == "l2":
            terms[t] = sum((p ** 2).sum() for p in theta.values())
        elif t == "proximal":
            terms[t] = sum(((phi[k] - p) ** 2).flatten(1).sum(1) for k, p in theta.items()).mean()
        elif t == "aux-maml":  # theta's own loss on the task's data, no adaptation
            x, y = torch.cat([xs, xq], 1), torch.cat([ys, yq], 1)
            terms[t] = task_loss(kind, predict(unadapted(theta, x.shape[0]), x), y).mean()
        elif t == "rg":
            idx, w = task_neighbours(phi, theta, cfg.rg_neighbours, cfg.rg_temperature)
            terms[t] = rg_term(cfg.rg_form, phi, idx, w, lambda p, j: task_loss(kind, predict(p, xq[j]), yq[j]))
        elif t not in ("maml", "mr-maml"):  # a term META_TERMS accepts must have its branch here
            raise NotImplementedError(f"meta_loss term {t!r} has no implementation in objective_terms")
    return terms


def weighted_objective(weights: dict[str, float], terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The meta-loss sum_t lambda_t * term_t and its log: "loss" is the maml term, "loss_TERM" each other.
    Every weighted term must be computed: a learner that does not compute one (mr-maml, which
    objective_terms leaves to the learner) refuses it in its constructor."""
    missing = [k for k in weights if k not in terms]
    if missing:
        raise NotImplementedError(f"meta_loss terms {missing} were not computed; the learner must compute or "
                                  f"refuse them")
    loss = sum(weights[k] * v for k, v in terms.items())
    return loss, {"loss": terms["maml"].item(), **{f"loss_{k}": v.item() for k, v in terms.items() if k != "maml"}}


def task_neighbours(phi: Params, theta: Params, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The k tasks most similar to each task by the cosine of adaptation directions phi_i - theta:
    indices [N, k] and softmax weights [N, k] over them (constants)."""
    with torch.no_grad():
        d = torch.cat([(phi[n] - p).flatten(1) for n, p in theta.items()], 1)        # [N, P]
        n = d.shape[0]
        if n < 2:
            raise UserError("agent.meta_loss rg compares the tasks of a meta-batch: set agent.meta_batch >= 2")
        cos = F.normalize(d, dim=1) @ F.normalize(d, dim=1).T                        # [N, N]
        cos.fill_diagonal_(-float("inf"))
        top, idx = cos.topk(min(k, n - 1), dim=1)
        return idx, torch.softmax(top / temperature, dim=1)


def rg_term(form: str, phi: Params, idx: torch.Tensor, w: torch.Tensor, query_loss) -> torch.Tensor:
    """L_inter averaged over tasks; query_loss(phi, j) -> per-task loss [N] of phi_i on the
    query sets of tasks j [N] (form cross)."""
    if form == "param":
        dist = sum(((v.unsqueeze(1) - v[idx]) ** 2).flatten(2).sum(2) for v in phi.values())      # [N, k]
        return (w * dist).sum(1).mean()
    losses = torch.stack([query_loss(phi, idx[:, r]) for r in range(idx.shape[1])], 1)         # [N, k]
    return (w * losses).sum(1).mean()


def encoder_keys(model: nn.Module, layers: int) -> tuple[list[str], list[str]]:
    """MR-MAML's encoder in a network of metarl.agents.fewshot_nets: (stochastic weight names,
    deterministic ones). layers = 0: all but the last block and the head of Conv4, the first layer
    of the MLP. Conv4's batch-norm scales of encoder blocks stay deterministic and unadapted."""
    conv = hasattr(model, "blocks")
    depth = model.blocks if conv else model.depth
    layers = layers or (depth - 1 if conv else 1)
    if not 1 <= layers <= (depth if conv else depth - 1):
        raise UserError(f"agent.mr_layers={layers}: the network has {depth} {'blocks' if conv else 'layers'}; "
                        f"the encoder must leave at least one layer to adapt")
    if conv:
        return ([f"conv{i}_{s}" for i in range(layers) for s in "wb"],
                [f"bn{i}_{s}" for i in range(layers) for s in "wb"])
    return [f"{s}{i}" for i in range(layers) for s in "wb"], []


class StochasticEncoder(nn.Module):
    """q(w) = N(mu, softplus(rho)^2) over the encoder weights (mu: the network's own parameters;
    sigma starts at sigma_init, near 0 as in the paper's code). Draws come from a stream kept in
    the state dict, so a resumed run draws the same."""

    def __init__(self, params: Params, keys: list[str], sigma_init: float = 1e-4):
        super().__init__()
        self.keys = keys
        rho_init = math.log(math.expm1(sigma_init))  # softplus^-1
        self.rho = nn.ParameterDict({k: nn.Parameter(torch.full_like(params[k], rho_init)) for k in keys})
        self.register_buffer("noise_rng", stream_state())

    def sample(self, params: Params) -> Params:
        eps = draw_from_state(self.noise_rng, lambda g: [torch.randn(params[k].shape, generator=g) for k in self.keys])
        return {k: params[k] + F.softplus(self.rho[k]) * e.to(params[k].device) for k, e in zip(self.keys, eps)}

    def kl(self, params: Params) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) summed over every encoder weight."""
        total = 0.0
        for k in self.keys:
            var = F.softplus(self.rho[k]) ** 2
            total = total + 0.5 * (var + params[k] ** 2 - 1 - torch.log(var)).sum()
        return total

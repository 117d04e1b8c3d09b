"""Hypernetworks for few-shot learning: a set encoder maps a task's support set to the weights
of the task's network, phi = g(mean_i h(support_i)), with no gradient step (Ha et al. 2017's
hypernetworks in the few-shot form of Qiao et al. 2018 and HyperMAML).

- Regression: phi is every weight of the target MLP (the MAML paper's 2 x 40 ReLU net); h reads
  [x_i, y_i].
- Classification: a meta-learned Conv4 embeds the images and phi is the linear head, one row
  [w_c, b_c] per class generated from that class's mean support embedding, so relabelling the
  classes permutes the rows.

agent.mode:
- "end-to-end": h and g are trained through the generated network's loss on the query set,
  plus agent.meta_loss's terms (agents/meta_objectives.py; theta is the base network, the
  generator's output bias; mr-maml is the MAML family's only).
- "two-stage" (regression): each training task's phi*_i is first fit by `fit_steps` of
  full-batch Adam on the task's support and query points, from one shared init
  (`target_init = "shared"`) or an independent draw per task ("independent"); then h and g
  regress onto phi*_i (mean squared error in parameter space). No gradient passes through the
  target network, but a target is one of many equivalent weight vectors (hidden units can be
  permuted), and independent inits make the targets of similar tasks far apart.

The output layer of g starts with weights near 0 and its bias at a standard init of the target
network (Beck et al. 2023's bias-HyperInit), so the generated networks start as a well-scaled
network rather than near zero. (Classification: every class's row starts at the same base row,
so the head starts near uniform logits and g's small weights first separate the classes.) adapt(xs, ys, steps) returns the generated weights after `steps`
SGD steps of the support loss at inner_lr: the hypernetwork as an initialiser (steps 0 = as
generated), which the evaluation reports after 0, 1, 5 and 10 steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import (Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls, task_loss,
                                 task_score)
from metarl.functional import Params, adapt_per_task, params_of
from metarl.protocols import FEWSHOT
from metarl.seeding import draw_from_state, stream_state
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import Conv4, bias_hyperinit, generated_mlp, mlp
from metarl.agents.meta_objectives import ObjectiveOptions, objective_terms, parse_meta_loss, weighted_objective

MODES = ("end-to-end", "two-stage")
MAX_GENERATOR_PARAMS = 50_000_000  # ~200 MB of float32 weights, x4 with Adam's moments and gradients


@dataclass
class HyperNetConfig(ObjectiveOptions, FewShotConfig):
    mode: str = option("end-to-end", "end-to-end: trained through the generated network's query loss; two-stage "
                                     "(regression): regress onto weights fit to each task first", choices=MODES)
    iterations: int = option(70_000, "meta-iterations (as MAML's sinusoid run)", ge=1)
    hidden: int = option(40, "target MLP (regression): hidden units per layer (MAML paper: 40)", ge=1)
    layers: int = option(2, "target MLP (regression): hidden layers (MAML paper: 2)", ge=1)
    channels: int = option(64, "classification: Conv4 embedding channels", ge=1)
    encoder_hidden: int = option(128, "set encoder h and generator g: units per layer", ge=1)
    encoder_layers: int = option(3, "set encoder h: hidden layers (regression)", ge=1)
    inner_lr: float = option(0.001, "step size of the fine-tuning steps from the generated weights (evaluation)", gt=0.0)
    fit_steps: int = option(100, "two-stage: Adam steps fitting each training task's weights phi*", ge=1)
    fit_lr: float = option(0.01, "two-stage: Adam step size of that fit", gt=0.0)
    target_init: str = option("shared", "two-stage: fit phi* from one shared init (fixed at construction) or from "
                                        "an independent init per task", choices=("shared", "independent"))


def target_weights(dist, cfg: HyperNetConfig) -> int:
    """Weights and biases of the regression target MLP (generated_mlp's), counted without building it."""
    sizes = [dist.x_shape[0]] + [cfg.hidden] * cfg.layers + [dist.y_dim]
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def _check_size(dist, cfg: HyperNetConfig) -> None:
    """The generator's output layer has encoder_hidden x target_params weights: refuse a target
    network too large to generate before building either (the target MLP alone may not fit)."""
    target_params = target_weights(dist, cfg)
    n = (cfg.encoder_hidden + 1) * target_params
    if n > MAX_GENERATOR_PARAMS:
        raise UserError(f"the hypernetwork would need {n:,} generator weights ({target_params:,} target weights x "
                        f"{cfg.encoder_hidden + 1}), over the limit of {MAX_GENERATOR_PARAMS:,}; lower agent.hidden / "
                        f"agent.layers or agent.encoder_hidden")


class HyperNetLearner(FewShotLearner):
    """state = generated (then fine-tuned) per-task weights: the target MLP's {w0, b0, ...}
    [N, ...] (regression) or the head {head_w [N, W, D], head_b [N, W]} (classification)."""
    gradient_steps = True

    def __init__(self, dist, cfg: HyperNetConfig):
        super().__init__(dist)
        if cfg.mode == "two-stage" and dist.kind != "regression":
            raise UserError("agent.mode=two-stage regresses onto weights fit per task, implemented for regression "
                            "(sinusoid, gp-regression); use agent.mode=end-to-end on classification")
        self.cfg = cfg
        self.weights = parse_meta_loss(cfg.meta_loss, cfg.meta_loss_weight)
        if "mr-maml" in self.weights:
            raise UserError("agent.meta_loss mr-maml makes a network's first layers a stochastic encoder the inner "
                            "loop leaves alone: it is for maml, meta-sgd and anil, not the hypernetwork")
        if cfg.mode == "two-stage" and len(self.weights) > 1:
            raise UserError(f"agent.meta_loss={cfg.meta_loss!r}: two-stage regresses onto fitted weights, with no "
                            f"query loss to add terms to; use agent.mode=end-to-end")
        if dist.kind == "regression":
            _check_size(dist, cfg)
            self.target, self.flat = generated_mlp(dist, cfg.hidden, cfg.layers)
            self.encoder = mlp(dist.x_shape[0] + dist.y_dim, cfg.encoder_hidden, cfg.encoder_layers,
                               cfg.encoder_hidden)
            self.generator = mlp(cfg.encoder_hidden, cfg.encoder_hidden, 1, self.flat.total)
            bias_hyperinit(self.generator[-1], self.flat.join(params_of(self.target), lead=0))
            # two-stage, independent inits: their draws, saved with the learner so a resumed run draws the same
            self.register_buffer("init_rng", stream_state())
        else:
            self.embedding = Conv4(dist.x_shape[0], cfg.channels, 0)
            d = self.embedding.features
            self.generator = mlp(d, cfg.encoder_hidden, 1, d + 1)
            head = nn.Linear(d, 1)
            bias_hyperinit(self.generator[-1], torch.cat([head.weight.view(-1), head.bias]).detach())
        self.ways = dist.ways

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        if self.kind == "regression":
            r = self.encoder(torch.cat([xs, ys], -1)).mean(-2)                   # [N, R]
            return self.flat.split(self.generator(r))                             # {name: [N, ...]}
        emb = self.embedding(xs)                                                  # [N, W*K, D]
        onehot = nn.functional.one_hot(ys, self.ways).to(emb.dtype)               # [N, W*K, W]
        protos = onehot.transpose(1, 2) @ emb / onehot.sum(1).unsqueeze(-1)       # [N, W, D] class means
        rows = self.generator(protos)                                             # [N, W, D + 1]
        return {"head_w": rows[..., :-1], "head_b": rows[..., -1]}

    def _out(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return self.target.forward_with(params, x)
        return self.embedding.head_with(params, x)                                # x: embeddings

    def adapt(self, xs, ys, steps=None):
        params = self.generate(xs, ys)
        steps = steps or 0
        if not steps:
            return params
        x = xs if self.kind == "regression" else self.embedding(xs)
        return adapt_per_task(lambda p, d: task_loss(self.kind, self._out(p, d[0]), d[1]), params, (x, ys), steps,
                              self.cfg.inner_lr, first_order=True)

    def predict(self, state, xq):
        return self._out(state, xq if self.kind == "regression" else self.embedding(xq))

    # ---- meta-training ------------------------------------------------------------------------
    def base_params(self) -> Params:
        """theta of the meta-objective terms: the network the generator outputs before its input
        moves it, its output bias (bias-HyperInit's base), unbatched; classification: every class's
        head row is that bias."""
        bias = self.generator[-1].bias
        if self.kind == "regression":
            return self.flat.split(bias)
        return {"head_w": bias[:-1].expand(self.ways, -1), "head_b": bias[-1].expand(self.ways)}

    def meta_loss(self, batch: Batch):
        if self.cfg.mode == "end-to-end":
            return self._objective(batch)
        target = self.fit_targets(batch)                                          # [N, P]
        pred = self.flat.join(self.generate(batch["xs"], batch["ys"]))
        loss = ((pred - target) ** 2).mean()
        with torch.no_grad():
            mse = task_loss(self.kind, self._out(self.flat.split(pred), batch["xq"]), batch["yq"]).mean()
        return loss, {"loss": loss.item(), "query_mse": mse.item(), "target_mse": self._target_mse}

    def _objective(self, batch: Batch):
        """The query loss of the generated weights plus agent.meta_loss's other terms times their
        lambdas, each logged ("loss" is the query loss)."""
        phi = self.adapt(batch["xs"], batch["ys"])
        out = self.predict(phi, batch["xq"])
        terms = {"maml": task_loss(self.kind, out, batch["yq"]).mean()}
        terms.update(objective_terms(self.weights, self.cfg, self.kind, phi, self.base_params(), batch, self.predict))
        loss, metrics = weighted_objective(self.weights, terms)
        if self.kind == "classification":
            metrics["accuracy"] = task_score(self.kind, out.detach(), batch["yq"]).mean().item()
        return loss, metrics

    def fit_targets(self, batch: Batch) -> torch.Tensor:
        """Two-stage targets phi*_i [N, P]: full-batch Adam on each task's support and query points."""
        x = torch.cat([batch["xs"], batch["xq"]], -2)
        y = torch.cat([batch["ys"], batch["yq"]], -2)
        n = x.shape[0]
        base = self.flat.join(params_of(self.target), lead=0)
        if self.cfg.target_init == "shared":
            start = base.unsqueeze(0).expand(n, -1)
        else:  # a fresh nn.Linear-style draw per task
            u = draw_from_state(self.init_rng, lambda gen: torch.rand(n, self.flat.total, generator=gen))
            start = ((u * 2 - 1) * self._init_bounds()).to(x.device)
        phi = start.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([phi], lr=self.cfg.fit_lr)
        with torch.enable_grad():
            for _ in range(self.cfg.fit_steps):
                loss = task_loss(self.kind, self.target.forward_with(self.flat.split(phi), x), y)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
        phi = phi.detach()
        with torch.no_grad():  # the fit of the returned targets
            self._target_mse = task_loss(self.kind, self.target.forward_with(self.flat.split(phi), x), y).mean().item()
        return phi

    def _init_bounds(self) -> torch.Tensor:
        """nn.Linear's init bounds per entry [P]: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
        out = []
        for k, s in self.flat.shapes.items():
            fan_in = s[-1] if k.startswith("w") else self.flat.shapes["w" + k[1:]][-1]
            out.append(torch.full((math.prod(s),), 1 / math.sqrt(fan_in)))
        return torch.cat(out)


HYPERNET = AgentSpec("hypernet", HyperNetConfig, make_trainer_cls(HyperNetLearner), load_learner(HyperNetLearner),
                     protocol=FEWSHOT, curve_keys=("loss", "accuracy", "query_mse"))

"""The MAML family for supervised few-shot learning, on the functional inner loop of
metarl.functional (the same adapt_batch the MAML-RL agents use):

- MAML (Finn et al. 2017), second order or first order (FOMAML) with agent.first_order;
- Meta-SGD (Li et al. 2017): a learned step size per parameter entry;
- ANIL (Raghu et al. 2020): only the head adapts in the inner loop;
- Reptile (Nichol et al. 2018): SGD on each task, meta-parameters moved toward the results;
- pretrain: one network trained on all tasks' data at once, fine-tuned at test time with the
  same inner steps (the MAML paper's "pretrained" baseline; regression).

Both networks (MLP with batched matmuls, Conv4 with grouped convolutions) take per-task
parameters natively, so the inner loop runs vectorized (learner.vectorized = False: through vmap).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import (Batch, FewShotConfig, FewShotLearner, FewShotTrainer, load_learner,
                                 make_trainer_cls, task_loss, task_score)
from metarl.functional import adapt_batch, meta_sgd_step_sizes, params_of
from metarl.protocols import FEWSHOT
from metarl.training import AgentSpec
from torch.func import vmap

from metarl.agents.fewshot_nets import make_network


@dataclass
class MAMLConfig(FewShotConfig):
    iterations: int = option(70_000, "meta-iterations (MAML paper, sinusoid: 70,000)", ge=1)
    hidden: int = option(40, "regression MLP: hidden units per layer (MAML paper: 40)", ge=1)
    layers: int = option(2, "regression MLP: hidden layers (MAML paper: 2)", ge=1)
    channels: int = option(64, "classification Conv4: channels per block (MAML paper: 64)", ge=1)
    init: str = option("reference", "regression MLP weights: reference = truncated normal std 0.01 and zero "
                                    "biases (MAML's reference code), torch = nn.Linear's default",
                       choices=("reference", "torch"))
    inner_lr: float = option(0.01, "inner-loop step size (MAML paper: 0.01 sinusoid in its text, 0.001 in its code, "
                                   "stable for 10 steps; 0.4 Omniglot)", gt=0.0)
    inner_steps: int = option(1, "inner gradient steps during meta-training", ge=1)
    first_order: bool = option(False, "first-order MAML: no second derivatives through the inner step")
    meta_loss: str = option("maml", "the meta-objective: maml (query loss after adaptation) plus any of, comma-"
                                    "separated: l2 (||theta||^2), proximal (mean ||phi_i - theta||^2, iMAML's "
                                    "term), aux-maml (the unadapted theta's loss on each task: a multi-task term), "
                                    "each weighted by meta_loss_weight and logged on its own")
    meta_loss_weight: float = option(0.1, "lambda of every meta_loss term beside maml", ge=0.0)


@dataclass
class ReptileConfig(MAMLConfig):
    inner_lr: float = option(0.02, "inner-loop SGD step size (Reptile paper: 0.02 sinusoid)", gt=0.0)
    inner_steps: int = option(5, "SGD steps on each task before the meta-update", ge=1)
    meta_lr: float = option(0.1, "outer step size epsilon: theta += epsilon * mean(phi - theta)", gt=0.0)


class MAMLLearner(FewShotLearner):
    """state = adapted parameters {name: [N, ...]} (ANIL: the adapted head only)."""
    gradient_steps = True

    def __init__(self, dist, cfg: MAMLConfig, *, meta_sgd: bool = False, anil: bool = False):
        super().__init__(dist)
        if getattr(dist, "train_ways", 0) not in (0, dist.ways):
            raise UserError(f"env.train_ways={dist.train_ways} differs from env.ways={dist.ways}: the MAML family's "
                            f"classifier head has env.ways outputs; set env.train_ways=0")
        self.cfg, self.anil = cfg, anil
        self.model = make_network(dist, cfg.hidden, cfg.layers, cfg.channels, init=cfg.init)
        # Both networks take per-task params natively (MLP: batched matmuls, Conv4: grouped convs).
        self.vectorized = True
        inner = self.inner_params()
        self.step_sizes = meta_sgd_step_sizes(inner, cfg.inner_lr) if meta_sgd else None
        self.terms = meta_terms(getattr(cfg, "meta_loss", "maml"))

    @property
    def lr(self):
        return self.step_sizes if self.step_sizes is not None else self.cfg.inner_lr

    def inner_params(self) -> dict:
        p = params_of(self.model)
        return {k: v for k, v in p.items() if k.startswith("head_")} if self.anil else p

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed_with(params_of(self.model), x)  # ANIL: shared body [N, B, D]

    def _out(self, params, x):
        if self.anil:
            return self.model.head_with(params, x)
        return self.model.forward_with(params, x)

    def _loss_fn(self):
        kind = self.kind

        def loss_fn(params, data):
            x, y = data
            return task_loss(kind, self._out(params, x), y)
        return loss_fn

    def adapt(self, xs: torch.Tensor, ys: torch.Tensor, steps: int | None = None, *, first_order: bool | None = None):
        steps = self.cfg.inner_steps if steps is None else steps
        fo = self.cfg.first_order if first_order is None else first_order
        x = self._features(xs) if self.anil else xs
        return adapt_batch(self._loss_fn(), self.inner_params(), (x, ys), steps, self.lr, fo, self.vectorized)

    def predict(self, state, xq: torch.Tensor) -> torch.Tensor:
        if self.anil:
            return self._out(state, self._features(xq))
        if self.vectorized:
            return self._out(state, xq)
        return vmap(self.model.forward_with)(state, xq)

    def meta_loss(self, batch: Batch):
        """The query loss after adaptation, plus agent.meta_loss's other terms times their weight;
        metrics log each term ("loss" is the maml term, as without extra terms)."""
        phi = self.adapt(batch["xs"], batch["ys"])
        out = self.predict(phi, batch["xq"])
        terms = {"maml": task_loss(self.kind, out, batch["yq"]).mean()}
        theta = self.inner_params()
        for t in self.terms[1:]:
            if t == "l2":
                terms[t] = sum((p ** 2).sum() for p in theta.values())
            elif t == "proximal":
                terms[t] = sum(((phi[k] - p) ** 2).flatten(1).sum(1) for k, p in theta.items()).mean()
            else:  # aux-maml: the meta-parameters' own loss on the task's data, no adaptation
                x = torch.cat([batch["xs"], batch["xq"]], 1)
                y = torch.cat([batch["ys"], batch["yq"]], 1)
                unadapted = {k: v.unsqueeze(0).expand(x.shape[0], *v.shape) for k, v in theta.items()}
                terms[t] = task_loss(self.kind, self.predict(unadapted, x), y).mean()
        loss = terms["maml"] + self.cfg.meta_loss_weight * sum(v for k, v in terms.items() if k != "maml")
        metrics = {"loss": terms["maml"].item(), **{f"loss_{k}": v.item() for k, v in terms.items() if k != "maml"}}
        if self.kind == "classification":
            metrics["accuracy"] = task_score(self.kind, out.detach(), batch["yq"]).mean().item()
        return loss, metrics


META_TERMS = ("maml", "l2", "proximal", "aux-maml")


def meta_terms(spec: str) -> list[str]:
    """agent.meta_loss -> its terms, 'maml' first; unknown terms are a user error."""
    terms = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in terms if t not in META_TERMS]
    if bad or "maml" not in terms:
        raise UserError(f"agent.meta_loss={spec!r}: terms are {', '.join(META_TERMS)}, comma-separated, with maml "
                        f"among them" + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return ["maml"] + [t for t in terms if t != "maml"]


class ReptileLearner(MAMLLearner):
    """Reptile: phi_i = SGD on task i (support and query together) from theta; the meta-update
    sets grad = theta - mean_i(phi_i), so an SGD step of size epsilon moves theta toward the
    adapted weights."""

    def meta_update(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        x = torch.cat([batch["xs"], batch["xq"]], 1)
        y = torch.cat([batch["ys"], batch["yq"]], 1)
        with torch.no_grad():
            phi = self.adapt(x, y, first_order=True)
            loss = task_loss(self.kind, self.predict(phi, x), y).mean().item()
        optimizer.zero_grad(set_to_none=True)
        for k, p in self.inner_params().items():
            p.grad = p.detach() - phi[k].mean(0)
        optimizer.step()
        return {"loss": loss}


class PretrainLearner(MAMLLearner):
    """One network fit to every training task's data at once; fine-tuned at test time."""

    def __init__(self, dist, cfg: MAMLConfig):
        if dist.kind != "regression":
            raise UserError("agent pretrain supports regression task families (sinusoid, gp-regression); "
                            "for classification compare against protonet or maml")
        super().__init__(dist, cfg)

    def meta_loss(self, batch: Batch):
        x = torch.cat([batch["xs"], batch["xq"]], 1)
        y = torch.cat([batch["ys"], batch["yq"]], 1)
        loss = task_loss(self.kind, self.model(x), y).mean()
        return loss, {"loss": loss.item()}


class ReptileTrainer(FewShotTrainer):
    def make_optimizer(self):
        return torch.optim.SGD(self.learner.parameters(), lr=self.cfg.meta_lr)


def _maml(dist, cfg):
    return MAMLLearner(dist, cfg)


def _meta_sgd(dist, cfg):
    return MAMLLearner(dist, cfg, meta_sgd=True)


def _anil(dist, cfg):
    if dist.kind != "classification":
        raise UserError("agent anil adapts only the classifier head: use it on glyphs or omniglot "
                        "(for regression use maml)")
    return MAMLLearner(dist, cfg, anil=True)


def _reptile(dist, cfg):
    _plain_objective(cfg, "reptile")
    return ReptileLearner(dist, cfg)


def _pretrain(dist, cfg):
    _plain_objective(cfg, "pretrain")
    return PretrainLearner(dist, cfg)


def _plain_objective(cfg, agent: str) -> None:
    if cfg.meta_loss.replace(" ", "") != "maml":
        raise UserError(f"agent.meta_loss={cfg.meta_loss!r}: {agent} has its own update; the meta_loss terms are "
                        f"for maml, meta-sgd and anil")


def _spec(name: str, cfg_cls: type, make, trainer_base=FewShotTrainer) -> AgentSpec:
    return AgentSpec(name, cfg_cls, make_trainer_cls(make, trainer_base), load_learner(make), protocol=FEWSHOT,
                     curve_keys=("loss", "accuracy"))


MAML = _spec("maml", MAMLConfig, _maml)
META_SGD = _spec("meta-sgd", MAMLConfig, _meta_sgd)
ANIL = _spec("anil", MAMLConfig, _anil)
REPTILE = _spec("reptile", ReptileConfig, _reptile, ReptileTrainer)
PRETRAIN = _spec("pretrain", MAMLConfig, _pretrain)

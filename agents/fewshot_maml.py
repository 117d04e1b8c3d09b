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
from metarl.fewshot.attacks import Attack
from metarl.functional import adapt_batch, meta_sgd_step_sizes, params_of
from metarl.protocols import FEWSHOT
from metarl.seeding import draw_from_state, stream_state
from metarl.training import AgentSpec
from torch.func import vmap

from metarl.agents.fewshot_nets import make_network
from metarl.agents.meta_objectives import (ObjectiveOptions, StochasticEncoder, encoder_keys, objective_terms,
                                          parse_meta_loss, unadapted, weighted_objective)


@dataclass
class MAMLConfig(ObjectiveOptions, FewShotConfig):
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
    mr_layers: int = option(0, "mr-maml: leading layers forming the stochastic, unadapted encoder (0 = all Conv4 "
                               "blocks but the last, or the MLP's first layer)", ge=0)
    mr_sigma_init: float = option(1e-4, "mr-maml: the encoder weights' initial posterior std (the paper's code: ~0)",
                                  gt=0.0)
    adversarial: str = option("", "ADML (Yin et al. 2018): fgsm or pgd adversarial support and query images in "
                                  "meta-training; the meta-loss is the clean-adapted model on adversarial queries "
                                  "plus the adversarially adapted model on clean ones (classification)",
                              choices=("", "fgsm", "pgd"))
    search: str = option("", "darts: a differentiable cell search (Conv4 blocks 1-3 mix conv 3x3 / 5x5 / dilated, "
                             "max / average pool, skip, none; the mixing weights are meta-parameters updated through "
                             "the inner loop); metarl eval writes the chosen cell (image tasks)", choices=("", "darts"))
    search_weights: str = option("conv4", "search: the chosen cell's weight budget; conv4 = each candidate cell at "
                                          "the widest width within the hand-designed Conv4's weights (the two "
                                          "compare like for like), any = the search's width",
                                 choices=("conv4", "any"))
    search_proxy_iterations: int = option(200, "search: first-order meta-iterations each candidate cell trains from "
                                               "scratch before it is scored on the validation classes", ge=1)
    arch: str = option("", "a chosen cell for Conv4's blocks 1-3, e.g. conv3x3,skip,avg_pool3x3 (from a search run's "
                           "eval_arch.txt), trained from scratch (image tasks)")
    adv_eps: float = option(0.1, "adversarial: L-infinity radius in pixel units of [0, 1] images", gt=0.0)
    adv_steps: int = option(5, "adversarial=pgd: attack steps", ge=1)


@dataclass
class ReptileConfig(MAMLConfig):
    inner_lr: float = option(0.02, "inner-loop SGD step size (Reptile paper: 0.02 sinusoid)", gt=0.0)
    inner_steps: int = option(5, "SGD steps on each task before the meta-update", ge=1)
    meta_lr: float = option(0.1, "outer step size epsilon: theta += epsilon * mean(phi - theta)", gt=0.0)


class MAMLLearner(FewShotLearner):
    """state = adapted parameters {name: [N, ...]} (ANIL: the adapted head only). Parameters the
    inner loop leaves alone (ANIL's body, MR-MAML's encoder) are the `base`, shared by all tasks."""
    gradient_steps = True

    def __init__(self, dist, cfg: MAMLConfig, *, meta_sgd: bool = False, anil: bool = False):
        super().__init__(dist)
        if getattr(dist, "train_ways", 0) not in (0, dist.ways):
            raise UserError(f"env.train_ways={dist.train_ways} differs from env.ways={dist.ways}: the MAML family's "
                            f"classifier head has env.ways outputs; set env.train_ways=0")
        self.cfg, self.anil = cfg, anil
        self.model = make_network(dist, cfg.hidden, cfg.layers, cfg.channels, init=cfg.init,
                                  search=getattr(cfg, "search", ""), arch=getattr(cfg, "arch", ""))
        # Both networks take per-task params natively (MLP: batched matmuls, Conv4: grouped convs).
        self.vectorized = True
        self.weights = parse_meta_loss(getattr(cfg, "meta_loss", "maml"), getattr(cfg, "meta_loss_weight", 0.1))
        self.fixed: set[str] = {"arch_alpha"} if getattr(cfg, "search", "") else set()  # meta-learned, never adapted
        self.encoder = None
        if "mr-maml" in self.weights:
            if getattr(cfg, "search", "") or getattr(cfg, "arch", ""):
                raise UserError("agent.meta_loss mr-maml makes Conv4's first blocks a stochastic encoder; it does not "
                                "combine with agent.search / agent.arch")
            stochastic, deterministic = encoder_keys(self.model, cfg.mr_layers)
            self.encoder = StochasticEncoder(params_of(self.model), stochastic, cfg.mr_sigma_init)
            self.fixed |= set(stochastic) | set(deterministic)
        self.attack = None
        if getattr(cfg, "adversarial", ""):
            if dist.kind != "classification":
                raise UserError("agent.adversarial (ADML) perturbs images: use it on glyphs or omniglot")
            self.attack = Attack(cfg.adversarial, cfg.adv_eps, cfg.adv_steps)
            self.register_buffer("attack_rng", stream_state())
        inner = self.inner_params()
        self.step_sizes = meta_sgd_step_sizes(inner, cfg.inner_lr) if meta_sgd else None

    @property
    def lr(self):
        return self.step_sizes if self.step_sizes is not None else self.cfg.inner_lr

    def inner_params(self) -> dict:
        p = params_of(self.model)
        if self.anil:
            return {k: v for k, v in p.items() if k.startswith("head_")}
        return {k: v for k, v in p.items() if k not in self.fixed}

    def base(self, sample: bool = False) -> dict:
        """The unadapted parameters: ANIL's body, MR-MAML's encoder (a draw from q when `sample`,
        else its mean); {} for plain MAML."""
        p = params_of(self.model)
        out = {k: v for k, v in p.items() if (not k.startswith("head_") if self.anil else k in self.fixed)}
        if sample and self.encoder is not None:
            out.update(self.encoder.sample(p))
        return out

    def _features(self, x: torch.Tensor, base: dict) -> torch.Tensor:
        return self.model.embed_with(base, x)  # ANIL: shared body [N, B, D]

    def _out(self, params, x, base: dict):
        if self.anil:
            return self.model.head_with(params, x)
        return self.model.forward_with({**base, **params} if base else params, x)

    def adapt(self, xs: torch.Tensor, ys: torch.Tensor, steps: int | None = None, *, first_order: bool | None = None,
              base: dict | None = None):
        steps = self.cfg.inner_steps if steps is None else steps
        fo = self.cfg.first_order if first_order is None else first_order
        base = self.base() if base is None else base
        x = self._features(xs, base) if self.anil else xs
        return adapt_batch(self._loss_fn(base), self.inner_params(), (x, ys), steps, self.lr, fo, self.vectorized)

    def _loss_fn(self, base: dict | None = None):
        """The inner loop's loss_fn(params, (x, y)) -> per-task support loss."""
        kind, base = self.kind, self.base() if base is None else base

        def loss_fn(params, data):
            x, y = data
            return task_loss(kind, self._out(params, x, base), y)
        return loss_fn

    def predict(self, state, xq: torch.Tensor, base: dict | None = None) -> torch.Tensor:
        base = self.base() if base is None else base
        if self.anil:
            return self._out(state, self._features(xq, base), base)
        if self.vectorized:
            return self._out(state, xq, base)
        return vmap(lambda p, x: self._out(p, x, base))(state, xq)

    def meta_loss(self, batch: Batch):
        """The query loss after adaptation (ADML: its adversarial pair), plus agent.meta_loss's
        other terms times their lambdas; metrics log each term ("loss" is the maml term)."""
        base = self.base(sample=True)
        xs, ys, xq, yq = batch["xs"], batch["ys"], batch["xq"], batch["yq"]
        phi = self.adapt(xs, ys, base=base)
        theta = self.inner_params()
        adml = {}
        if self.attack is None:
            out = self.predict(phi, xq, base)
            terms = {"maml": task_loss(self.kind, out, yq).mean()}
        else:
            terms = {"maml": self._adml(phi, theta, base, batch, adml)}
            with torch.no_grad():  # clean loss and accuracy, for the log only
                out = self.predict(phi, xq, base)
                adml["loss_clean"] = task_loss(self.kind, out, yq).mean().item()
        terms.update(objective_terms(self.weights, self.cfg, self.kind, phi, theta, batch,
                                     lambda p, x: self.predict(p, x, base)))
        if "mr-maml" in self.weights:
            terms["mr-maml"] = self.encoder.kl(params_of(self.model))
        loss, metrics = weighted_objective(self.weights, terms)
        metrics.update(adml)
        if self.kind == "classification":
            metrics["accuracy"] = task_score(self.kind, out.detach(), yq).mean().item()
        return loss, metrics

    def _adml(self, phi, theta, base, batch, log: dict) -> torch.Tensor:
        """ADML's meta-loss: the clean-adapted phi on adversarial queries (attacked after adaptation,
        as the evaluation's attack) plus the model adapted on adversarial support images (attacked
        at the init theta) on clean queries, halved. Puts each half's value in log."""
        xs, ys, xq, yq = batch["xs"], batch["ys"], batch["xq"], batch["yq"]
        shim = _Predictor(self, base)
        phi_fixed = {k: v.detach() for k, v in phi.items()}
        xs_adv = draw_from_state(self.attack_rng, lambda g: self.attack.perturb(
            shim, unadapted({k: v.detach() for k, v in theta.items()}, xs.shape[0]), xs, ys, g))
        xq_adv = draw_from_state(self.attack_rng, lambda g: self.attack.perturb(shim, phi_fixed, xq, yq, g))
        phi_adv = self.adapt(xs_adv.to(xs.device), ys, base=base)
        on_adv = task_loss(self.kind, self.predict(phi, xq_adv.to(xq.device), base), yq).mean()
        on_clean = task_loss(self.kind, self.predict(phi_adv, xq, base), yq).mean()
        log.update(loss_adv_query=on_adv.item(), loss_adv_support=on_clean.item())
        return 0.5 * (on_adv + on_clean)


class _Predictor:
    """learner.predict with a fixed base, for Attack.perturb."""

    def __init__(self, learner: MAMLLearner, base: dict):
        self.learner, self.base = learner, base

    def predict(self, state, x):
        return self.learner.predict(state, x, {k: v.detach() for k, v in self.base.items()})


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
    if cfg.adversarial:
        raise UserError(f"agent.adversarial={cfg.adversarial!r}: {agent} has its own update; ADML is for maml, "
                        f"meta-sgd and anil")
    if cfg.search:
        raise UserError(f"agent.search={cfg.search!r}: {agent} has no meta-gradient for the architecture weights; "
                        f"search with maml, meta-sgd or anil")


def _spec(name: str, cfg_cls: type, make, trainer_base=FewShotTrainer) -> AgentSpec:
    return AgentSpec(name, cfg_cls, make_trainer_cls(make, trainer_base), load_learner(make), protocol=FEWSHOT,
                     curve_keys=("loss", "accuracy"))


MAML = _spec("maml", MAMLConfig, _maml)
META_SGD = _spec("meta-sgd", MAMLConfig, _meta_sgd)
ANIL = _spec("anil", MAMLConfig, _anil)
REPTILE = _spec("reptile", ReptileConfig, _reptile, ReptileTrainer)
PRETRAIN = _spec("pretrain", MAMLConfig, _pretrain)

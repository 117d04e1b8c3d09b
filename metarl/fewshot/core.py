"""Supervised few-shot learning on the meta-core: task distributions, the learner contract and
the meta-training loop shared by every few-shot learner.

A few-shot task batch is a dict of tensors with a leading task dimension N:
    regression:      xs [N, K, dx], ys [N, K, dy], xq [N, Q, dx], yq [N, Q, dy]
    classification:  xs [N, W*K, C, H, W], ys [N, W*K] (labels 0..W-1), xq [N, W*Q, ...], yq [N, W*Q]
Support (xs, ys) is what a learner adapts on; query (xq, yq) is what it is scored on.

The learner contract, one idea for every few-shot learner:
    state = learner.adapt(xs, ys, steps)     # adapted params (MAML family), prototypes, CNP code
    out   = learner.predict(state, xq)       # [N, Q, dy] predictions or [N, Q, W] logits
    loss, metrics = learner.meta_loss(batch) # then an optimizer step on the meta-parameters
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.config import option
from metarl.errors import UserError
from metarl.registry import ENVS, names_where
from metarl.seeding import make_generator

Batch = dict[str, torch.Tensor]
FEWSHOT_SPLITS = ("train", "val", "test")


class FewShotDistribution(ABC):
    """Tasks of one supervised family. `kind` is "regression" or "classification"."""
    kind: str
    ways: int = 0          # classification: classes per task (output size of a classifier)
    x_shape: tuple = ()    # one input, e.g. (1,) or (1, 28, 28)
    y_dim: int = 1         # regression output size

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator, split: str = "train", *, shots: int | None = None,
               query: int | None = None, grid: bool = False) -> Batch:
        """n tasks of `split` with `shots` support and `query` query points (per class for
        classification; defaults from the config), on the generator's device. Regression families
        honour `grid`: query points evenly spaced over the input range, for the evaluation's fit plots;
        classification families ignore it."""


@dataclass(frozen=True)
class FewShotSpec:
    """What the registry returns for a few-shot task family (the supervised twin of EnvSpec)."""
    name: str
    config_cls: type
    families: tuple[str, ...]
    make_distribution: Callable[[Any], FewShotDistribution]
    domain: str = "fewshot"


def task_generator(seed: int, split: str, device="cpu") -> torch.Generator:
    """Seeded stream of tasks of one split; train, val and test streams never coincide."""
    if split not in FEWSHOT_SPLITS:
        raise ValueError(f"split must be one of {FEWSHOT_SPLITS}, got {split!r}")
    return make_generator(seed, f"fewshot-{split}", device)


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-task loss [...] of outputs [..., Q, d] against targets: MSE for regression, cross
    entropy for classification (y [..., Q] integer labels); reduces only the query dim."""
    if kind == "regression":
        return ((out - y) ** 2).mean((-2, -1))
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(-1)


def task_score(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-task evaluation metric [N]: MSE for regression, accuracy for classification."""
    if kind == "regression":
        return ((out - y) ** 2).mean((-2, -1))
    return (out.argmax(-1) == y).float().mean(-1)


class FewShotLearner(nn.Module):
    """Base of every few-shot learner. `steps` is the number of inner gradient steps for the
    MAML family and is ignored by learners that adapt in closed form (gradient_steps False)."""
    gradient_steps: bool = False

    def __init__(self, dist: FewShotDistribution):
        super().__init__()
        self.kind = dist.kind

    def adapt(self, xs: torch.Tensor, ys: torch.Tensor, steps: int | None = None) -> Any:
        raise NotImplementedError

    def predict(self, state: Any, xq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Default: adapt on the support set, loss on the query set, averaged over tasks."""
        out = self.predict(self.adapt(batch["xs"], batch["ys"]), batch["xq"])
        losses = task_loss(self.kind, out, batch["yq"])
        metrics = {"loss": losses.mean().item()}
        if self.kind == "classification":
            metrics["accuracy"] = task_score(self.kind, out.detach(), batch["yq"]).mean().item()
        return losses.mean(), metrics

    def meta_update(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One meta-iteration: gradient of meta_loss, optimizer step. Reptile overrides this."""
        loss, metrics = self.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return metrics


@dataclass
class FewShotConfig:
    """Options every few-shot learner shares (subclasses add their own)."""
    iterations: int = option(10_000, "meta-iterations (meta-batches) to train for", ge=1)
    meta_batch: int = option(25, "tasks per meta-iteration", ge=1)
    meta_lr: float = option(1e-3, "Adam learning rate of the meta-parameters", gt=0.0)
    log_every: int = option(100, "meta-iterations per logged iteration (one line of metrics.jsonl)", ge=1)
    checkpoint_every: int = option(50, "logged iterations between checkpoints", ge=1)
    eval_steps: int = option(10, "inner gradient steps evaluated: the metric after 0, 1, 5, 10 of them, up to "
                                 "this (learners that adapt by gradient steps; closed-form ones ignore it)", ge=0)
    threads: int = option(0, "CPU threads; 0 = auto: 1 for regression (tiny ops run fastest on one thread), "
                             "all cores for image classification", ge=0)


class FewShotTrainer:
    """Meta-training loop of a few-shot learner; one train_loop iteration = cfg.log_every
    meta-iterations, its metrics the means over them. Progress is counted in meta-iterations."""

    def __init__(self, env_spec: FewShotSpec, env_cfg, cfg: FewShotConfig, seed: int, device,
                 make_learner: Callable[[FewShotDistribution, Any], FewShotLearner]):
        self.dist = env_spec.make_distribution(env_cfg)
        self.cfg, self.device = cfg, torch.device(device)
        if self.device.type == "cpu" and (cfg.threads or self.dist.kind == "regression"):
            torch.set_num_threads(cfg.threads or 1)
        torch.manual_seed(seed)  # only for parameter init inside nn.Module constructors
        self.learner = make_learner(self.dist, cfg).to(self.device)
        self.optimizer = self.make_optimizer()
        self.task_gen = task_generator(seed, "train", self.device)
        self.dist.sample(1, torch.Generator(device=self.device))  # bad shots / ways fail before training
        self.steps_per_iteration = cfg.log_every
        self.iterations = math.ceil(cfg.iterations / cfg.log_every)

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.learner.parameters() if p.requires_grad]
        if not params:
            raise UserError(f"learner {type(self.learner).__name__} has no trainable parameters: the trainer "
                            "meta-trains parameters (a closed-form learner needs at least a learned feature map)")
        return torch.optim.Adam(params, lr=self.cfg.meta_lr)

    def train_iteration(self, it: int) -> dict[str, float]:
        self.learner.train()
        sums: dict[str, float] = {}
        for _ in range(self.cfg.log_every):
            batch = self.dist.sample(self.cfg.meta_batch, self.task_gen, "train")
            for k, v in self.learner.meta_update(batch, self.optimizer).items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / self.cfg.log_every for k, v in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "optimizer": self.optimizer.state_dict(),
                "task_gen": self.task_gen.get_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.learner.load_state_dict(d["learner"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.task_gen.set_state(d["task_gen"])


def make_trainer_cls(make_learner: Callable[[FewShotDistribution, Any], FewShotLearner],
                     trainer_base: type = FewShotTrainer) -> type:
    """A trainer class with the registry's signature (env_spec, env_cfg, agent_cfg, seed, device)."""
    class Trainer(trainer_base):
        def __init__(self, env_spec, env_cfg, cfg, seed, device):
            if getattr(env_spec, "domain", "rl") != "fewshot":
                fewshot = names_where(ENVS, lambda e: getattr(e, "domain", "rl") == "fewshot")
                raise UserError(f"env {env_spec.name!r} is an RL task distribution; few-shot learners train on "
                                f"supervised ones ({', '.join(fewshot)})")
            super().__init__(env_spec, env_cfg, cfg, seed, device, make_learner)
    return Trainer


def load_learner(make_learner):
    """load_eval_policy for the registry: rebuild the learner and load the checkpoint's weights."""
    def load(ck, env_spec, env_cfg, cfg, device, seed):
        learner = make_learner(env_spec.make_distribution(env_cfg), cfg).to(device)
        learner.load_state_dict(ck["trainer"]["learner"])
        learner.eval()
        return learner
    return load

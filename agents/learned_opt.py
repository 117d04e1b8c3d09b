"""A learned optimizer for few-shot learning (Andrychowicz et al. 2016; with a meta-learned init
as Ravi & Larochelle 2017): a small coordinate-wise LSTM, shared by every weight of the task
network, reads each weight's gradient and proposes its update, in place of SGD's -lr * g.

Per inner step t, for every coordinate of every task's weights theta [N, ...]:
    features = [log|g| / 10, sign(g)] (Andrychowicz's preprocessing; (-1, e^10 g) for tiny g)
               (+ a task context c [C] with agent.task_conditioned)
    h, c     = LSTMCell(features, (h, c))                  # hidden [N * P, opt_hidden]
    theta   += -lr * g + out_scale * Linear(h)              # lr learned, from inner_lr
The SGD term makes the untrained optimizer SGD from the init, which the LSTM learns to correct.
The gradients are inputs only (no second derivatives, as Andrychowicz et al.), so the meta-
gradient flows through the updates: into the LSTM, and to the init by the identity path.
Meta-training unrolls `inner_steps` steps from the meta-learned init on the support set and
minimises the mean query loss after each of them, so every step, not only the last, is trained.

agent.task_conditioned: a set encoder (as CNP's) reads the support set, and its mean code c
conditions every coordinate's LSTM: each task gets its own update rule (an "optimiser engine").

The evaluation also reports "sgd (same init and rate)": plain SGD from the same learned init at
the learned rate of the update's SGD term, so the LSTM's part is what differs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls, task_loss
from metarl.functional import Params, adapt_batch, params_of
from metarl.protocols import FEWSHOT
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import FlatParams, make_network, mlp

PREPROCESS_P = 10.0  # Andrychowicz et al.'s gradient preprocessing constant


@dataclass
class LearnedOptConfig(FewShotConfig):
    iterations: int = option(20_000, "meta-iterations", ge=1)
    hidden: int = option(40, "regression MLP: hidden units per layer (MAML paper: 40)", ge=1)
    layers: int = option(2, "regression MLP: hidden layers (MAML paper: 2)", ge=1)
    channels: int = option(64, "classification Conv4: channels per block", ge=1)
    inner_steps: int = option(5, "learned steps unrolled in meta-training (the evaluation goes to eval_steps)", ge=1)
    opt_hidden: int = option(20, "coordinate-wise LSTM hidden units, one layer (Andrychowicz et al.: two of 20)",
                             ge=1)
    out_scale: float = option(0.01, "the LSTM's output times this is the update (Andrychowicz et al.: 0.1)", gt=0.0)
    task_conditioned: bool = option(False, "a set encoder's code of the support set conditions every coordinate's "
                                           "update: one update rule per task")
    context_size: int = option(16, "task_conditioned: size of the support-set code", ge=1)
    inner_lr: float = option(0.001, "initial step size of the learned update's SGD term (meta-learned; the "
                                    "evaluation's SGD row uses the learned one)", gt=0.0)


def preprocess(g: torch.Tensor) -> torch.Tensor:
    """Andrychowicz et al.'s gradient features [..., 2]: (log|g| / p, sign g) where |g| >= e^-p,
    else (-1, e^p g), so gradients of any magnitude reach the LSTM on one scale."""
    big = g.abs() >= torch.exp(torch.tensor(-PREPROCESS_P))
    log = torch.where(big, torch.log(g.abs().clamp_min(1e-38)) / PREPROCESS_P, torch.full_like(g, -1.0))
    sign = torch.where(big, torch.sign(g), g * torch.exp(torch.tensor(PREPROCESS_P)))
    return torch.stack([log, sign], -1)


class LearnedOptLearner(FewShotLearner):
    """state = the adapted per-task weights {name: [N, ...]} after `steps` learned steps."""
    gradient_steps = True

    def __init__(self, dist, cfg: LearnedOptConfig):
        super().__init__(dist)
        self.cfg = cfg
        self.model = make_network(dist, cfg.hidden, cfg.layers, cfg.channels, init="reference")
        ctx = cfg.context_size if cfg.task_conditioned else 0
        self.cell = nn.LSTMCell(2 + ctx, cfg.opt_hidden)
        self.out = nn.Linear(cfg.opt_hidden, 1)
        self.log_lr = nn.Parameter(torch.tensor(float(cfg.inner_lr)).log())
        self.flat = FlatParams({k: v.shape for k, v in params_of(self.model).items()})
        if cfg.task_conditioned:
            if dist.kind != "regression":
                raise UserError("agent.task_conditioned reads (x, y) support pairs: implemented for regression "
                                "(sinusoid, gp-regression)")
            self.context = mlp(dist.x_shape[0] + dist.y_dim, 64, 2, ctx)

    def _loss_fn(self):
        kind = self.kind
        return lambda params, data: task_loss(kind, self.model.forward_with(params, data[0]), data[1])

    def _task_context(self, xs, ys) -> torch.Tensor | None:
        if not self.cfg.task_conditioned:
            return None
        return self.context(torch.cat([xs, ys], -1)).mean(-2)                         # [N, C]

    def unroll(self, xs, ys, steps: int, on_step=None) -> Params:
        """`steps` learned updates of per-task weights from the init on the support set; calls
        on_step(params) after each (meta-training scores the query loss there)."""
        n = xs.shape[0]
        params = {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params_of(self.model).items()}
        ctx = self._task_context(xs, ys)
        loss_fn = self._loss_fn()
        state = None
        for _ in range(steps):
            with torch.enable_grad():
                leaf = {k: v.detach().requires_grad_() for k, v in params.items()}
                grads = torch.autograd.grad(loss_fn(leaf, (xs, ys)).sum(), list(leaf.values()))
            flat_g = self.flat.join(dict(zip(leaf, grads)))                             # [N, P]
            feats = preprocess(flat_g)                                                  # [N, P, 2]
            if ctx is not None:
                feats = torch.cat([feats, ctx.unsqueeze(1).expand(n, feats.shape[1], ctx.shape[-1])], -1)
            rows = feats.reshape(-1, feats.shape[-1])                                   # [N * P, F]
            state = self.cell(rows, state)
            update = self.cfg.out_scale * self.out(state[0]).view(n, -1) - self.log_lr.exp() * flat_g  # [N, P]
            params = {k: p + u for (k, p), u in zip(params.items(), self.flat.split(update).values())}
            if on_step is not None:
                on_step(params)
        return params

    def adapt(self, xs, ys, steps=None):
        return self.unroll(xs, ys, self.cfg.inner_steps if steps is None else steps)

    def predict(self, state, xq):
        return self.model.forward_with(state, xq)

    def meta_loss(self, batch: Batch):
        losses = []
        loss_fn = self._loss_fn()
        self.unroll(batch["xs"], batch["ys"], self.cfg.inner_steps,
                    on_step=lambda p: losses.append(loss_fn(p, (batch["xq"], batch["yq"])).mean()))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), "final_loss": losses[-1].item()}


class SGDFromInit(FewShotLearner):
    """The comparison row: plain SGD from a learned-opt run's init at its learned rate (the SGD
    term of its update), so the row differs from the learned optimizer by the LSTM alone."""
    gradient_steps = True

    def __init__(self, dist, learner: LearnedOptLearner):
        super().__init__(dist)
        self.model, self.lr = learner.model, learner.log_lr.exp().item()

    def adapt(self, xs, ys, steps=None):
        params = {k: v.detach() for k, v in params_of(self.model).items()}
        return adapt_batch(lambda p, d: task_loss(self.kind, self.model.forward_with(p, d[0]), d[1]), params,
                           (xs, ys), steps or 0, self.lr, first_order=True, vectorized=True)

    def predict(self, state, xq):
        return self.model.forward_with(state, xq)


_load = load_learner(LearnedOptLearner)


def extra_eval_learners(checkpoint, env_spec, env_cfg, cfg: LearnedOptConfig, device, seed) -> dict:
    """{label: learner} evaluated beside the learned optimizer on the same tasks."""
    learner = _load(checkpoint, env_spec, env_cfg, cfg, device, seed)
    return {"sgd (same init and rate)": SGDFromInit(env_spec.make_distribution(env_cfg), learner)}


LEARNED_OPT = AgentSpec("learned-opt", LearnedOptConfig, make_trainer_cls(LearnedOptLearner), _load,
                        protocol=FEWSHOT, curve_keys=("loss", "final_loss"), extra_eval=extra_eval_learners)

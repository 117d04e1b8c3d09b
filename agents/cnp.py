"""Conditional Neural Process (Garnelo et al. 2018) for few-shot regression.

adapt: r = mean_i h([x_i, y_i]) over the context set -> [N, R]
predict_dist: (mu, sigma) = g([x*, r]) for each target x*, sigma = 0.1 + 0.9 softplus(.)
Trained by maximising the Gaussian log-likelihood of the targets; as in the paper the targets
include the context points, and the number of context points varies between meta-batches
(env.shots=0 on gp-regression draws it ~ U[3, 97]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls
from metarl.fewshot.evaluation import gaussian_loglik
from metarl.protocols import FEWSHOT
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import mlp


@dataclass
class CNPConfig(FewShotConfig):
    iterations: int = option(50_000, "meta-iterations to train for", ge=1)
    meta_batch: int = option(64, "tasks (functions) per meta-iteration (CNP paper: 64)", ge=1)
    meta_lr: float = option(1e-4, "Adam learning rate (CNP paper: 1e-4)", gt=0.0)
    hidden: int = option(128, "units of every encoder / decoder layer (CNP paper: 128)", ge=1)
    encoder_layers: int = option(3, "encoder hidden layers", ge=1)
    decoder_layers: int = option(2, "decoder hidden layers", ge=1)


class CNP(FewShotLearner):
    def __init__(self, dist, cfg: CNPConfig):
        super().__init__(dist)
        if dist.kind != "regression":
            raise UserError("agent cnp is a regressor: use it on gp-regression or sinusoid")
        dx, dy = dist.x_shape[0], dist.y_dim
        self.encoder = mlp(dx + dy, cfg.hidden, cfg.encoder_layers, cfg.hidden)
        self.decoder = mlp(dx + cfg.hidden, cfg.hidden, cfg.decoder_layers, 2 * dy)

    def adapt(self, xs, ys, steps=None):
        return self.encoder(torch.cat([xs, ys], -1)).mean(-2)         # [N, R]

    def predict_dist(self, r, xq):
        h = torch.cat([xq, r.unsqueeze(-2).expand(*xq.shape[:-1], r.shape[-1])], -1)
        mu, s = self.decoder(h).chunk(2, -1)
        return mu, 0.1 + 0.9 * F.softplus(s)                           # [N, Q, dy] each

    def predict(self, r, xq):
        return self.predict_dist(r, xq)[0]

    def loglik(self, r, xq, yq):
        """Per-task mean log-likelihood of the targets [N] (factorised over points)."""
        return gaussian_loglik(*self.predict_dist(r, xq), yq)

    def meta_loss(self, batch: Batch):
        xt = torch.cat([batch["xs"], batch["xq"]], -2)
        yt = torch.cat([batch["ys"], batch["yq"]], -2)
        mu, sigma = self.predict_dist(self.adapt(batch["xs"], batch["ys"]), xt)
        ll = -0.5 * ((yt - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
        loss = -ll.mean()
        return loss, {"loss": loss.item(), "mse": ((mu - yt) ** 2).mean().item()}


CNP_SPEC = AgentSpec("cnp", CNPConfig, make_trainer_cls(CNP), load_learner(CNP), protocol=FEWSHOT,
                     curve_keys=("loss",))

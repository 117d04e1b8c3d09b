"""Latent Neural Process (Garnelo et al. 2018b, "Neural Processes"; the deterministic path beside
the latent one as in Kim et al. 2019's NP baseline) for few-shot regression.

    deterministic path: r = mean_i h([x_i, y_i])                                   [N, R]
    latent path:        s = mean_i h_z([x_i, y_i]); q(z | set) = N(mu(s), sigma(s)^2), sigma = 0.1 + 0.9 sigmoid
    decoder:            (mu_y, sigma_y) = g([x*, r, z]), sigma_y = 0.1 + 0.9 softplus     [N, Q, dy]

Trained on the ELBO with the targets T = context C plus the query points:
    E_{z ~ q(z | T)} [sum_t log p(y_t | x_t, r_C, z)] - KL(q(z | T) || q(z | C)),
one reparameterised z per task. A draw of z is a whole function, so samples are coherent curves.

Evaluation: the predictive mean is the average of `eval_samples` decoded draws z ~ q(z | C); the
test log-likelihood is the Monte Carlo estimate of the joint predictive of a task's targets,
log (1/K) sum_k prod_t p(y_t | z_k), divided by the number of targets (per point, as CNP's).
The evaluation's draws use a generator seeded per call, so scores do not depend on batch order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls
from metarl.fewshot.evaluation import gaussian_logpdf
from metarl.protocols import FEWSHOT
from metarl.seeding import draw_from_state, stream_state
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import mlp

EVAL_NOISE_SEED = 0


@dataclass
class NPConfig(FewShotConfig):
    iterations: int = option(50_000, "meta-iterations to train for", ge=1)
    meta_batch: int = option(64, "tasks (functions) per meta-iteration (CNP/NP papers: 64)", ge=1)
    meta_lr: float = option(1e-4, "Adam learning rate (NP paper: 1e-4)", gt=0.0)
    hidden: int = option(128, "units of every encoder / decoder layer (as CNP: 128)", ge=1)
    latent: int = option(128, "size of the latent z (Kim et al.'s NP: 128)", ge=1)
    encoder_layers: int = option(3, "hidden layers of each encoder", ge=1)
    decoder_layers: int = option(2, "decoder hidden layers", ge=1)
    eval_samples: int = option(32, "draws of z per task at evaluation (predictive mean, log-likelihood)", ge=1)


class LatentState(tuple):
    """(r [N, R], mu [N, Z], sigma [N, Z]): the context's code and its latent distribution."""


class NeuralProcess(FewShotLearner):
    def __init__(self, dist, cfg: NPConfig):
        super().__init__(dist)
        if dist.kind != "regression":
            raise UserError("agent np is a regressor: use it on gp-regression or sinusoid")
        dx, dy = dist.x_shape[0], dist.y_dim
        self.cfg = cfg
        self.det_encoder = mlp(dx + dy, cfg.hidden, cfg.encoder_layers, cfg.hidden)
        self.lat_encoder = mlp(dx + dy, cfg.hidden, cfg.encoder_layers, cfg.hidden)
        self.lat_head = nn.Linear(cfg.hidden, 2 * cfg.latent)
        self.decoder = mlp(dx + cfg.hidden + cfg.latent, cfg.hidden, cfg.decoder_layers, 2 * dy)
        self.register_buffer("noise_rng", stream_state())  # training's z draws, saved for resumes

    def latent_dist(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | {(x, y)}): mean and std [N, Z] of a set [N, M, d]."""
        mu, s = self.lat_head(self.lat_encoder(torch.cat([x, y], -1)).mean(-2)).chunk(2, -1)
        return mu, 0.1 + 0.9 * torch.sigmoid(s)

    def adapt(self, xs, ys, steps=None) -> LatentState:
        return LatentState((self.det_encoder(torch.cat([xs, ys], -1)).mean(-2), *self.latent_dist(xs, ys)))

    def decode(self, r: torch.Tensor, z: torch.Tensor, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) [..., N, Q, dy] for codes r [N, R], latents z [..., N, Z], targets xq [N, Q, dx]."""
        lead, q = z.shape[:-2], xq.shape[-2]
        h = torch.cat([xq.expand(*lead, *xq.shape), r.unsqueeze(-2).expand(*lead, *r.shape[:-1], q, r.shape[-1]),
                       z.unsqueeze(-2).expand(*z.shape[:-1], q, z.shape[-1])], -1)
        mu, s = self.decoder(h).chunk(2, -1)
        return mu, 0.1 + 0.9 * F.softplus(s)

    def draws(self, state: LatentState, k: int) -> torch.Tensor:
        """k draws of z ~ q(z | C) [k, N, Z], from the fixed evaluation stream."""
        _, mu, sigma = state
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        eps = torch.randn((k, *mu.shape), generator=gen).to(mu.device)
        return mu + sigma * eps

    def sample_functions(self, state: LatentState, xq: torch.Tensor, k: int) -> torch.Tensor:
        """Means of k decoded draws [k, N, Q, dy]: k coherent functions per task."""
        return self.decode(state[0], self.draws(state, k), xq)[0]

    def predict(self, state: LatentState, xq: torch.Tensor) -> torch.Tensor:
        return self.sample_functions(state, xq, self.cfg.eval_samples).mean(0)

    def loglik(self, state: LatentState, xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        """Per-task joint predictive log-likelihood of the targets per target point [N] (MC over draws)."""
        mu, sigma = self.decode(state[0], self.draws(state, self.cfg.eval_samples), xq)
        ll = gaussian_logpdf(mu, sigma, yq).sum((-2, -1))
        return (torch.logsumexp(ll, 0) - math.log(ll.shape[0])) / (yq.shape[-2] * yq.shape[-1])

    def meta_loss(self, batch: Batch):
        xt = torch.cat([batch["xs"], batch["xq"]], -2)
        yt = torch.cat([batch["ys"], batch["yq"]], -2)
        r, mu_c, sig_c = self.adapt(batch["xs"], batch["ys"])
        mu_t, sig_t = self.latent_dist(xt, yt)
        eps = draw_from_state(self.noise_rng, lambda g: torch.randn(mu_t.shape, generator=g)).to(mu_t.device)
        mu, sigma = self.decode(r, mu_t + sig_t * eps, xt)
        ll = gaussian_logpdf(mu, sigma, yt).sum((-2, -1))
        kl = (torch.log(sig_c / sig_t) + (sig_t ** 2 + (mu_t - mu_c) ** 2) / (2 * sig_c ** 2) - 0.5).sum(-1)
        points = yt.shape[-2] * yt.shape[-1]
        loss = (kl - ll).mean() / points                                   # negative ELBO per target point
        return loss, {"loss": loss.item(), "kl": (kl.mean() / points).item(), "mse": ((mu - yt) ** 2).mean().item()}


NP_SPEC = AgentSpec("np", NPConfig, make_trainer_cls(NeuralProcess), load_learner(NeuralProcess), protocol=FEWSHOT,
                    curve_keys=("loss", "kl"))

"""Latent Embedding Optimization (LEO, Rusu et al. 2019): the support set is encoded to a
low-dimensional latent code, a decoder maps the code to the task network's weights, and the
inner loop takes its gradient steps on the code, not on the weights.

Classification (per class n of a task, on the embeddings e of a meta-learned Conv4):
    h_i        = W_enc e_i                                       # per support example [Z']
    (mu, s)_n  = mean over i in class n, j in the support of  r([h_i, h_j])   # relation net [2Z]
    z_n        = mu_n + exp(s_n) * eps (training) or mu_n        # latent [Z]
    w_n        = decoder(z_n)                                    # class n's weights [D]
    logits     = e w_n^T
Regression: one code per task from the mean of r(h([x_i, y_i])), decoded into every weight of
the target MLP (the MAML paper's 2 x 40 net; decoder bias at its init, as bias-HyperInit).

Inner loop: z <- z - alpha * grad_z (support loss of decoder(z)), `inner_steps` steps in training,
alpha meta-learned (LEO: initialised at 1), each code's gradient clipped to norm latent_clip. Outer loss: query loss after the steps
+ kl_weight * KL(q(z | support) || N(0, I)) + penalty_weight * ||stopgrad(z') - z||^2 (LEO's
encoder penalty: the encoder should already land near where the inner loop goes).
The evaluation reports 0, 1, 5, 10 latent steps (0: the decoded code, no step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.config import option
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls, task_loss
from metarl.functional import params_of
from metarl.protocols import FEWSHOT
from metarl.seeding import draw_from_state, stream_state
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import Conv4, bias_hyperinit, generated_mlp, mlp


@dataclass
class LEOConfig(FewShotConfig):
    iterations: int = option(5000, "meta-iterations", ge=1)
    latent: int = option(16, "latent code size Z (LEO on miniImageNet: 64)", ge=1)
    encoder_hidden: int = option(64, "encoder and relation-net units", ge=1)
    inner_steps: int = option(5, "latent gradient steps in meta-training (LEO: 5)", ge=1)
    inner_lr: float = option(1.0, "initial latent step size alpha, meta-learned (LEO: 1)", gt=0.0)
    kl_weight: float = option(1e-3, "weight of KL(q(z | support) || N(0, I))", ge=0.0)
    penalty_weight: float = option(1e-3, "weight of the encoder penalty ||stopgrad(z') - z||^2", ge=0.0)
    first_order: bool = option(False, "no second derivatives through the latent steps (LEO: second order)")
    latent_clip: float = option(1.0, "each task's latent gradient is scaled to at most this norm before its step "
                                     "(0 = off, as LEO): on regression an unbounded step can run away", ge=0.0)
    max_grad_norm: float = option(0.1, "clip the meta-gradient's norm (LEO's code: 0.1); a latent step can "
                                       "otherwise blow the decoded weights up", gt=0.0)
    hidden: int = option(40, "target MLP (regression): hidden units per layer", ge=1)
    layers: int = option(2, "target MLP (regression): hidden layers", ge=1)
    channels: int = option(64, "classification: Conv4 embedding channels", ge=1)


class LEOLearner(FewShotLearner):
    """state = decoded per-task weights after the latent steps: the target MLP's {w0, b0, ...}
    [N, ...] (regression) or the class weights {"w": [N, W, D]} (classification)."""
    gradient_steps = True

    def __init__(self, dist, cfg: LEOConfig):
        super().__init__(dist)
        self.cfg, self.ways = cfg, dist.ways
        z, hid = cfg.latent, cfg.encoder_hidden
        if dist.kind == "regression":
            self.target, self.flat = generated_mlp(dist, cfg.hidden, cfg.layers)
            self.encoder = mlp(dist.x_shape[0] + dist.y_dim, hid, 2, 2 * z)
            self.decoder = nn.Linear(z, self.flat.total)
            bias_hyperinit(self.decoder, self.flat.join(params_of(self.target), lead=0))
        else:
            self.embedding = Conv4(dist.x_shape[0], cfg.channels, 0)
            d = self.embedding.features
            self.encoder = nn.Linear(d, hid)
            self.relation = mlp(2 * hid, hid, 2, 2 * z)
            self.decoder = nn.Linear(z, d)
        self.log_alpha = nn.Parameter(torch.tensor(float(cfg.inner_lr)).log())
        self.register_buffer("noise_rng", stream_state())  # training's z samples, saved for resumes

    # ---- encode / decode ----------------------------------------------------------------------
    def encode(self, xs, ys) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_sigma) of the latent code of support inputs xs (classification: embeddings)
        and targets ys: [N, Z] (regression) or [N, W, Z] (one per class)."""
        if self.kind == "regression":
            return self.encoder(torch.cat([xs, ys], -1)).mean(-2).chunk(2, -1)
        h = self.encoder(xs)                                                       # [N, S, H]
        s = h.shape[1]
        pairs = torch.cat([h.unsqueeze(2).expand(-1, s, s, -1), h.unsqueeze(1).expand(-1, s, s, -1)], -1)
        per_example = self.relation(pairs).mean(2)                                 # [N, S, 2Z]
        onehot = F.one_hot(ys, self.ways).to(h.dtype)                              # [N, S, W]
        per_class = onehot.transpose(1, 2) @ per_example / onehot.sum(1).unsqueeze(-1)
        return per_class.chunk(2, -1)

    def decode(self, z: torch.Tensor) -> dict:
        if self.kind == "regression":
            return self.flat.split(self.decoder(z))
        return {"w": self.decoder(z)}                                              # [N, W, D]

    def _out(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return self.target.forward_with(params, x)
        return x @ params["w"].transpose(-1, -2)                                   # [N, Q, W] logits

    def _features(self, x):
        return x if self.kind == "regression" else self.embedding(x)

    # ---- adaptation ---------------------------------------------------------------------------
    def latent_steps(self, z0: torch.Tensor, xs_f, ys, steps: int) -> torch.Tensor:
        """`steps` gradient steps on the codes z [N, ...] of the support loss of their decoded
        weights; differentiable (second order, unless agent.first_order) when autograd is on."""
        outer = torch.is_grad_enabled()
        z = z0
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_()
            for _ in range(steps):
                loss = task_loss(self.kind, self._out(self.decode(z), xs_f), ys).sum()
                (g,) = torch.autograd.grad(loss, z, create_graph=outer and not self.cfg.first_order)
                if self.cfg.latent_clip:  # per task (and class): norm over the code's last dim
                    norm = g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    g = g * (self.cfg.latent_clip / norm).clamp(max=1.0)
                z = z - self.log_alpha.exp() * g
                if not outer:
                    z = z.detach().requires_grad_()
        return z if outer else z.detach()

    def _code(self, xs, ys) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.encode(xs, ys)
        if not self.training:
            return mu, mu, log_sigma
        eps = draw_from_state(self.noise_rng, lambda gen: torch.randn(mu.shape, generator=gen)).to(mu.device)
        return mu + log_sigma.exp() * eps, mu, log_sigma

    def adapt(self, xs, ys, steps=None):
        steps = self.cfg.inner_steps if steps is None else steps
        xs_f = self._features(xs)
        return self.decode(self.latent_steps(self._code(xs_f, ys)[0], xs_f, ys, steps))

    def predict(self, state, xq):
        return self._out(state, self._features(xq))

    def meta_loss(self, batch: Batch):
        xs_f = self._features(batch["xs"])
        z0, mu, log_sigma = self._code(xs_f, batch["ys"])
        z = self.latent_steps(z0, xs_f, batch["ys"], self.cfg.inner_steps)
        out = self._out(self.decode(z), self._features(batch["xq"]))
        query = task_loss(self.kind, out, batch["yq"]).mean()
        kl = 0.5 * (mu ** 2 + (2 * log_sigma).exp() - 2 * log_sigma - 1).sum(-1).mean()
        penalty = ((z.detach() - z0) ** 2).sum(-1).mean()
        loss = query + self.cfg.kl_weight * kl + self.cfg.penalty_weight * penalty
        metrics = {"loss": query.item(), "kl": kl.item(), "penalty": penalty.item(),
                   "alpha": self.log_alpha.exp().item()}
        if self.kind == "classification":
            metrics["accuracy"] = (out.argmax(-1) == batch["yq"]).float().mean().item()
        return loss, metrics

    def meta_update(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        loss, metrics = self.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        return metrics


LEO = AgentSpec("leo", LEOConfig, make_trainer_cls(LEOLearner), load_learner(LEOLearner), protocol=FEWSHOT,
                curve_keys=("loss", "accuracy"))

"""Few-shot generation: a VAE over drawings, meta-trained so that a few gradient steps on K
drawings of a new class turn it into a generator of that class.

A VAE rather than FIGR's GAN (Clouatre & Demers 2019): the ELBO is a stable objective for a
few-step inner loop, and its value after adaptation is itself a measure of how well the model
learned the class (a GAN has none). agent.mode:
  - maml: MAML over the VAE. The inner loop takes SGD steps on the support drawings' ELBO; the
    meta-objective is the adapted VAE's ELBO on the class's query drawings, so the meta-gradient
    asks directly for what the evaluation scores: a VAE that, after K drawings, models the
    class's other drawings. It may carry the class in the adapted weights or in z; which one
    shows in how often prior samples (agent.sample_z = prior) are recognised.
  - reptile: FIGR's recipe with a VAE (Nichol et al. 2018): Adam steps on one class's drawings,
    the init moved toward the adapted copy; first order, no query objective.
  - pretrain: the same VAE trained on all training drawings at once, the baseline, fine-tuned
    at evaluation as the reptile VAE is (Adam).

A generation task is one class: adapt on its K support drawings (env.shots), score on its query
drawings. VAE (28x28 drawings, pixel intensities as Bernoulli targets):
    encoder  x [B, 1, 28, 28] -> conv 32 /2 -> conv 64 /2 -> (mu, log var) [B, Z]
    decoder  z [B, Z] -> 64x7x7 -> deconv 32 x2 -> deconv 1 x2 -> logits [B, 1, 28, 28]
    ELBO(x) = sum_pixels log Bernoulli(x | decoder(z)) - KL(q(z | x) || N(0, I)), z ~ q(z | x)

Evaluation, per held-out task (the task's env.ways classes, the first one the target), after
0 ... eval_steps fine-tuning steps on the target's support drawings:
  - recognised: the share of `gen_samples` generated drawings (decoder means of z drawn as
    agent.sample_z says) that an evaluator classifier, trained on the held-out classes' real
    drawings (blurred at random: train_evaluator), puts in the target class among the task's
    classes (chance 1 / ways);
  - ELBO: the adapted VAE's ELBO per drawing (nats) on the target's query drawings.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from metarl.config import option
from metarl.errors import UserError
from metarl.eval.result import GRADIENT_STEPS, Curve, result
from metarl.eval.stats import mean_ci
from metarl.eval.trials import task_scores
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, FewShotTrainer, load_learner, make_trainer_cls
from metarl.fewshot.core import task_generator
from metarl.functional import adapt_batch, meta_sgd_step_sizes, params_of
from metarl.protocols import FEWSHOT
from metarl.seeding import draw_from_state, stream_state
from metarl.training import AgentSpec


RECOGNISED = "generated drawings recognised as the target class"
ELBO = "held-out ELBO per drawing (nats)"


@dataclass
class GenConfig(FewShotConfig):
    mode: str = option("maml", "maml = MAML over the VAE (inner SGD on the support ELBO, meta-objective the query "
                               "ELBO after adaptation); reptile = Reptile over the VAE (FIGR's recipe); pretrain = "
                               "one VAE trained on all training drawings, fine-tuned with Adam at test time (the "
                               "baseline)", choices=("maml", "reptile", "pretrain"))
    iterations: int = option(3000, "meta-iterations (pretrain: Adam steps on a batch of all the batch's drawings)", ge=1)
    meta_batch: int = option(5, "classes (generation tasks) per meta-iteration", ge=1)
    meta_lr: float = option(1e-3, "maml, pretrain: Adam learning rate; reptile: outer step epsilon, annealed "
                                  "linearly to 0 (Reptile paper: 1)", gt=0.0)
    latent: int = option(16, "VAE latent size", ge=1)
    inner_lr: float = option(1e-3, "learning rate of the inner loop and of test-time fine-tuning: maml's SGD on "
                                   "the mean negative ELBO per drawing (nats, so small steps), reptile's and "
                                   "pretrain's Adam with beta1 = 0 (the Reptile paper's)", gt=0.0)
    inner_steps: int = option(5, "inner-loop steps per class and meta-iteration (maml: on the K support drawings; "
                                 "reptile: on all the class's drawings of the batch)", ge=1)
    first_order: bool = option(False, "maml: treat the inner gradients as constants (FOMAML)")
    learn_inner_lr: bool = option(False, "maml: one learned step size per weight, initialised at inner_lr and "
                                         "meta-trained with the VAE in log space (Meta-SGD, Li et al. 2017; log "
                                         "space keeps them positive and moves them by ratios, as steps this small "
                                         "need)")
    eval_steps: int = option(50, "fine-tuning steps on the K support drawings at evaluation (Reptile paper: 50)",
                             ge=0)
    gen_samples: int = option(10, "drawings generated per held-out task", ge=1)
    sample_z: str = option("support", "where generated drawings' z come from: support = the adapted encoder's "
                                      "posteriors of the K support drawings, moment-matched into one Gaussian (the "
                                      "class's region of latent space); prior = N(0, I), so the adapted decoder alone "
                                      "carries the class", choices=("support", "prior"))


class VAE(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.latent = latent
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(64 * 49, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, 64 * 49), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                                 nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def elbo(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ELBO [B] and its KL [B] of drawings x [B, 1, 28, 28], with noise eps [B, Z] for z."""
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (torch.exp(logvar) + mu ** 2 - 1 - logvar).sum(1)
        return rec - kl, kl

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): mean and log variance [B, Z] of drawings x [B, 1, 28, 28]."""
        return self.enc(x).chunk(2, -1)

    def class_latents(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z [M, Z] from the Gaussian that moment-matches the mixture of the posteriors of one
        class's drawings x [K, 1, 28, 28]: mean of the means, variance = spread of the means plus
        the mean posterior variance. eps [M, Z] standard normal."""
        mu, logvar = self.posterior(x)
        var = mu.var(0, unbiased=False) + logvar.exp().mean(0)
        return mu.mean(0) + var.sqrt() * eps

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """ELBO [B] (what functional_call runs in the maml inner loop)."""
        return self.elbo(x, eps)[0]

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(z))                                  # mean drawings [B, 1, 28, 28]


class FewShotGenerator(FewShotLearner):
    gradient_steps = True

    def __init__(self, dist, cfg: GenConfig):
        super().__init__(dist)
        if dist.kind != "classification" or tuple(dist.x_shape) != (1, 28, 28) or getattr(dist, "rotations", False):
            raise UserError("agent fewshot-gen generates 28x28 drawings of classes: use it on glyphs, or omniglot "
                            "without rotations")
        self.cfg = cfg
        self.vae = VAE(cfg.latent)
        if cfg.learn_inner_lr and cfg.mode != "maml":
            raise UserError(f"agent.learn_inner_lr is maml's (Meta-SGD); agent.mode={cfg.mode!r} has no meta-gradient "
                            "for step sizes")
        self.log_lr = (meta_sgd_step_sizes(params_of(self.vae), math.log(cfg.inner_lr)) if cfg.learn_inner_lr
                       else None)
        self.register_buffer("noise_rng", stream_state())     # training's z noise, saved for resumes
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))

    def step_sizes(self) -> dict[str, torch.Tensor]:
        """maml with learn_inner_lr: {VAE parameter name: its step sizes, shaped like it}."""
        return {k.replace("/", "."): v.exp() for k, v in self.log_lr.items()}

    def _noise(self, n: int) -> torch.Tensor:
        return draw_from_state(self.noise_rng, lambda g: torch.randn(n, self.cfg.latent, generator=g))

    def fine_tune(self, x: torch.Tensor, steps: int, noise):
        """The inner loop's rule (maml: SGD; reptile, pretrain: Adam with beta1 = 0) on the negative
        ELBO of drawings x [M, 1, 28, 28], from a copy of the VAE: yields (s, copy) after
        s = 0 .. steps steps (one module, updated in place). noise(n) -> z noise [n, Z]."""
        vae = copy.deepcopy(self.vae)
        if self.log_lr is not None:                                  # learned step sizes: SGD by hand
            lr, opt = {k: v.detach() for k, v in self.step_sizes().items()}, None
        elif self.cfg.mode == "maml":
            opt = torch.optim.SGD(vae.parameters(), lr=self.cfg.inner_lr)
        else:
            opt = torch.optim.Adam(vae.parameters(), lr=self.cfg.inner_lr, betas=(0.0, 0.999))
        yield 0, vae
        for s in range(1, steps + 1):
            with torch.enable_grad():
                loss = -vae.elbo(x, noise(x.shape[0]).to(x.device))[0].mean()
                vae.zero_grad(set_to_none=True)
                loss.backward()
            if opt is not None:
                opt.step()
            else:
                with torch.no_grad():
                    for k, p in vae.named_parameters():
                        p -= lr[k] * p.grad
            yield s, vae

    def meta_loss(self, batch: Batch):
        """maml: maml_loss; pretrain: the negative ELBO per drawing of every drawing in the batch."""
        if self.cfg.mode == "maml":
            return self.maml_loss(batch)
        x = torch.cat([batch["xs"], batch["xq"]], 1).flatten(0, 1)
        elbo, kl = self.vae.elbo(x, self._noise(x.shape[0]).to(x.device))
        loss = -elbo.mean()
        return loss, {"loss": loss.item(), "kl": kl.mean().item()}

    def maml_loss(self, batch: Batch):
        """maml: the negative query ELBO per drawing after inner_steps SGD steps on the support
        ELBO, for the first class of each task (support [N, K, ...], query [N, Q, ...]); the
        inner loop keeps one z noise draw for all its steps (a pure function of its data)."""
        xs, xq = first_class(batch)
        n, k, q = xs.shape[0], xs.shape[1], xq.shape[1]
        noise_s = self._noise(n * k).to(xs.device).view(n, k, -1)
        noise_q = self._noise(n * q).to(xs.device).view(n, q, -1)
        loss_fn = lambda params, d: -functional_call(self.vae, params, d).mean()  # noqa: E731
        lr = self.cfg.inner_lr if self.log_lr is None else self.step_sizes()
        adapted = adapt_batch(loss_fn, params_of(self.vae), (xs, noise_s), self.cfg.inner_steps, lr,
                              self.cfg.first_order)
        elbo = vmap(lambda p, d: functional_call(self.vae, p, d))(adapted, (xq, noise_q))       # [N, Q]
        loss = -elbo.mean()
        return loss, {"loss": loss.item()}

    def meta_update(self, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        if self.cfg.mode != "reptile":                               # a gradient step on meta_loss
            metrics = super().meta_update(batch, optimizer)
            self.meta_steps += 1
            return metrics
        xs, xq = first_class(batch)
        phi, losses, kls = [], [], []
        for x in torch.cat([xs, xq], 1):                                   # one class's drawings [K + Q, ...]
            for _, vae in self.fine_tune(x, self.cfg.inner_steps, self._noise):
                pass
            with torch.no_grad():
                elbo, kl = vae.elbo(x, self._noise(x.shape[0]).to(x.device))
            losses.append(-elbo.mean().item())
            kls.append(kl.mean().item())
            phi.append([p.detach() for p in vae.parameters()])
        anneal = max(0.0, 1.0 - self.meta_steps.item() / self.cfg.iterations)
        optimizer.zero_grad(set_to_none=True)
        for i, p in enumerate(self.vae.parameters()):
            p.grad = anneal * (p.detach() - torch.stack([f[i] for f in phi]).mean(0))
        optimizer.step()
        self.meta_steps += 1
        return {"loss": sum(losses) / len(losses), "kl": sum(kls) / len(kls)}

    def evaluate_tasks(self, dist, num_tasks: int, seed: int, device, out: Path | None = None) -> dict:
        """Its own evaluation protocol (metarl eval calls it instead of query accuracy)."""
        return evaluate_generation(self, dist, num_tasks, seed, device, out)


def first_class(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The support [N, K, 1, 28, 28] and query [N, Q, 1, 28, 28] drawings of each task's first class."""
    w = batch["classes"].shape[1]
    k, q = batch["xs"].shape[1] // w, batch["xq"].shape[1] // w
    return batch["xs"].view(-1, w, k, 1, 28, 28)[:, 0], batch["xq"].view(-1, w, q, 1, 28, 28)[:, 0]


class GenTrainer(FewShotTrainer):
    def make_optimizer(self):
        if self.cfg.mode == "reptile":
            return torch.optim.SGD(self.learner.parameters(), lr=self.cfg.meta_lr)
        return torch.optim.Adam(self.learner.parameters(), lr=self.cfg.meta_lr)


def evaluator_net(classes: int) -> nn.Sequential:
    """Conv4's layout with running batch-norm statistics, so that in eval mode each drawing is
    classified on its own (the few-shot Conv4 normalises with each batch's statistics)."""
    layers, c = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)]
        c = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32, classes))


BLURS = (0.0, 0.5, 1.0, 1.5)  # Gaussian blur sigmas (pixels) the evaluator trains on


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Drawings x [B, 1, 28, 28] blurred by a Gaussian of std sigma pixels (5x5 kernel)."""
    if sigma == 0:
        return x
    k = torch.exp(-torch.arange(-2.0, 3.0, device=x.device) ** 2 / (2 * sigma ** 2))
    k = k[:, None] * k[None] / k.sum() ** 2
    return F.conv2d(x, k.view(1, 1, 5, 5), padding=2)


def train_evaluator(dist, device, seed: int, epochs: int = 4) -> tuple[nn.Module, dict]:
    """A classifier of the held-out (test-split) classes, trained on their real drawings (all
    but the last 4 of each class), each blurred by a sigma drawn from BLURS: a VAE draws mean
    images, which are blurred, and a classifier trained on sharp drawings alone scores sharpness
    rather than the class (sigma 1 takes such a classifier from 97% to 42% on real drawings).
    -> (net, {sigma: its accuracy on those last 4 drawings, so blurred, among env.ways classes
    (the drawing's own and ways - 1 others at random)}): the ceiling of the recognition score."""
    lo, hi = dist.bounds["test"]
    imgs = dist.images[lo:hi].to(device, torch.float32) / 255                         # [C, D, 28, 28]
    c, d = imgs.shape[:2]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = evaluator_net(c).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = imgs[:, : d - 4].reshape(-1, 1, 28, 28)
    y = torch.arange(c, device=device).repeat_interleave(d - 4)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(64):
            xb = blur(x[idx.to(device)], BLURS[int(torch.randint(len(BLURS), (1,), generator=g))])
            loss = F.cross_entropy(net(xb), y[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    own = torch.arange(c, device=device).repeat_interleave(4)
    others = (torch.rand(own.shape[0], c, generator=g).argsort(1)[:, :dist.ways]).to(device)
    others = torch.where(others == own.unsqueeze(1), others[:, -1:], others)[:, :dist.ways - 1]
    pick = torch.cat([own.unsqueeze(1), others], 1)                                       # own class first
    held = {}
    with torch.no_grad():
        for sigma in BLURS:
            logits = net(blur(imgs[:, d - 4:].reshape(-1, 1, 28, 28), sigma))                 # [C * 4, C]
            held[sigma] = (logits.gather(1, pick).argmax(-1) == 0).float().mean().item()
    return net, held


def evaluate_generation(learner: FewShotGenerator, dist, num_tasks: int, seed: int, device,
                        out: Path | None = None) -> dict:
    """{agent: recognised result (z as agent.sample_z says), agent (ELBO): ELBO result, agent
    (z from the other source): recognised} on num_tasks held-out tasks, the evaluator's own
    accuracy, and (with out) a PNG of support and generated drawings."""
    device = torch.device(device)
    evaluator, evaluator_acc = train_evaluator(dist, device, seed)
    lo = dist.bounds["test"][0]
    gen = task_generator(seed, "test", device)
    noise_gen = torch.Generator().manual_seed(seed)
    noise = lambda n: torch.randn(n, learner.cfg.latent, generator=noise_gen)  # noqa: E731
    steps = sorted({s for s in (0, 1, 5, 10, 20, 50, learner.cfg.eval_steps) if s <= learner.cfg.eval_steps})
    other = "prior" if learner.cfg.sample_z == "support" else "support"
    rec, rec_other, elbo = ({s: [] for s in steps} for _ in range(3))
    grid = []
    learner.eval()
    for t in range(num_tasks):
        b = dist.sample(1, gen, "test", query=getattr(dist, "eval_query", None))
        w = b["classes"].shape[1]
        xs = b["xs"][0].view(w, -1, 1, 28, 28)[0]
        xq = b["xq"][0].view(w, -1, 1, 28, 28)[0]
        classes = (b["classes"][0] - lo).to(device)                                  # task classes, target first
        for s, vae in learner.fine_tune(xs, learner.cfg.eval_steps, noise):
            if s not in rec:
                continue
            with torch.no_grad():
                eps = noise(learner.cfg.gen_samples).to(device)
                drawn, drawn_other = (vae.generate(vae.class_latents(xs, eps) if src == "support" else eps)
                                      for src in (learner.cfg.sample_z, other))
                for r, d in ((rec, drawn), (rec_other, drawn_other)):
                    r[s].append((evaluator(d)[:, classes].argmax(-1) == 0).float().mean())  # target among [W]
                elbo[s].append(vae.elbo(xq, noise(xq.shape[0]).to(device))[0].mean())
                if s == learner.cfg.eval_steps and len(grid) < 6:
                    grid.append((xs.cpu(), drawn.cpu()))
    name = "fewshot-gen"
    results = {}
    for label, metric, per, src in ((name, RECOGNISED, rec, learner.cfg.sample_z),
                                    (f"{name} (ELBO)", ELBO, elbo, learner.cfg.sample_z),
                                    (f"{name} (z from {other})", RECOGNISED, rec_other, other)):
        vals = {s: torch.stack(v) for s, v in per.items()}
        curve = Curve(GRADIENT_STEPS, metric, [{"x": s, **mean_ci(vals[s])} for s in steps]).to_json()
        last = vals[steps[-1]]
        results[label] = {**result(metric, mean_ci(last), curve, task_scores(last)),
                          "evaluator_accuracy_on_real": evaluator_acc[0.0],
                          "evaluator_accuracy_on_blurred_real": {str(k): v for k, v in evaluator_acc.items()},
                          "sample_z": src, "chance": 1 / dist.ways}
    if out is not None and grid:
        samples_plot(grid, out)
    return results


def samples_plot(grid: list, out: Path) -> Path:
    from metarl.eval.plots import pyplot
    plt = pyplot()
    k, m = grid[0][0].shape[0], grid[0][1].shape[0]
    fig, axes = plt.subplots(len(grid), k + m, figsize=((k + m) * 0.7, len(grid) * 0.75))
    for r, (sup, drawn) in enumerate(grid):
        for c, img in enumerate(list(sup) + list(drawn)):
            ax = axes[r, c]
            ax.imshow(img[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == k:
                ax.spines[:].set_color("C1")
    fig.suptitle(f"held-out classes: {k} support drawing(s), then {m} generated", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


FEWSHOT_GEN = AgentSpec("fewshot-gen", GenConfig, make_trainer_cls(FewShotGenerator, GenTrainer),
                        load_learner(FewShotGenerator), protocol=FEWSHOT, curve_keys=("loss", "kl"))

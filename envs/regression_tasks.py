"""Few-shot regression task families, batched in torch.

sinusoid (MAML paper, Finn et al. 2017, section 5.1): y = A sin(x - phi), A ~ U[0.1, 5],
    phi ~ U[0, pi], x ~ U[-5, 5]; K support points (shots) and Q query points per task.
    env.task_ids = T > 0 is the non-mutually-exclusive variant of Yin et al. 2020: T fixed
    amplitudes, and each input is [x, one-hot id of the amplitude] (xs [N, K, 1 + T]).
gp-regression (CNP paper, Garnelo et al. 2018): functions drawn from a GP prior with a
    squared-exponential kernel, k(x, x') = sigma_f^2 exp(-(x - x')^2 / (2 l^2)), x ~ U[-2, 2].
Task batches follow metarl.fewshot.core: xs [N, K, 1], ys [N, K, 1], xq [N, Q, 1], yq [N, Q, 1].
With grid=True the query inputs are an evenly spaced grid over the input range (for plots).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import FEWSHOT_SPLITS, Batch, FewShotDistribution, FewShotSpec


def _check_split(split: str) -> None:
    if split not in FEWSHOT_SPLITS:
        raise ValueError(f"split must be one of {FEWSHOT_SPLITS}, got {split!r}")


def _inputs(n: int, count: int, low: float, high: float, gen: torch.Generator, grid: bool) -> torch.Tensor:
    if grid:
        return torch.linspace(low, high, count, device=gen.device).view(1, count, 1).expand(n, count, 1)
    return low + (high - low) * torch.rand(n, count, 1, generator=gen, device=gen.device)


@dataclass
class SinusoidConfig:
    shots: int = option(10, "K: support points per task", ge=1)
    query: int = option(10, "query points per task during meta-training", ge=1)
    eval_query: int = option(100, "query points per task during evaluation", ge=1)
    amp_low: float = option(0.1, "amplitude ~ U[amp_low, amp_high]", gt=0.0)
    amp_high: float = option(5.0, "amplitude ~ U[amp_low, amp_high]", gt=0.0)
    phase_low: float = option(0.0, "phase ~ U[phase_low, phase_high]")
    phase_high: float = option(math.pi, "phase ~ U[phase_low, phase_high]")
    x_low: float = option(-5.0, "inputs ~ U[x_low, x_high]")
    x_high: float = option(5.0, "inputs ~ U[x_low, x_high]")
    task_ids: int = option(0, "non-mutually-exclusive variant (Yin et al. 2020): > 0 gives each task one of this "
                              "many amplitudes, evenly spaced in [amp_low, amp_high], at phase phase_low, and appends "
                              "the amplitude's one-hot id to every input, so a network can tell the training tasks "
                              "apart from x alone; ids 3, 7, 11, ... are the test tasks, 1, 9, 17, ... the validation ones",
                           ge=0)


class SinusoidDistribution(FewShotDistribution):
    kind = "regression"
    y_dim = 1

    def __init__(self, cfg: SinusoidConfig):
        for lo, hi in (("amp_low", "amp_high"), ("phase_low", "phase_high"), ("x_low", "x_high")):
            if not getattr(cfg, hi) > getattr(cfg, lo):
                raise UserError(f"env.{hi}={getattr(cfg, hi)} must be greater than env.{lo}={getattr(cfg, lo)}")
        if 0 < cfg.task_ids < 4:
            raise UserError(f"env.task_ids={cfg.task_ids}: use 0 (the ordinary family) or at least 4 ids "
                            f"(ids 3, 7, ... are held out for testing, 1, 9, ... for validation)")
        self.cfg = cfg
        self.eval_query = cfg.eval_query
        self.x_shape = (1 + cfg.task_ids,)
        ids = torch.arange(cfg.task_ids)
        test, val = ids % 4 == 3, ids % 8 == 1                  # 3, 7, 11, ... for test; 1, 9, 17, ... for val
        self.ids = {"train": ids[~(test | val)], "val": ids[val], "test": ids[test]}

    def sample(self, n: int, generator: torch.Generator, split: str = "train", *, shots: int | None = None,
               query: int | None = None, grid: bool = False) -> Batch:
        """Parametric family: the split is the generator stream (metarl.fewshot.core.task_generator);
        with env.task_ids, also the set of amplitude ids drawn from."""
        _check_split(split)
        c, dev = self.cfg, generator.device
        k, q = shots or c.shots, query or c.query
        if c.task_ids:
            ids = self.ids[split].to(dev)
            tid = ids[torch.randint(len(ids), (n,), generator=generator, device=dev)]
            amp = (c.amp_low + (c.amp_high - c.amp_low) * tid / (c.task_ids - 1)).view(n, 1, 1)
            phase = torch.full((n, 1, 1), c.phase_low, device=dev)
        else:
            amp = c.amp_low + (c.amp_high - c.amp_low) * torch.rand(n, 1, 1, generator=generator, device=dev)
            phase = c.phase_low + (c.phase_high - c.phase_low) * torch.rand(n, 1, 1, generator=generator, device=dev)
        xs = _inputs(n, k, c.x_low, c.x_high, generator, False)
        xq = _inputs(n, q, c.x_low, c.x_high, generator, grid)
        out = {"xs": xs, "ys": amp * torch.sin(xs - phase), "xq": xq, "yq": amp * torch.sin(xq - phase),
               "amplitude": amp.view(n), "phase": phase.view(n)}
        if c.task_ids:
            code = torch.nn.functional.one_hot(tid, c.task_ids).float().unsqueeze(1)      # [N, 1, T]
            out["xs"] = torch.cat([xs, code.expand(n, k, -1)], -1)
            out["xq"] = torch.cat([xq, code.expand(n, q, -1)], -1)
        return out


@dataclass
class GPConfig:
    shots: int = option(10, "context points per task; 0 draws it per meta-batch ~ U[context_min, context_max]", ge=0)
    context_min: int = option(3, "fewest context points when shots=0 (CNP paper: 3)", ge=1)
    context_max: int = option(97, "most context points when shots=0 (CNP paper: 97)", ge=1)
    query: int = option(50, "target points per task during meta-training", ge=1)
    eval_query: int = option(100, "target points per task during evaluation", ge=1)
    points: int = option(0, "the (C)NP papers' tasks: `points` inputs per task, all of them targets and the first K "
                            "(shots, or the drawn context size) also the context, so the context is at most this; "
                            "query / eval_query then unused. 0 = context and targets drawn apart", ge=0)
    length_scale: float = option(0.4, "SE kernel length scale l", gt=0.0)
    sigma_f: float = option(1.0, "SE kernel signal standard deviation", gt=0.0)
    noise: float = option(0.02, "observation noise standard deviation (also keeps the Cholesky stable)", gt=0.0)
    x_low: float = option(-2.0, "inputs ~ U[x_low, x_high]")
    x_high: float = option(2.0, "inputs ~ U[x_low, x_high]")


class GPDistribution(FewShotDistribution):
    kind = "regression"
    x_shape = (1,)
    y_dim = 1

    def __init__(self, cfg: GPConfig):
        if not cfg.x_high > cfg.x_low:
            raise UserError(f"env.x_high={cfg.x_high} must be greater than env.x_low={cfg.x_low}")
        if cfg.context_max < cfg.context_min:
            raise UserError(f"env.context_max={cfg.context_max} must be >= env.context_min={cfg.context_min}")
        most = cfg.shots or cfg.context_max
        if cfg.points and most > cfg.points:
            what = f"env.shots={cfg.shots}" if cfg.shots else f"env.context_max={cfg.context_max}"
            raise UserError(f"{what} context points exceed env.points={cfg.points} target points: the context is "
                            "drawn from among the targets")
        self.cfg = cfg
        self.eval_query = cfg.eval_query

    def sample(self, n: int, generator: torch.Generator, split: str = "train", *, shots: int | None = None,
               query: int | None = None, grid: bool = False) -> Batch:
        """One joint GP draw over context + target inputs per task (float64 Cholesky). With
        env.points (and not grid) the targets are env.points inputs and the context their first K."""
        _check_split(split)
        c, dev = self.cfg, generator.device
        k = shots or c.shots
        if not k:
            k = int(torch.randint(c.context_min, c.context_max + 1, (1,), generator=generator, device=dev))
        within = bool(c.points) and not grid
        if within and k > c.points:
            raise ValueError(f"{k} context points exceed env.points={c.points}")
        if within:
            x = _inputs(n, c.points, c.x_low, c.x_high, generator, False)        # [N, P, 1]
        else:
            q = query or c.query
            x = torch.cat([_inputs(n, k, c.x_low, c.x_high, generator, False),
                           _inputs(n, q, c.x_low, c.x_high, generator, grid)], 1)  # [N, K+Q, 1]
        xd = x.double()
        cov = c.sigma_f ** 2 * torch.exp(-0.5 * (xd - xd.transpose(1, 2)) ** 2 / c.length_scale ** 2)
        cov = cov + c.noise ** 2 * torch.eye(x.shape[1], dtype=cov.dtype, device=dev)
        z = torch.randn(n, x.shape[1], 1, generator=generator, device=dev, dtype=torch.float64)
        y = (torch.linalg.cholesky(cov) @ z).float()
        if within:
            return {"xs": x[:, :k], "ys": y[:, :k], "xq": x, "yq": y}
        return {"xs": x[:, :k], "ys": y[:, :k], "xq": x[:, k:], "yq": y[:, k:]}


SINUSOID = FewShotSpec("sinusoid", SinusoidConfig, ("regression",), SinusoidDistribution)
GP_REGRESSION = FewShotSpec("gp-regression", GPConfig, ("regression",), GPDistribution)

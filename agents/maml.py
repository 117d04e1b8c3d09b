"""MAML for reinforcement learning (Finn et al. 2017): MAML-TRPO and MAML-PPO.

Read top to bottom: config -> policy network -> sampler (rollouts of a meta-batch, each task
with its own adapted parameters, in one batched env) -> inner loss and the functional inner
loop (metarl.functional.adapt_batch, vmapped over tasks) -> outer update (TRPO with
Hessian-vector products through the inner step, or a clipped ProMP-style objective) ->
held-out evaluation after 0, 1, 2, 3 gradient steps.

Shapes: N tasks in a meta-batch, R rollouts per task, H steps per rollout, D obs dim, A
action dim. A batched env holds N * R sub-envs, task-major (sub-env i runs task i // R).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from metarl.config import option
from metarl.errors import UserError
from metarl.eval.trials import first_success
from metarl.functional import Params, adapt, adapt_batch, params_of
from metarl.protocols import INNER_STEPS
from metarl.rl.batched_env import BatchedEnv, EnvSpec
from metarl.rl.distributions import box_bounds, make_head, unit_to_bounds
from metarl.rl.episodes import discounted_returns, gae
from metarl.rl.linear_baseline import fit_predict
from metarl.rl.trpo import gauss_newton_hvp, trpo_step
from metarl.seeding import make_generator
from metarl.tasks import Tasks, class_success, split_generator
from metarl.training import AgentSpec

LINE_SEARCH_PIECES = 5  # meta-batch pieces a line-search trial evaluates in turn (see trpo.line_search)


@dataclass
class MAMLConfig:
    iterations: int = option(500, "meta-iterations (outer updates)", ge=1)
    meta_batch: int = option(20, "tasks per meta-iteration", ge=1)
    rollouts: int = option(20, "rollouts per task, before and after adaptation", ge=1)
    hidden_size: int = option(100, "units per hidden layer", ge=1)
    layers: int = option(2, "hidden layers", ge=1)
    activation: str = option("relu", "hidden activation", choices=("relu", "tanh"))
    init_std: float = option(1.0, "initial action std (continuous actions)", gt=0.0)
    unit_actions: bool = option(True, "continuous actions: the policy acts in [-1, 1] per dimension, scaled to the "
                                      "env's bounds and clipped (rllab's normalize(), as in the MAML paper's code; "
                                      "a no-op on [-1, 1] boxes such as MuJoCo and Meta-World)")
    inner_lr: float = option(0.1, "inner-loop (adaptation) step size", gt=0.0)
    inner_steps: int = option(1, "gradient steps of adaptation during meta-training", ge=1)
    first_order: bool = option(False, "first-order MAML: no second derivatives through the inner step")
    lvc: bool = option(False, "TRPO outer step: ProMP's low-variance-curvature inner objective (pi / pi_old * A: "
                              "the same inner step, better curvature in the outer gradient); MAML-PPO always uses it")
    adapt_log_std: bool = option(True, "continuous actions: the inner step also adapts the action log-std "
                                       "(off: only the mean network adapts; the log-std is meta-learned)")
    gamma: float = option(0.99, "discount", ge=0.0, le=1.0)
    gae_lambda: float = option(1.0, "GAE lambda (1.0: returns minus the linear baseline)", ge=0.0, le=1.0)
    outer: str = option("trpo", "outer optimiser", choices=("trpo", "ppo"))
    max_kl: float = option(0.01, "TRPO: KL bound of the outer step", gt=0.0)
    cg_iters: int = option(10, "TRPO: conjugate-gradient iterations", ge=1)
    cg_damping: float = option(1e-5, "TRPO: damping added to the KL Hessian", ge=0.0)
    hvp_tasks: float = option(1.0, "TRPO: fraction of the meta-batch used for Hessian-vector products "
                                   "(lower is faster, noisier curvature; evenly spaced tasks, rotating "
                                   "with the iteration)", gt=0.0, le=1.0)
    ls_backtracks: int = option(15, "TRPO: line-search backtracking steps", ge=1)
    ls_ratio: float = option(0.8, "TRPO: line-search shrink factor", gt=0.0, lt=1.0)
    outer_lr: float = option(1e-3, "PPO: Adam learning rate of the outer step", gt=0.0)
    ppo_epochs: int = option(5, "PPO: outer gradient steps per meta-iteration", ge=1)
    clip: float = option(0.2, "PPO: ratio clip of the outer objective", gt=0.0)
    eval_steps: int = option(3, "gradient steps reported by metarl eval", ge=0)
    eval_lr: float = option(0.0, "metarl eval: step size of the first adaptation step (0 = inner_lr)", ge=0.0)
    eval_later_lr: float = option(0.0, "metarl eval: step size of steps 2, 3, ... (0 = that of the first; the MAML "
                                       "paper's code tests with 0.5 then 0.25 after training with 0.5)", ge=0.0)
    eval_rollouts: int = option(0, "metarl eval: rollouts per task and step (0 = rollouts; the MAML paper's code "
                                   "tests navigation with 40)", ge=0)
    eval_every: int = option(0, "Meta-World: every N iterations, play the evaluation protocol on eval_goals goals "
                                "of each held-out class and log heldout_success beside training success "
                                "(0 = off)", ge=0)
    eval_goals: int = option(2, "Meta-World, with eval_every: held-out goals per test class", ge=1, le=50)
    checkpoint_every: int = option(10, "iterations between checkpoints", ge=1)


class PolicyMLP(nn.Module):
    """obs [..., D] -> head output [..., P] (logits, or [mean, log_std])."""

    def __init__(self, obs_dim: int, action_space, cfg: MAMLConfig, generator: torch.Generator):
        super().__init__()
        act = nn.ReLU if cfg.activation == "relu" else nn.Tanh
        dims = [obs_dim] + [cfg.hidden_size] * cfg.layers
        self.body = nn.Sequential(*[m for i in range(cfg.layers) for m in (nn.Linear(dims[i], dims[i + 1]), act())])
        self.head = make_head(cfg.hidden_size, action_space, cfg.init_std)
        with torch.no_grad():  # seeded init, no global RNG
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight, generator=generator)
                    m.bias.zero_()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs))

    def sampler(self, params: Params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """fn(obs [b, D], noise [b(, A)]) -> head.dist(forward(obs)).sample_with(noise) under
        `params` (one task's), computed op for op but with the weights bound as plain tensors:
        on the few rows a simulation worker acts for at once (10 sub-envs of a 2x512 tanh MLP)
        the module calls cost about half of a call."""
        act = torch.relu if isinstance(self.body[1], nn.ReLU) else torch.tanh
        layers = [(params[f"body.{i}.weight"], params[f"body.{i}.bias"]) for i in range(0, len(self.body), 2)]
        w, b = params["head.linear.weight"], params["head.linear.bias"]
        std = params["head.log_std"].exp() if "head.log_std" in params else None

        def fn(obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            h = obs
            for lw, lb in layers:
                h = act(F.linear(h, lw, lb))
            out = F.linear(h, w, b)
            if std is None:  # Categorical: argmax(logp + Gumbel noise)
                return (F.log_softmax(out, -1) + noise).argmax(-1)
            return out + std * noise  # DiagGaussian: mean + std * standard normal noise
        return fn


class MAMLLearner:
    """The policy and everything MAML does with it, shared by training and evaluation."""

    def __init__(self, env: BatchedEnv, cfg: MAMLConfig, generator: torch.Generator):
        self.cfg = cfg
        self.net = PolicyMLP(env.obs_dim, env.action_space, cfg, generator).to(env.device)
        self.dist = self.net.head.dist
        space = env.action_space
        self.bounds = None  # (low [A], high [A]) when the policy acts in the unit box
        if cfg.unit_actions and isinstance(space, gym.spaces.Box):
            self.bounds = tuple(b.to(env.device) for b in box_bounds(space))
        self.step_size = self.step_sizes(cfg.inner_lr)

    def step_sizes(self, lr: float) -> float | dict[str, float]:
        """The inner step size: one scalar, or per parameter with 0 for the log-std (adapt_log_std off)."""
        if self.cfg.adapt_log_std:
            return lr
        return {k: 0.0 if k.endswith("log_std") else lr for k, _ in self.net.named_parameters()}

    def env_actions(self, a: torch.Tensor) -> torch.Tensor:
        """The policy's actions [B(, A)] -> the env's (scaled to its box under unit_actions)."""
        return a if self.bounds is None else unit_to_bounds(a, *self.bounds)

    # -- policy evaluation with shared params {name: [...]} or per-task params {name: [N, ...]}
    def forward(self, params: Params, obs: torch.Tensor, per_task: bool) -> torch.Tensor:
        """obs [N, ..., D] -> head output [N, ..., P]."""
        if not per_task:
            return functional_call(self.net, params, (obs,))
        return vmap(lambda p, o: functional_call(self.net, p, (o,)))(params, obs)

    @torch.no_grad()
    def rollout(self, env: BatchedEnv, params: Params, per_task: bool, generator: torch.Generator,
                rollouts: int | None = None) -> dict:
        """R rollouts of H steps in each of N tasks (env already holds the tasks): the env's
        EpisodeBatch [H, N * R] viewed per task. Returns obs [N, H, R, D], actions [N, H, R(, A)], rewards [N, H, R], and for envs with a success
        signal success [N, R] (1 where any step of the rollout succeeded) and first_success
        [N, R] (the step of its first success, H where none)."""
        R, H = rollouts or self.cfg.rollouts, env.horizon
        N = env.num_envs // R
        # The sampling noise of every step is drawn here, so the episode can run anywhere (inside
        # simulation workers for a ParallelEnv) and its actions do not depend on where.
        noise = self.net.head.draw_noise((H, env.num_envs), generator)
        policy = MLPRows(self.net, params, per_task, R, noise, self.bounds)
        with env.rollout_context():
            ep = env.run_policy(policy)

        def task_major(x):  # [H, N * R, ...] -> [N, H, R, ...]
            return x.view(H, N, R, *x.shape[2:]).transpose(0, 1).contiguous()
        out = {"obs": task_major(ep.obs), "actions": task_major(ep.actions), "rewards": task_major(ep.rewards)}
        if "success" in ep.info:  # 1 where any step of the rollout succeeded: [N, R]; its first step [N, R]
            hits = ep.info["success"].to(out["rewards"].device)
            out["success"] = hits.amax(0).view(N, R)
            out["first_success"] = first_success(hits).view(N, R)
        return out

    def advantages(self, data: dict) -> torch.Tensor:
        """GAE against a per-task linear baseline, normalised per task: [N, H, R]."""
        cfg = self.cfg
        N, H, R = data["rewards"].shape
        rew = data["rewards"].transpose(0, 1).reshape(H, N * R)
        zeros = torch.zeros_like(rew, dtype=torch.bool)
        ret = discounted_returns(rew, zeros, cfg.gamma).view(H, N, R).transpose(0, 1)
        values = fit_predict(data["obs"], ret).transpose(0, 1).reshape(H, N * R)
        adv, _ = gae(rew, values, zeros, cfg.gamma, cfg.gae_lambda)
        adv = adv.view(H, N, R).transpose(0, 1)
        mean, std = adv.mean((1, 2), keepdim=True), adv.std((1, 2), keepdim=True)
        return (adv - mean) / (std + 1e-8)

    def inner_loss(self, params: Params, data: dict) -> torch.Tensor:
        """Policy-gradient loss of ONE task: data obs [H, R, D], actions, adv [H, R].

        Vanilla -log pi * A (the MAML paper). With data["old_logp"] (the sampling policy's
        log-probs) it is -pi / pi_old * A instead: the same gradient at the sampling
        parameters, still valid after the meta-parameters move (ProMP's LVC objective)."""
        logp = self.dist(functional_call(self.net, params, (data["obs"],))).log_prob(data["actions"])
        if "old_logp" in data:
            return -((logp - data["old_logp"]).exp() * data["adv"]).mean()
        return -(logp * data["adv"]).mean()

    def adapt(self, params: Params, data: dict, per_task: bool, steps: int | None = None,
              first_order: bool | None = None, lr: float | None = None) -> Params:
        """Adapted params {name: [N, ...]} from rollouts `data` (obs, actions, adv with leading N),
        with step size lr (default inner_lr)."""
        cfg = self.cfg
        steps = cfg.inner_steps if steps is None else steps
        first_order = cfg.first_order if first_order is None else first_order
        size = self.step_size if lr is None else self.step_sizes(lr)
        batch = {k: data[k] for k in ("obs", "actions", "adv", "old_logp") if k in data}
        if not per_task:
            return adapt_batch(self.inner_loss, params, batch, steps, size, first_order)
        # Continue from per-task params: vmap the one-task adaptation over params and data.
        return vmap(lambda p, d: adapt(self.inner_loss, p, d, steps, size, first_order))(params, batch)

    @staticmethod
    def mean_episode_return(data: dict) -> torch.Tensor:
        """[N] mean undiscounted return of each task's rollouts."""
        return data["rewards"].sum(1).mean(1)


class MLPRows:
    """The MAML policy as a RowPolicy (metarl.rl.batched_env): the network, its parameters (shared
    {name: [...]} or per task {name: [N, ...]}, task n acting for sub-envs n * R .. n * R + R - 1)
    and the sampling noise noise [H, B, ...] drawn ahead. `first` is the sub-env offset of row 0
    within its task's block, for a slice that starts mid-task. A slice (rows(), what a
    simulation worker gets) acts through PolicyMLP.sampler, one per task it touches: a worker
    acts on a few sub-envs at a time, where functional_call's and the modules' own per-call cost
    would outweigh the network's."""

    def __init__(self, net: nn.Module, params: Params, per_task: bool, rollouts: int, noise: torch.Tensor,
                 bounds: tuple[torch.Tensor, torch.Tensor] | None, first: int = 0, sliced: bool = False):
        self.net, self.params, self.per_task, self.R = net, params, per_task, rollouts
        self.noise, self.bounds, self.first, self.sliced = noise, bounds, first, sliced
        self.samplers: list | None = None  # a slice's PolicyMLP.sampler per task, built on its first act()

    def rows(self, lo: int, hi: int) -> "MLPRows":
        """Sub-envs [lo, hi) as a CPU copy (sent to a simulation worker)."""
        cpu = lambda x: x.detach().to("cpu", copy=True)  # noqa: E731 (fresh storage to pickle)
        params, first = self.params, 0
        if self.per_task:
            t0, t1 = (self.first + lo) // self.R, (self.first + hi - 1) // self.R + 1
            params, first = {k: v[t0:t1] for k, v in params.items()}, (self.first + lo) % self.R
        net = copy.deepcopy(self.net).to("cpu").requires_grad_(False)  # the learner's may live on the GPU
        bounds = None if self.bounds is None else tuple(cpu(b) for b in self.bounds)
        return MLPRows(net, {k: cpu(v) for k, v in params.items()}, self.per_task, self.R,
                       cpu(self.noise[:, lo:hi]), bounds, first, sliced=True)

    def _task_samplers(self) -> list:
        """PolicyMLP.sampler of each task the slice touches (or one for shared parameters)."""
        if self.samplers is None:
            tasks = range(next(iter(self.params.values())).shape[0]) if self.per_task else [None]
            self.samplers = [self.net.sampler(self.params if i is None else {k: v[i] for k, v in self.params.items()})
                             for i in tasks]
        return self.samplers

    def act(self, obs: torch.Tensor, t: int) -> torch.Tensor:
        """obs [b, D] -> actions [b(, A)] of step t."""
        b, R, noise = obs.shape[0], self.R, self.noise[t]
        if self.sliced:  # one call per task the slice touches
            cuts = [0] if not self.per_task else list(range(0, b, R)) if self.first == 0 else [0, *range(R - self.first, b, R)]
            acts = [fn(obs[lo:hi], noise[lo:hi]) for fn, lo, hi in zip(self._task_samplers(), cuts, cuts[1:] + [b])]
            return acts[0] if len(acts) == 1 else torch.cat(acts)
        if not self.per_task:
            out = functional_call(self.net, self.params, (obs,))
        else:  # whole tasks: one vmapped call over [N, R, D]
            out = vmap(lambda p, o: functional_call(self.net, p, (o,)))(self.params, obs.view(b // R, R, -1))
            out = out.reshape(b, -1)
        return self.net.head.dist(out).sample_with(noise)

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        return a if self.bounds is None else unit_to_bounds(a, *self.bounds)


def repeat_tasks(tasks: Tasks, rollouts: int) -> Tasks:
    """Each task's parameters repeated for its R sub-envs (task-major)."""
    return {k: v.repeat_interleave(rollouts, 0) for k, v in tasks.items()}


class MAMLTrainer:
    outer = "trpo"  # the outer step this agent name stands for (MAMLPPOTrainer: "ppo")

    def __init__(self, env_spec: EnvSpec, env_cfg, cfg: MAMLConfig, seed: int, device: torch.device):
        if cfg.outer != self.outer:
            raise UserError(f"{AGENT_OF[self.outer]} uses agent.outer={self.outer}; use the agent "
                            f"{AGENT_OF[cfg.outer]} for the {cfg.outer.upper()} outer step")
        if cfg.outer == "ppo" and cfg.hvp_tasks != 1.0:
            raise UserError("agent.hvp_tasks applies to the TRPO outer step only; leave it at 1.0 with agent.outer=ppo")
        self.cfg, self.device = cfg, device
        self.dist = env_spec.make_distribution(env_cfg)
        self.dist.sample(cfg.meta_batch, torch.Generator())  # a bad meta-batch fails now, before workers start
        self.task_gen = split_generator(seed, "train", device)
        self.env_gen = make_generator(seed, "env", device)
        self.act_gen = make_generator(seed, "actions", device)
        self.env = env_spec.make_env(env_cfg, cfg.meta_batch * cfg.rollouts, device, self.env_gen)
        self.learner = MAMLLearner(self.env, cfg, make_generator(seed, "init"))
        self.net = self.learner.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.outer_lr) if cfg.outer == "ppo" else None
        self.steps_per_iteration = cfg.meta_batch * cfg.rollouts * self.env.horizon * (cfg.inner_steps + 1)
        self.iterations = cfg.iterations

    def _sample(self):
        """The meta-batch's tasks, its pre-adaptation rollouts (inner_steps rounds of them) and
        post-adaptation rollouts."""
        L, cfg = self.learner, self.cfg
        tasks = self.dist.sample(cfg.meta_batch, self.task_gen)
        self.env.set_tasks(repeat_tasks(tasks, cfg.rollouts))
        params = {k: v.detach() for k, v in params_of(self.net).items()}
        pre = L.rollout(self.env, params, False, self.act_gen)
        pre["adv"] = L.advantages(pre)
        if cfg.outer == "ppo" or cfg.lvc:
            with torch.no_grad():
                pre["old_logp"] = L.dist(L.forward(params, pre["obs"], False)).log_prob(pre["actions"])
        with torch.no_grad():
            adapted = L.adapt(params, pre, per_task=False, first_order=True)
        post = L.rollout(self.env, adapted, True, self.act_gen)
        post["adv"] = L.advantages(post)
        with torch.no_grad():
            post["old_dist"] = L.dist(L.forward(adapted, post["obs"], True)).detach()
            post["old_logp"] = post["old_dist"].log_prob(post["actions"])
        return tasks, pre, post

    @staticmethod
    def _tasks(pre: dict, post: dict, idx: torch.Tensor) -> tuple[dict, dict]:
        """The outer step's data of the tasks idx."""
        pre = {k: pre[k][idx] for k in ("obs", "actions", "adv", "old_logp") if k in pre}
        return pre, {k: post[k][idx] for k in ("obs", "actions", "adv", "old_logp", "old_dist")}

    def _post_outputs(self, pre: dict, post: dict) -> torch.Tensor:
        """Head outputs [n, H, R, P] on the post-adaptation rollouts, re-adapted from the current
        meta-parameters (differentiable through the inner step)."""
        L = self.learner
        return L.forward(L.adapt(params_of(self.net), pre, per_task=False), post["obs"], True)

    def _outer_terms(self, pre, post, out: torch.Tensor | None = None):
        """(surrogate ratio terms [n, H, R], KL(old || new) [n, H, R]) after re-adapting from the
        current meta-parameters (or of the given head outputs)."""
        dist = self.learner.dist(self._post_outputs(pre, post) if out is None else out)
        ratio = (dist.log_prob(post["actions"]) - post["old_logp"]).exp()
        return ratio, post["old_dist"].kl(dist)

    def hvp_tasks(self, it: int) -> torch.Tensor | None:
        """Tasks of the meta-batch whose KL the Hessian-vector products use at iteration it:
        tasks floor(k N / m) for k < m, offset by the iteration so each task takes its turn (the
        meta-batch is class-major on Meta-World; a fixed prefix would skip classes). None: all."""
        N = self.cfg.meta_batch
        m = max(1, round(self.cfg.hvp_tasks * N))
        if m >= N:
            return None
        return (torch.arange(m) * N // m + it) % N

    def _trpo(self, pre: dict, post: dict, it: int) -> dict[str, float]:
        """The TRPO outer step; curvature by Gauss-Newton products (exact here: the KL is 0 at the
        current parameters) on the KL of the tasks hvp_tasks(it)."""
        cfg, L = self.cfg, self.learner
        params = list(self.net.parameters())
        last = {}  # the first closure() call's head outputs, whose graph the full-batch curvature reuses

        def closure():
            last["out"] = out = self._post_outputs(pre, post)
            ratio, kl = self._outer_terms(pre, post, out)
            return -(ratio * post["adv"]).mean(), kl.mean()

        def curvature():
            idx = self.hvp_tasks(it)
            sub_pre, sub_post = (pre, post) if idx is None else self._tasks(pre, post, idx)
            out = last["out"] if idx is None else self._post_outputs(sub_pre, sub_post)
            return gauss_newton_hvp(out, params, lambda o: sub_post["old_dist"].kl(L.dist(o)).mean(), cfg.cg_damping)
        def parts():  # the closure a few tasks at a time, so a KL-bound line-search trial stops early
            n = post["adv"].shape[0]
            for idx in torch.arange(n).tensor_split(min(LINE_SEARCH_PIECES, n)):
                sub_pre, sub_post = self._tasks(pre, post, idx)
                ratio, kl = self._outer_terms(sub_pre, sub_post)
                share = len(idx) / n
                yield -(ratio * sub_post["adv"]).mean() * share, kl.mean() * share
        return trpo_step(params, closure, cfg.max_kl, cfg.cg_iters, cfg.cg_damping, cfg.ls_backtracks, cfg.ls_ratio,
                         curvature, keep_graph=self.hvp_tasks(it) is None, parts=parts)

    def train_iteration(self, it: int) -> dict[str, float]:
        cfg, L = self.cfg, self.learner
        t0 = time.perf_counter()
        tasks, pre, post = self._sample()
        t1 = time.perf_counter()
        out = {"pre_return": L.mean_episode_return(pre).mean().item(),
               "post_return": L.mean_episode_return(post).mean().item()}
        if "success" in post:  # Meta-World: fraction of rollouts with any-step success
            out.update(pre_success=pre["success"].mean().item(), post_success=post["success"].mean().item())
        if cfg.outer == "trpo":
            stats = self._trpo(pre, post, it)
            out.update({k: stats[k] for k in ("surrogate_before", "surrogate_after", "kl", "step_fraction", "ls_trials")})
        else:
            for _ in range(cfg.ppo_epochs):
                ratio, kl = self._outer_terms(pre, post)
                adv = post["adv"]
                loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            out.update({"surrogate_after": loss.item(), "kl": kl.mean().item()})
        self.last_timing = {"sample_s": t1 - t0, "update_s": time.perf_counter() - t1}
        if "success" in post:
            out.update(class_success(self.dist, tasks, post["success"].mean(1)))
        return out

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict() if self.opt else None,
                "generators": {k: getattr(self, k).get_state() for k in ("task_gen", "env_gen", "act_gen")}}

    def load_state_dict(self, d):
        self.net.load_state_dict(d["net"])
        if self.opt is not None and d["opt"] is not None:
            self.opt.load_state_dict(d["opt"])
        for k, s in d["generators"].items():
            getattr(self, k).set_state(s)


class MAMLEvalLearner:
    """The trained meta-policy for held-out evaluation: the MAML paper's protocol, where each
    adaptation step uses fresh rollouts from the current (adapted) policy."""

    def __init__(self, learner: MAMLLearner, cfg: MAMLConfig, generator: torch.Generator):
        self.learner, self.cfg, self.gen = learner, cfg, generator
        self.rollouts = cfg.eval_rollouts or cfg.rollouts
        first = cfg.eval_lr or cfg.inner_lr
        self.lrs = (first, cfg.eval_later_lr or first)  # step sizes of the first and of later steps

    def adaptation_returns(self, env: BatchedEnv, tasks: Tasks, steps: int) -> torch.Tensor:
        """Mean episode return per task before adaptation and after 1..steps gradient steps:
        [N, steps + 1]. env has N * rollouts sub-envs."""
        L = self.learner
        env.set_tasks(repeat_tasks(tasks, self.rollouts))
        params = {k: v.detach() for k, v in params_of(L.net).items()}
        per_task, out = False, []
        for k in range(steps + 1):
            data = L.rollout(env, params, per_task, self.gen, rollouts=self.rollouts)
            out.append(L.mean_episode_return(data))
            if k < steps:
                data["adv"] = L.advantages(data)
                with torch.no_grad():
                    params = L.adapt(params, data, per_task, steps=1, first_order=True, lr=self.lrs[min(k, 1)])
                per_task = True
        return torch.stack(out, 1)

    @torch.no_grad()
    def adapt_success(self, env: BatchedEnv, tasks: Tasks, adapt_episodes: int, eval_episodes: int):
        """Meta-World's protocol for N tasks (env: N * adapt_episodes sub-envs): adapt on
        adapt_episodes rollouts of the meta-policy, then score the adapted policy's first
        eval_episodes rollouts. -> {"curve": success [N, 2] at 0 and adapt_episodes episodes
        seen, and of each evaluation episode [N, E]: "success", "first_success" (its first
        successful step, horizon where none), "returns"}."""
        L, R = self.learner, adapt_episodes
        if eval_episodes > R:
            raise UserError(f"env.eval_episodes={eval_episodes} must not exceed env.adapt_episodes={R} for MAML agents")
        env.set_tasks(repeat_tasks(tasks, R))
        params = {k: v.detach() for k, v in params_of(L.net).items()}
        pre = L.rollout(env, params, False, self.gen, rollouts=R)
        pre["adv"] = L.advantages(pre)
        adapted = L.adapt(params, pre, per_task=False, first_order=True)
        post = L.rollout(env, adapted, True, self.gen, rollouts=R)
        E = eval_episodes
        success = post["success"][:, :E]
        return {"curve": torch.stack([pre["success"].mean(1), success.mean(1)], 1), "success": success,
                "first_success": post["first_success"][:, :E], "returns": post["rewards"].sum(1)[:, :E]}


def load_eval_policy(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: MAMLConfig, device, seed: int):
    env = env_spec.probe(env_cfg, device)
    learner = MAMLLearner(env, cfg, torch.Generator())
    learner.net.load_state_dict(checkpoint["trainer"]["net"])
    env.close()
    return MAMLEvalLearner(learner, cfg, make_generator(seed, "eval-actions", device))


AGENT_OF = {"trpo": "maml-trpo", "ppo": "maml-ppo"}


@dataclass
class MAMLPPOConfig(MAMLConfig):
    outer: str = option("ppo", "outer optimiser", choices=("trpo", "ppo"))


class MAMLPPOTrainer(MAMLTrainer):
    outer = "ppo"


MAML_TRPO = AgentSpec("maml-trpo", MAMLConfig, MAMLTrainer, load_eval_policy, protocol=INNER_STEPS,
                      curve_keys=("pre_return", "post_return"), select_key="post_return")
MAML_PPO = AgentSpec("maml-ppo", MAMLPPOConfig, MAMLPPOTrainer, load_eval_policy, protocol=INNER_STEPS,
                     curve_keys=("pre_return", "post_return"), select_key="post_return")

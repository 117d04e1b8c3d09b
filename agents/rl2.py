"""RL² (Duan et al. 2016): a GRU actor-critic whose hidden state carries what it learned
about the task across the episodes of a trial, meta-trained with PPO.

Read top to bottom: config -> network -> trainer (collect a trial per task, GAE over the
whole trial, PPO epochs over truncated-BPTT chunks) -> evaluation policy.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from metarl.config import option
from metarl.errors import UserError
from metarl.rl.batched_env import EnvSpec
from metarl.rl.distributions import make_head
from metarl.rl.episodes import EpisodeBatch, discounted_returns, gae, per_task_scale
from metarl.rl.linear_baseline import fit_predict
from metarl.rl.ppo import RunningMeanStd, ppo_loss
from metarl.rl.trial import (RL2History, RL2Input, TrialEnv, burn_in_mask, chunk_starts, rl2_input_dim,
                             run_trial)
from metarl.seeding import make_generator
from metarl.tasks import Tasks, class_success, split_generator
from metarl.training import AgentSpec


@dataclass
class RL2Config:
    total_steps: int = option(20_000_000, "env steps to train for (rounded up to whole iterations)", ge=1)
    num_envs: int = option(256, "parallel trials per iteration, one task each (on bandits and tabular MDPs 256 "
                                "beat 1,024 at the same steps: 4x the updates per sample; 1,024 was the default "
                                "before issue 24)", ge=1)
    hidden_size: int = option(128, "GRU hidden units", ge=1)
    lr: float = option(1e-3, "Adam learning rate (the RL² paper's; on bandits and tabular MDPs 3e-4 learned far "
                             "slower)", gt=0.0)
    lr_anneal: bool = option(False, "decay the learning rate linearly to 0 over training (the default before issue "
                                    "24: a constant lr learned further on bandits and tabular MDPs)")
    gamma: float = option(0.99, "discount over the whole trial", ge=0.0, le=1.0)
    gae_lambda: float = option(0.3, "GAE lambda (the RL² paper's code: 0.3; 0.95 was the default before issue 24)",
                               ge=0.0, le=1.0)
    clip: float = option(0.2, "PPO ratio clip", gt=0.0)
    epochs: int = option(4, "PPO epochs per iteration", ge=1)
    num_minibatches: int = option(4, "minibatches per epoch (split over trials / BPTT chunks)", ge=1)
    bptt_len: int = option(0, "truncated BPTT length in steps; 0 = the whole trial", ge=0)
    vf_coef: float = option(0.5, "value loss weight", ge=0.0)
    ent_coef: float = option(0.05, "entropy bonus weight (at 0.01 the policy collapsed early on bandits and "
                                   "tabular MDPs)", ge=0.0)
    ent_anneal: bool = option(False, "decay the entropy bonus linearly to 0 over training")
    max_grad_norm: float = option(0.5, "gradient norm clip", gt=0.0)
    normalize_returns: bool = option(True, "fit the value head to running-normalised returns")
    time_feature: bool = option(True, "give the policy t / trial_length as an input")
    reward_per_action: bool = option(False, "also input one_hot(prev action) * prev reward, so each action's "
                                            "rewards arrive on their own input line")
    reward_per_pair: bool = option(False, "also input prev obs x one_hot(prev action) * prev reward: with one-hot "
                                          "states (tabular MDPs) each state-action pair's rewards arrive on their "
                                          "own input line (obs_dim x actions lines)")
    privileged_critic: bool = option(False, "training only: the value head also sees the task's parameters "
                                            "(asymmetric actor-critic); the policy never does")
    separate_critic: bool = option(True, "the value head reads its own GRU instead of sharing the policy's (as the "
                                         "RL² paper's code did: with a shared GRU, bandits n=100 peaked early and "
                                         "drifted down); twice the recurrent compute; baseline=gru only (a linear "
                                         "baseline has no critic to separate); false was the default before issue 24")
    expected_rewards: bool = option(False, "training only: compute returns from E[r | task, s, a] instead of the "
                                           "sampled reward (same expected gradient, less variance)")
    init_std: float = option(1.0, "initial action std of the Gaussian policy (continuous actions only)", gt=0.0)
    reward_scale: float = option(1.0, "the previous reward enters the policy input times this (Meta-World: 0.1)",
                                 gt=0.0)
    encoder_layers: int = option(0, "tanh MLP layers between the RL² input and the GRU(s) (Meta-World+: 3 of 256); "
                                    "0 = the GRU reads the input directly", ge=0)
    encoder_size: int = option(256, "units per encoder layer", ge=1)
    head: str = option("linear", "policy head: linear (logits, or a Gaussian mean with a learned state-independent "
                                 "log std) or tanh (Box actions: tanh on [mean, log std], the log std "
                                 "state-dependent in (-1, 1), as Meta-World+'s RL²; init_std does not apply)",
                       choices=("linear", "tanh"))
    policy_head: str = option("linear", "linear: the head reads the GRU output; hyper: the GRU output generates the "
                                        "weights of a tanh layer of hyper_size units over the RL² input, which the "
                                        "head reads (a hypernetwork policy, Beck et al. 2022; bias-HyperInit)",
                              choices=("linear", "hyper"))
    hyper_size: int = option(64, "policy_head=hyper: units of the generated layer", ge=1)
    baseline: str = option("gru", "advantage baseline: gru (the learned value head) or linear (each trial's own "
                                  "least-squares fit of its discounted return on [x, x², t, t², t³, 1] of the RL² "
                                  "input x, as Meta-World+'s RL²; no value loss)", choices=("gru", "linear"))
    normalize_advantages: bool = option(True, "normalise advantages per minibatch")
    task_advantage_scale: bool = option(False, "divide each trial's advantages by their std over the trial, so that "
                                               "every task of a meta-batch weighs alike in the policy gradient "
                                               "whatever its reward scale (PopArt's per-task normalisation, Hessel "
                                               "et al. 2019, in its simplest form); before normalize_advantages")
    bptt_overlap: int = option(0, "truncated BPTT: consecutive chunks share this many steps, which the later chunk "
                                  "runs from the rollout state as burn-in, outside its loss", ge=0)
    minibatch_by_chunk: bool = option(False, "each minibatch holds one chunk position of every trial (chunk positions "
                                             "shuffled each epoch; replaces num_minibatches), as Meta-World+'s RL²")
    policy_in_workers: bool = option(True, "CPU simulators (MuJoCo, Meta-World): the policy GRU acts inside the "
                                           "simulation workers for a whole trial; false: in this process, with a "
                                           "round trip per step (the same samples, slower)")
    target_kl: float = option(0.0, "stop an iteration's PPO epochs at the first minibatch whose approximate KL "
                                   "from the sampling policy exceeds 1.5 x this, before its step (as SB3's PPO); "
                                   "0 = off, every epoch runs (Meta-World+'s RL²)", ge=0.0)
    eval_every: int = option(0, "Meta-World: every N iterations, play the evaluation protocol on eval_goals goals "
                                "of each held-out class and log heldout_success beside training success "
                                "(0 = off)", ge=0)
    eval_goals: int = option(2, "Meta-World, with eval_every: held-out goals per test class", ge=1, le=50)
    checkpoint_every: int = option(10, "iterations between checkpoints", ge=1)


class HyperLayer(nn.Module):
    """A tanh layer whose weights the task's memory generates (Beck et al. 2022's hypernetwork
    policy): z [..., H] (GRU output), x [..., D] (the RL² input) -> tanh(W(z) x + b(z)) [..., U],
    with [W, b] = G z + g. bias-HyperInit (Beck et al. 2023): G starts orthogonal with gain 0.01
    and g at an orthogonal init of [W, b] (b zero), so the layer starts as a well-scaled ordinary
    layer that the memory then modulates."""

    def __init__(self, z_dim: int, x_dim: int, units: int, generator: torch.Generator):
        super().__init__()
        self.x_dim, self.units = x_dim, units
        self.gen = nn.Linear(z_dim, units * (x_dim + 1))
        with torch.no_grad():
            nn.init.orthogonal_(self.gen.weight, gain=0.01, generator=generator)
            w = torch.empty(units, x_dim)
            nn.init.orthogonal_(w, gain=2 ** 0.5, generator=generator)
            self.gen.bias.copy_(torch.cat([w, torch.zeros(units, 1)], 1).view(-1))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        wb = self.gen(z).view(*z.shape[:-1], self.units, self.x_dim + 1)
        return torch.tanh((wb[..., :-1] @ x.unsqueeze(-1)).squeeze(-1) + wb[..., -1])


class GRUActorCritic(nn.Module):
    """x [T, B, D], h [1, B, H], task features f [B, F] -> head output [T, B, P], value [T, B], h' [1, B, H].

    The head output parameterises the action distribution (`self.pi.dist(out)`): logits for
    discrete actions, [mean, log_std] for continuous ones.

    encoder_layers > 0 puts a tanh MLP of encoder_size units between x and the GRU(s); head "tanh"
    bounds the head output (TanhGaussianHead). One GRU shared by a policy head and a linear value
    head, or with separate_critic a second GRU of the same size for the value head, so value
    regression does not shape the policy's memory; h then holds both states, [1, B, 2H]
    (policy's first). With task_dim > 0
    the value head is an MLP on [critic GRU output, f]: a privileged critic that knows the
    task, used only to train; the policy head sees its GRU output alone. policy_head "hyper": the
    head reads HyperLayer(GRU output, x) instead of the GRU output (`policy_features`)."""

    def __init__(self, input_dim: int, action_space, hidden_size: int, generator: torch.Generator,
                 task_dim: int = 0, init_std: float = 1.0, separate_critic: bool = False,
                 encoder_layers: int = 0, encoder_size: int = 256, head: str = "linear",
                 policy_head: str = "linear", hyper_size: int = 64):
        super().__init__()
        self.hidden_size, self.task_dim = hidden_size, task_dim
        dims = [input_dim] + [encoder_size] * encoder_layers
        self.encoder = (nn.Sequential(*[m for i in range(encoder_layers) for m in (nn.Linear(dims[i], dims[i + 1]),
                                                                                    nn.Tanh())])
                        if encoder_layers else None)
        self.gru = nn.GRU(dims[-1], hidden_size)
        self.critic_gru = nn.GRU(dims[-1], hidden_size) if separate_critic else None
        self.hyper = HyperLayer(hidden_size, input_dim, hyper_size, generator) if policy_head == "hyper" else None
        self.pi = make_head(hyper_size if self.hyper is not None else hidden_size, action_space, init_std, head)
        self.v = nn.Linear(hidden_size, 1)
        if task_dim:
            self.critic = nn.Sequential(nn.Linear(hidden_size + task_dim, hidden_size), nn.Tanh())
            with torch.no_grad():
                nn.init.orthogonal_(self.critic[0].weight, gain=2 ** 0.5, generator=generator)
                self.critic[0].bias.zero_()
        with torch.no_grad():  # seeded init, no global RNG
            for name, p in (named for g in (self.gru, self.critic_gru) if g is not None
                            for named in g.named_parameters()):
                if "weight" in name:
                    for chunk in p.chunk(3, 0):
                        nn.init.orthogonal_(chunk, generator=generator)
                else:
                    p.zero_()
            for m in self.encoder or ():
                if isinstance(m, nn.Linear):  # Xavier-uniform, as Meta-World+'s encoder
                    nn.init.xavier_uniform_(m.weight, generator=generator)
                    m.bias.zero_()
            nn.init.orthogonal_(self.pi.linear.weight, gain=0.01, generator=generator)
            nn.init.orthogonal_(self.v.weight, gain=1.0, generator=generator)
            self.pi.linear.bias.zero_()
            self.v.bias.zero_()

    def forward(self, x, h, task=None):
        inputs = x
        if self.encoder is not None:
            x = self.encoder(x)
        if self.critic_gru is None:
            out, h = self.gru(x, h)
            vin = out
        else:
            hp, hv = h.split(self.hidden_size, -1)
            out, hp = self.gru(x, hp.contiguous())
            vin, hv = self.critic_gru(x, hv.contiguous())
            h = torch.cat([hp, hv], -1)
        pi_out = self.pi(policy_features(self.hyper, out, inputs))
        if self.task_dim:
            if task is None:  # acting only (evaluation): the value is not needed
                return pi_out, out.new_zeros(out.shape[:2]), h
            z = torch.cat([vin, task.unsqueeze(0).expand(out.shape[0], -1, -1)], -1)
            return pi_out, self.v(self.critic(z)).squeeze(-1), h
        return pi_out, self.v(vin).squeeze(-1), h

    def initial_state(self, batch: int, device) -> torch.Tensor:
        width = self.hidden_size * (1 if self.critic_gru is None else 2)
        return torch.zeros(1, batch, width, device=device)


def policy_features(hyper: HyperLayer | None, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What the policy head reads: the GRU output [..., H], or with a hypernetwork policy the
    generated layer's output on the RL² input x [..., D]."""
    return out if hyper is None else hyper(out, x)


def restart_step(t: int, adapt: int, carry: int, horizon: int) -> tuple[bool, bool, bool]:
    """Meta-World+'s evaluation form at step t of a trial: (save the memory now: the end of the
    `adapt` adaptation steps; restore it now: each restarted evaluation episode's first step, after
    `carry` carried steps; act with the mode)."""
    k = t - adapt - carry  # steps into the restarted evaluation episodes
    return t == adapt, k >= 0 and k % horizon == 0, k >= 0


class GRURows:
    """The RL² policy as a RowPolicy (metarl.rl.batched_env), how RL2Trainer.collect acts (in
    simulation workers or in this process) and how Meta-World evaluations play RL² in the
    workers: the policy GRU and head, the trial's sampling noise [T, B(, A)] drawn ahead, and for
    its rows the hidden state and the trial's RL2History, from which it builds the RL² input each
    step as TrialEnv does (the critic is not needed to act).

    Evaluation forms (as RL2EvalPolicy and RL2RestartPolicy act step by step): deterministic
    takes the distribution's mode at every step; restart = (adapt_steps, carry_steps) samples
    through adaptation and carry_steps more, then restarts every `horizon` steps from the memory
    saved after adaptation and takes the mode."""

    def __init__(self, gru: nn.GRU, head: nn.Module, noise: torch.Tensor, horizon: int, spec: RL2Input,
                 encoder: nn.Module | None = None, hyper: HyperLayer | None = None, deterministic: bool = False,
                 restart: tuple[int, int] | None = None):
        self.gru, self.head, self.noise, self.encoder, self.hyper = gru, head, noise, encoder, hyper
        self.H, self.spec = horizon, spec
        self.deterministic, self.restart = deterministic, restart

    def rows(self, lo: int, hi: int) -> "GRURows":
        """Sub-envs [lo, hi): CPU copies with a fresh memory."""
        out = copy.copy(self)
        out.gru, out.head = (copy.deepcopy(m).to("cpu").requires_grad_(False) for m in (self.gru, self.head))
        for name in ("encoder", "hyper"):
            if getattr(self, name) is not None:
                setattr(out, name, copy.deepcopy(getattr(self, name)).to("cpu").requires_grad_(False))
        out.noise = self.noise[:, lo:hi].to("cpu", copy=True)
        return out

    def act(self, obs: torch.Tensor, t: int) -> torch.Tensor:
        """obs [b, O] of step t -> actions [b(, A)]."""
        if t == 0:
            self.h, self.history = obs.new_zeros(1, obs.shape[0], self.gru.hidden_size), RL2History(self.spec)
        greedy = self.deterministic
        if self.restart is not None:
            save, restore, greedy = restart_step(t, *self.restart, self.H)
            if save:
                self.saved = (self.h.clone(), self.history.state())
            if restore:
                self.h = self.saved[0].clone()
                self.history.restore(self.saved[1])
        inputs = x = self.history.inputs(obs)
        if self.encoder is not None:
            x = self.encoder(x)
        out, self.h = self.gru(x.unsqueeze(0), self.h)
        dist = self.head.dist(self.head(policy_features(self.hyper, out[0], inputs)))
        self.action = a = dist.mode() if greedy else dist.sample_with(self.noise[t])
        return a

    def observe(self, reward: torch.Tensor, t: int) -> None:
        done = torch.full_like(reward, float((t + 1) % self.H == 0), dtype=torch.bool)
        self.history.record(self.action, reward.clone(), done)

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        return a


class RL2Trainer:
    def __init__(self, env_spec: EnvSpec, env_cfg, cfg: RL2Config, seed: int, device: torch.device):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.dist = env_spec.make_distribution(env_cfg)
        self.dist.sample(cfg.num_envs, torch.Generator())  # a bad batch size fails now, before workers start
        self.task_gen = split_generator(seed, "train", device)
        self.env_gen = make_generator(seed, "env", device)
        self.act_gen = make_generator(seed, "actions", device)
        self.shuffle_gen = make_generator(seed, "minibatches")
        env = env_spec.make_env(env_cfg, cfg.num_envs, device, self.env_gen)
        self.trial_env = TrialEnv(env, env_spec.episodes_per_trial(env_cfg), cfg.time_feature,
                                  cfg.reward_per_action, cfg.reward_scale, cfg.reward_per_pair)
        T = self.trial_env.trial_length
        self.bptt = cfg.bptt_len or T
        if cfg.bptt_overlap and cfg.bptt_overlap >= self.bptt:
            raise UserError(f"agent.bptt_overlap={cfg.bptt_overlap} must be below agent.bptt_len={self.bptt}")
        if not cfg.bptt_overlap and T % self.bptt:
            raise UserError(f"agent.bptt_len={cfg.bptt_len} must divide the trial length {T}; "
                            f"use a divisor of {T} or 0 for the whole trial (or overlap chunks: agent.bptt_overlap)")
        self.starts = chunk_starts(T, self.bptt, cfg.bptt_overlap)
        chunks = cfg.num_envs * len(self.starts)
        if cfg.baseline == "linear" and cfg.privileged_critic:
            raise UserError("agent.baseline=linear has no learned critic; leave agent.privileged_critic off")
        if cfg.head == "tanh" and (env.discrete or len(env.action_space.shape) != 1):
            raise UserError(f"agent.head=tanh is for continuous (1-D Box) actions; env {env_spec.name!r} has "
                            f"{env.action_space}")
        if _separate_critic(cfg) and cfg.encoder_layers:
            raise UserError("agent.separate_critic would share the encoder with the policy; set "
                            "agent.separate_critic=false with agent.encoder_layers, or leave encoder_layers at 0")
        if not cfg.minibatch_by_chunk and cfg.num_minibatches > chunks:
            raise UserError(f"agent.num_minibatches={cfg.num_minibatches} exceeds the {chunks} sequences per "
                            f"iteration; lower it or raise agent.num_envs")
        task_dim = _task_dim(env, cfg, env_spec.name)
        self.net = _network(self.trial_env.input_dim, env.action_space, cfg, make_generator(seed, "init"),
                            task_dim).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, eps=1e-5)
        self.rms = RunningMeanStd(device) if cfg.normalize_returns and cfg.baseline == "gru" else None
        self.steps_per_iteration = cfg.num_envs * T
        self.iterations = -(-cfg.total_steps // self.steps_per_iteration)

    def train_iteration(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        frac = 1.0 - it / self.iterations
        if cfg.lr_anneal:
            for g in self.opt.param_groups:
                g["lr"] = cfg.lr * frac
        ent_coef = cfg.ent_coef * frac if cfg.ent_anneal else cfg.ent_coef
        t0 = time.perf_counter()
        tasks = self.dist.sample(cfg.num_envs, self.task_gen)
        self.trial_env.env.set_tasks(tasks)
        task_f = self.trial_env.env.task_features() if cfg.privileged_critic else None
        batch, h_starts = self.collect(tasks, task_f)
        t1 = time.perf_counter()
        # The trial is one RL² episode: returns flow across inner-episode boundaries.
        no_dones = torch.zeros_like(batch.dones)
        rewards = batch.mean_rewards if cfg.expected_rewards else batch.rewards
        values = batch.values if cfg.baseline == "gru" else linear_baseline_values(batch.obs, rewards, cfg.gamma)
        adv, ret = gae(rewards, values, no_dones, cfg.gamma, cfg.gae_lambda)
        if cfg.task_advantage_scale:  # ret, the value targets, keep their scale
            adv = per_task_scale(adv)
        if self.rms is not None:
            self.rms.update(ret)
            ret = (ret - self.rms.mean.float()) / self.rms.std.float()

        # [T, B, ...] -> [L, N] with N = B * C sequences (C chunks a trial, chunk-major), each
        # starting from its rollout state; in_loss [L, N] leaves out each chunk's burn-in steps.
        T, B = batch.rewards.shape
        L, C = self.bptt, len(self.starts)

        def chunk(t):
            return torch.stack([t[s:s + L] for s in self.starts], 1).reshape(L, C * B, *t.shape[2:])

        obs, act, old_logp, adv_c, ret_c = (chunk(t) for t in (batch.obs, batch.actions, batch.logprobs, adv, ret))
        in_loss = burn_in_mask(self.starts, L).repeat_interleave(B, 1).to(self.device) if cfg.bptt_overlap else None
        h0 = h_starts.reshape(C * B, -1)
        task_c = task_f.repeat(C, 1) if task_f is not None else None  # [C * B, F], chunk-major like h0
        N = C * B
        stats = []
        stop = False
        for _ in range(cfg.epochs):
            if stop:
                break
            for idx in self._minibatches(N, B, C):
                out, v, _ = self.net(obs[:, idx], h0[idx].unsqueeze(0),
                                     task_c[idx] if task_c is not None else None)
                dist = self.net.pi.dist(out)
                terms = {"logp": dist.log_prob(act[:, idx]), "old": old_logp[:, idx], "adv": adv_c[:, idx],
                         "v": v, "ret": ret_c[:, idx] if cfg.baseline == "gru" else v.detach(),
                         "ent": dist.entropy()}
                terms = {k: x.flatten() if in_loss is None else x[in_loss[:, idx]] for k, x in terms.items()}
                a = terms["adv"]
                if cfg.normalize_advantages:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                loss, st = ppo_loss(terms["logp"], terms["old"], a, terms["v"], terms["ret"], terms["ent"], cfg.clip,
                                    cfg.vf_coef if cfg.baseline == "gru" else 0.0, ent_coef)
                if cfg.target_kl and stats and st["approx_kl"].item() > 1.5 * cfg.target_kl:  # as SB3: stop unstepped
                    stop = True
                    break
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                self.opt.step()
                stats.append(torch.stack(list(st.values())))
        means = torch.stack(stats).mean(0).tolist()
        trial_returns = batch.rewards.sum(0)
        out = {"trial_return": trial_returns.mean().item()}
        self.last_timing = {"sample_s": t1 - t0, "update_s": time.perf_counter() - t1}
        if self.trial_env.success is not None:  # Meta-World: any-step success, mean over episodes / last episode
            out["success"] = self.trial_env.success.mean().item()
            out["success_last"] = self.trial_env.success[-1].mean().item()
        out.update(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac"), means))
        if cfg.target_kl:
            out["updates"] = len(stats)  # Adam steps taken before the KL stop
        out["loss"] = loss.item()
        if self.trial_env.success is not None:
            out.update(class_success(self.dist, tasks, self.trial_env.success.mean(0)))
        return out

    def _minibatches(self, N: int, B: int, C: int) -> list[torch.Tensor]:
        """One epoch's minibatches of sequence indices (chunk-major: sequence c * B + b is chunk c
        of trial b): num_minibatches random splits, or with minibatch_by_chunk one chunk position
        of every trial each, positions in random order."""
        if self.cfg.minibatch_by_chunk:
            order = torch.randperm(C, generator=self.shuffle_gen)
            return [(c * B + torch.arange(B)).to(self.device) for c in order.tolist()]
        return list(torch.randperm(N, generator=self.shuffle_gen).to(self.device).chunk(self.cfg.num_minibatches))

    @torch.no_grad()
    def collect(self, tasks: Tasks, task_f: torch.Tensor | None = None) -> tuple[EpisodeBatch, torch.Tensor]:
        """One trial in every sub-env for training: the policy (GRURows, its sampling noise drawn
        here) acts through run_trial, inside the simulation workers with agent.policy_in_workers,
        else in this process; the log-probs of its actions, the values (task features task_f
        [B, F] for a privileged critic) and each BPTT chunk's starting state come from one pass
        of the network over the recorded inputs, chunk by chunk as PPO replays them.
        Returns (EpisodeBatch [T, B] with logprobs, values and the env's mean_rewards if any,
        h_starts [C, B, H'])."""
        T, B, L = self.trial_env.trial_length, self.cfg.num_envs, self.bptt
        noise = self.net.pi.draw_noise((T, B), self.act_gen)
        rows = GRURows(self.net.gru, self.net.pi, noise, self.trial_env.env.horizon, self.trial_env.spec,
                       self.net.encoder, self.net.hyper)
        ep = run_trial(self.trial_env, rows, tasks, in_workers=self.cfg.policy_in_workers)
        x, actions, rewards = ep.obs.to(self.device), ep.actions.to(self.device), ep.rewards.to(self.device)
        h, outs, values, h_at = self.net.initial_state(B, self.device), [], [], {}
        cuts = sorted(set(self.starts) | {c * L for c in range(-(-T // L))}) + [T]  # PPO's chunks and L-step pieces
        for lo, hi in zip(cuts, cuts[1:]):
            h_at[lo] = h[0]
            out, v, h = self.net(x[lo:hi], h, task_f)
            outs.append(out)
            values.append(v)
        h_starts = [h_at[s] for s in self.starts]
        logp = self.net.pi.dist(torch.cat(outs)).log_prob(actions)
        v = torch.cat(values)
        if self.rms is not None:
            v = v * self.rms.std.float() + self.rms.mean.float()
        mean_rewards = None if ep.mean_rewards is None else ep.mean_rewards.to(self.device)
        return (EpisodeBatch(x, actions, rewards, ep.dones.to(self.device), logp, v, mean_rewards),
                torch.stack(h_starts))

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "rms": self.rms.state_dict() if self.rms is not None else None,
                "generators": {k: getattr(self, k).get_state() for k in
                               ("task_gen", "env_gen", "act_gen", "shuffle_gen")}}

    def load_state_dict(self, d):
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        if self.rms is not None:
            self.rms.load_state_dict(d["rms"])
        for k, s in d["generators"].items():
            getattr(self, k).set_state(s)


class RL2EvalPolicy:
    """The trained network as a TrialPolicy for `metarl eval`: samples its actions, or with
    deterministic takes the distribution's mode (the most likely arm; the Gaussian's mean), as
    stable-baselines3's evaluate_policy does by default. Exploration does not need the noise:
    the hidden state carries the trial's history."""

    def __init__(self, net: GRUActorCritic, num_actions: int, trial_length: int, cfg: RL2Config,
                 generator: torch.Generator, deterministic: bool = False):
        self.net, self.gen = net, generator
        self.deterministic = deterministic
        self.history = RL2History(RL2Input(num_actions, trial_length, cfg.time_feature, cfg.reward_per_action,
                                           cfg.reward_scale, cfg.reward_per_pair))

    def reset(self, num_envs: int, device) -> None:
        self.h = self.net.initial_state(num_envs, device)
        self.history.start()

    @torch.no_grad()
    def act(self, obs):
        out, _, self.h = self.net(self.history.inputs(obs).unsqueeze(0), self.h)
        dist = self.net.pi.dist(out[0])
        return dist.mode() if self.deterministic else dist.sample(self.gen)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        self.history.record(actions, rewards, dones)

    def row_policy(self, num_envs: int, steps: int, horizon: int) -> GRURows:
        """This form as a RowPolicy for a trial of `steps` steps in num_envs sub-envs (played in
        simulation workers by play_trial(in_workers=True)). Its noise is drawn from this policy's
        generator step by step, for the steps that sample only, as act() draws it: on continuous
        actions the trial is the one acting step by step plays, bit for bit in this process; in
        simulation workers each worker's GRU runs over its block of rows, which rounds the last
        bit unlike a pass over all rows, so the trial matches to float precision."""
        n = self._sampled_steps(steps)
        draws = [self.net.pi.draw_noise((num_envs,), self.gen) for _ in range(n)]
        noise = torch.stack(draws) if draws else self.net.pi.draw_noise((0, num_envs), self.gen)
        return GRURows(self.net.gru, self.net.pi, noise, horizon, self.history.spec, self.net.encoder,
                       self.net.hyper, deterministic=self.deterministic, restart=self._restart())

    def _sampled_steps(self, steps: int) -> int:
        return 0 if self.deterministic else steps

    def _restart(self) -> tuple[int, int] | None:
        return None


class RL2RestartPolicy(RL2EvalPolicy):
    """Meta-World+'s evaluation form of RL² (rainx0r/metaworld-algorithms): sampled actions over
    the first `adapt_steps` steps (the adaptation episodes, state carried throughout); then every
    evaluation episode of `horizon` steps restarts from the post-adaptation memory (hidden state,
    previous action, reward and done, and the time feature's clock) and acts with the mean
    action. Evaluation episodes then do not depend on each other, as Meta-World's tally assumes.

    carry_steps > 0 plays that many steps after adaptation first as the sampled form does (memory
    carried on, sampled actions: RL2EvalPolicy's evaluation episodes, drawn as it draws them) and
    restarts only after them: one trial plays both forms on the same adaptation episodes."""

    def __init__(self, net, num_actions, trial_length, cfg, generator, adapt_steps: int, horizon: int,
                 carry_steps: int = 0):
        super().__init__(net, num_actions, trial_length, cfg, generator)
        self.adapt_steps, self.horizon, self.carry_steps = adapt_steps, horizon, carry_steps

    def reset(self, num_envs: int, device) -> None:
        super().reset(num_envs, device)
        self.steps, self.saved = 0, None

    def _sampled_steps(self, steps: int) -> int:
        return min(steps, self.adapt_steps + self.carry_steps)

    def _restart(self) -> tuple[int, int]:
        return self.adapt_steps, self.carry_steps

    def act(self, obs):
        save, restore, self.deterministic = restart_step(self.steps, self.adapt_steps, self.carry_steps, self.horizon)
        if save:
            self.saved = (self.h.clone(), self.history.state())
        if restore:
            self.h = self.saved[0].clone()
            self.history.restore(self.saved[1])
        self.steps += 1
        return super().act(obs)


def _separate_critic(cfg: RL2Config) -> bool:
    """Whether the network has a critic GRU: only a learned critic (baseline gru) can have one."""
    return cfg.separate_critic and cfg.baseline == "gru"


def _network(input_dim: int, action_space, cfg: RL2Config, generator: torch.Generator, task_dim: int) -> GRUActorCritic:
    return GRUActorCritic(input_dim, action_space, cfg.hidden_size, generator, task_dim, cfg.init_std,
                          _separate_critic(cfg), cfg.encoder_layers, cfg.encoder_size, cfg.head, cfg.policy_head,
                          cfg.hyper_size)


def linear_baseline_values(x: torch.Tensor, rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Values [T, B] of Meta-World+'s RL² baseline: per trial (task), a least-squares fit of the
    discounted return over the whole trial (episode boundaries crossed, as the GRU sees it) on
    features of the RL² inputs x [T, B, D] and the step (metarl.rl.linear_baseline), in float64 (t³
    reaches 1e5 on a 5,000-step trial), evaluated on the same trial."""
    ret = discounted_returns(rewards, torch.zeros_like(rewards, dtype=torch.bool), gamma)
    v = fit_predict(x.transpose(0, 1).unsqueeze(2).double(), ret.T.unsqueeze(2).double())  # [B, T, 1]
    return v.squeeze(2).T.to(rewards.dtype)


def _task_dim(env, cfg: RL2Config, env_name: str) -> int:
    """Width of the privileged critic's task input (0 without one); checks the env supports
    the privileged options asked for."""
    feats = env.task_features()
    if cfg.privileged_critic and feats is None:
        raise UserError(f"env {env_name!r} does not expose task features; set agent.privileged_critic=false")
    for name in ("reward_per_action", "reward_per_pair"):
        if getattr(cfg, name) and not env.discrete:
            raise UserError(f"agent.{name} needs discrete actions; env {env_name!r} has continuous ones")
    if cfg.reward_per_pair:
        obs = env.reset()
        if not (((obs == 0) | (obs == 1)).all() and (obs.sum(-1) == 1).all()):
            raise UserError(f"agent.reward_per_pair needs one-hot observations (tabular-mdp); env {env_name!r} "
                            f"observes something else")
    if cfg.expected_rewards and not env.has_mean_reward:
        raise UserError(f"env {env_name!r} does not expose expected rewards; set agent.expected_rewards=false")
    return int(feats.shape[1]) if cfg.privileged_critic else 0


def load_eval_policy(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: RL2Config, device, seed: int,
                     deterministic: bool = False, form: str = "carry"):
    """The trained policy for evaluation. form "carry": one memory through the whole trial,
    sampled (or with deterministic, mode) actions; "restart": RL2RestartPolicy (Meta-World envs,
    which define env_cfg.adapt_episodes); "carry+restart": the carry form's trial, then the restart
    form's evaluation episodes (eval_branch)."""
    env = env_spec.probe(env_cfg, device)
    trial_length = env.horizon * env_spec.episodes_per_trial(env_cfg)
    input_dim = rl2_input_dim(env.obs_dim, env.num_actions, cfg.time_feature, cfg.reward_per_action,
                              cfg.reward_per_pair)
    net = _network(input_dim, env.action_space, cfg, torch.Generator(), _task_dim(env, cfg, env_spec.name)).to(device)
    net.load_state_dict(checkpoint["trainer"]["net"])
    net.eval()
    env.close()
    gen = make_generator(seed, "eval-actions", device)
    if form in ("restart", "carry+restart"):
        carry = env_cfg.eval_episodes * env.horizon if form == "carry+restart" else 0
        return RL2RestartPolicy(net, env.num_actions, trial_length, cfg, gen, env_cfg.adapt_episodes * env.horizon,
                                env.horizon, carry)
    return RL2EvalPolicy(net, env.num_actions, trial_length, cfg, gen, deterministic)


def extra_eval_policies(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: RL2Config, device, seed: int) -> dict:
    """{label: make_policy(env)} evaluated beside the sampled policy: its deterministic form, and
    on Meta-World the Meta-World+ form (RL2RestartPolicy), the one its published figures use."""
    forms = {"deterministic": lambda env: load_eval_policy(checkpoint, env_spec, env_cfg, cfg, device, seed, True)}
    if hasattr(env_cfg, "adapt_episodes"):
        forms[RESTART_LABEL] = lambda env: load_eval_policy(checkpoint, env_spec, env_cfg, cfg, device, seed,
                                                            form="restart")
    return forms


RESTART_LABEL = "metaworld+"  # results key "rl2 (metaworld+)": Meta-World+'s evaluation form


def eval_branch(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: RL2Config, device, seed: int):
    """Meta-World: (RESTART_LABEL, make_policy(env)) playing the sampled form's trial and then the
    Meta-World+ form's evaluation episodes from the same post-adaptation memory. Drawn from the
    same generator as each form alone, both forms' episodes equal their separate evaluations'."""
    return RESTART_LABEL, lambda env: load_eval_policy(checkpoint, env_spec, env_cfg, cfg, device, seed,
                                                       form="carry+restart")


RL2 = AgentSpec("rl2", RL2Config, RL2Trainer, load_eval_policy, extra_eval=extra_eval_policies,
                eval_branch=eval_branch)

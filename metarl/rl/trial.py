"""RL² trials over any BatchedEnv, and the sampler that collects them.

A trial is `episodes_per_trial` episodes in one task. The recurrent agent sees, at each
step, x = [obs, one_hot(prev_action), prev_reward, prev_done, t / trial_length], and its
hidden state is carried across episode boundaries within the trial and reset between trials.
Every path that feeds an RL² network (the trainer's TrialEnv, the simulation workers' GRURows,
evaluation, the SB3 peer, the gym adapter) builds that input with one `RL2Input` (whole trials:
`RL2Input.trial`) and, step by step, one `RL2History`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.rl.batched_env import BatchedEnv
from metarl.rl.episodes import EpisodeBatch
from metarl.tasks import Tasks


def rl2_input_dim(obs_dim: int, num_actions: int, time_feature: bool, reward_per_action: bool = False,
                  reward_per_pair: bool = False) -> int:
    """num_actions: the one-hot width for discrete actions, the action size for Box actions."""
    return (obs_dim + num_actions * (1 + int(reward_per_action)) + 2 + obs_dim * num_actions * int(reward_per_pair)
            + int(time_feature))


def rl2_inputs(obs, prev_action, prev_reward, prev_done, num_actions: int, time_frac: float | None,
               reward_per_action: bool = False, reward_scale: float = 1.0, prev_obs=None, reward_per_pair: bool = False):
    """Build the RL² input x [B, D] = [obs, a, prev_reward, prev_done, (one_hot(prev_action) *
    prev_reward), (prev_obs x one_hot(prev_action) * prev_reward), (time_frac)], where a is
    one_hot(prev_action) for discrete actions [B] (long) and the action itself for continuous
    ones [B, A] (float). prev_* are None at the start of a trial (all zeros). prev_reward enters
    multiplied by reward_scale (Meta-World's rewards reach 10 per step; its RL² wrapper feeds
    reward / 10). The optional products (discrete actions only) put each action's reward on its
    own input line, or with one-hot observations each state-action pair's (prev_obs [B, O], the
    observation the previous action was taken in: O x A lines), so a recurrent unit can
    accumulate one action's or one pair's rewards with a linear input weight."""
    B, o = obs.shape
    x = torch.zeros(B, rl2_input_dim(o, num_actions, time_frac is not None, reward_per_action, reward_per_pair),
                    device=obs.device)
    x[:, :o] = obs
    if prev_action is not None:
        if prev_action.dtype.is_floating_point:
            x[:, o:o + num_actions] = prev_action
        else:
            x[:, o:o + num_actions].scatter_(1, prev_action.view(-1, 1), 1.0)
        r = prev_reward * reward_scale
        x[:, o + num_actions] = r
        x[:, o + num_actions + 1] = prev_done.to(x.dtype)
        j = o + num_actions + 2
        if reward_per_action:
            x[:, j:j + num_actions] = x[:, o:o + num_actions] * r.unsqueeze(1)
            j += num_actions
        if reward_per_pair:
            pair = prev_obs.unsqueeze(2) * x[:, o:o + num_actions].unsqueeze(1)  # [B, O, A]
            x[:, j:j + o * num_actions] = pair.flatten(1) * r.unsqueeze(1)
    if time_frac is not None:
        x[:, -1] = time_frac
    return x


@dataclass(frozen=True)
class RL2Input:
    """How the RL² input is built (see rl2_inputs): num_actions is the one-hot width for
    discrete actions, the action size for Box ones; trial_length scales the time feature."""
    num_actions: int
    trial_length: int
    time_feature: bool = True
    reward_per_action: bool = False
    reward_scale: float = 1.0
    reward_per_pair: bool = False

    def dim(self, obs_dim: int) -> int:
        return rl2_input_dim(obs_dim, self.num_actions, self.time_feature, self.reward_per_action,
                             self.reward_per_pair)

    def at(self, obs: torch.Tensor, t: int, prev_action=None, prev_reward=None, prev_done=None,
           prev_obs=None) -> torch.Tensor:
        """x [B, D] at step t of the trial, after the previous step's action, reward, done and
        observation (None at the trial's first step)."""
        return rl2_inputs(obs, prev_action, prev_reward, prev_done, self.num_actions,
                          t / self.trial_length if self.time_feature else None, self.reward_per_action,
                          self.reward_scale, prev_obs, self.reward_per_pair)

    def trial(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, horizon: int) -> torch.Tensor:
        """x [T, B, D] of a whole recorded trial (see trial_inputs)."""
        return trial_inputs(obs, actions, rewards, horizon, self.num_actions, self.time_feature,
                            self.reward_per_action, self.reward_scale, self.reward_per_pair)


class RL2History:
    """The step-by-step side of RL2Input: the trial's clock and its previous action, reward,
    done and observation, so that inputs(obs) gives the next x [B, D]; record() after every
    env step (the action taken in the observation last given to inputs)."""

    def __init__(self, spec: RL2Input):
        self.spec = spec
        self.start()

    def start(self) -> None:
        """A new trial: no previous step, clock at 0."""
        self.t, self.prev, self.obs = 0, (None, None, None, None), None

    def inputs(self, obs: torch.Tensor) -> torch.Tensor:
        self.obs = obs
        return self.spec.at(obs, self.t, *self.prev)

    def record(self, action, reward, done) -> None:
        self.prev = (action, reward, done, self.obs)
        self.t += 1

    def state(self) -> tuple:
        return self.t, self.prev

    def restore(self, state: tuple) -> None:
        self.t, self.prev = state


class TrialEnv:
    """Wraps a BatchedEnv so that it emits RL² inputs, trial by trial."""

    def __init__(self, env: BatchedEnv, episodes_per_trial: int, time_feature: bool = True,
                 reward_per_action: bool = False, reward_scale: float = 1.0, reward_per_pair: bool = False):
        self.env = env
        self.episodes_per_trial = episodes_per_trial
        self.trial_length = env.horizon * episodes_per_trial
        self.obs_dim, self.num_actions = env.obs_dim, env.num_actions
        self.spec = RL2Input(self.num_actions, self.trial_length, time_feature, reward_per_action, reward_scale,
                             reward_per_pair)
        self.history = RL2History(self.spec)
        self.input_dim = self.spec.dim(self.obs_dim)
        # [episodes_per_trial, B] 1 where the env reported success at any step of that episode of
        # the current trial (Meta-World's criterion); None for envs without a success signal.
        self.success: torch.Tensor | None = None

    @property
    def num_envs(self) -> int:
        return self.env.num_envs

    @property
    def t(self) -> int:
        """Steps taken in the current trial."""
        return self.history.t

    def start(self, tasks: Tasks) -> torch.Tensor:
        """Begin a new trial in every sub-env; returns x [B, input_dim]."""
        self.env.set_tasks(tasks)
        obs = self.env.reset()
        self.history.start()
        self.success = None
        return self.history.inputs(obs)

    def step(self, actions: torch.Tensor):
        """actions [B] or [B, A] -> (x [B, input_dim], reward [B], done [B]); the trial ends after
        trial_length steps."""
        obs, reward, done = self.env.step(actions)
        if "success" in self.env.info:
            if self.success is None:
                self.success = torch.zeros(self.episodes_per_trial, self.num_envs, device=reward.device)
            e = self.t // self.env.horizon
            self.success[e] = torch.maximum(self.success[e], self.env.info["success"].to(reward.device))
        self.history.record(actions, reward, done)
        return self.history.inputs(obs), reward, done


def trial_inputs(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, horizon: int, num_actions: int,
                 time_feature: bool, reward_per_action: bool = False, reward_scale: float = 1.0,
                 reward_per_pair: bool = False) -> torch.Tensor:
    """The RL² inputs x [T, B, D] of a whole trial, from what the env recorded: obs [T, B, O]
    (what each step saw), actions [T, B(, A)], rewards [T, B]; what TrialEnv builds step by step
    (episodes of `horizon` steps: prev_done is 1 at each episode's first step but the trial's)."""
    T, B = rewards.shape
    prev_done = torch.zeros(T, dtype=torch.bool, device=obs.device)
    prev_done[horizon::horizon] = True
    time_frac = torch.tensor([t / T for t in range(T)], device=obs.device).repeat_interleave(B)  # as TrialEnv rounds it
    x = rl2_inputs(obs.reshape(T * B, -1), actions.roll(1, 0).reshape(T * B, *actions.shape[2:]),
                   rewards.roll(1, 0).reshape(T * B), prev_done.repeat_interleave(B), num_actions,
                   time_frac if time_feature else None, reward_per_action, reward_scale,
                   obs.roll(1, 0).reshape(T * B, -1), reward_per_pair).view(T, B, -1)
    x[0, :, obs.shape[-1]:x.shape[-1] - int(time_feature)] = 0.0  # the trial's first step: no previous step
    return x


def run_trial(trial_env: "TrialEnv", policy, tasks: Tasks, in_workers: bool = True) -> EpisodeBatch:
    """One trial in every sub-env with a RowPolicy that keeps its own memory (observe: RL²'s
    GRU), the one way RL² collects: by env.run_policy, inside a ParallelEnv's simulation
    workers (one message per worker a trial), or with in_workers=False in this process,
    stepping the env (a round trip per step for a ParallelEnv; a pure-tensor env always acts
    here). The policy draws its randomness ahead, so both give the same trial. Returns the
    trial's EpisodeBatch [T, B], its obs the RL² inputs x [T, B, D] the policy saw (no
    logprobs or values); sets trial_env.success."""
    env, E = trial_env.env, trial_env.episodes_per_trial
    env.set_tasks(tasks)
    with env.rollout_context():
        ep = env.run_policy(policy, E) if in_workers else BatchedEnv.run_policy(env, policy, E)
    success = ep.info.get("success")
    trial_env.success = None if success is None else success.view(E, env.horizon, -1).amax(1)
    ep.obs = trial_env.spec.trial(ep.obs, ep.actions, ep.rewards, env.horizon)
    return ep


def chunk_starts(trial_length: int, bptt_len: int, overlap: int = 0) -> list[int]:
    """First steps of the truncated-BPTT chunks of bptt_len steps that cover a trial: one every
    bptt_len - overlap steps, the last one ending at the trial's end."""
    T, L = trial_length, bptt_len or trial_length
    if L >= T:
        return [0]
    starts = list(range(0, T - L + 1, L - overlap))
    return starts if starts[-1] + L == T else starts + [T - L]


def burn_in_mask(starts: list[int], bptt_len: int) -> torch.Tensor:
    """[L, C] True where step j of chunk c is in the loss: every step of the trial once, in the
    first chunk that reaches it; a chunk's steps before the previous chunk's end are burn-in."""
    ends = torch.tensor([0] + [s + bptt_len for s in starts[:-1]])
    return torch.arange(bptt_len).view(-1, 1) + torch.tensor(starts) >= ends

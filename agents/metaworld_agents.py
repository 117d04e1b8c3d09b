"""Trained metarl agents as `metaworld.evaluation.MetaLearningAgent`s, so that Meta-World's own
`metalearning_evaluation` runs them unchanged:

    import metaworld
    from metaworld.evaluation import metalearning_evaluation
    from metarl.agents.metaworld_agents import load_metaworld_agent

    envs = metaworld.make_ml_envs_test("ML10", meta_batch_size=20, total_tasks_per_cls=40,
                                       recurrent_info_in_obs=True)   # RL²: rewards in the obs
    agent = load_metaworld_agent("runs/ml10-rl2-s0", num_envs=envs.num_envs)
    success, mean_return, per_task = metalearning_evaluation(agent, envs)

Meta-World calls init() per batch of tasks, adapt_action()/step() over the adaptation
episodes, adapt() after them, then eval_action()/reset(dones) over the evaluation episodes,
which never report rewards: RL² reads the previous reward from an observation augmented by
`recurrent_info_in_obs=True` ([obs, prev action, reward / 10, done]); on plain observations it
carries on with reward 0 in evaluation. RL² evaluates in Meta-World+'s form by default (each
evaluation episode restarts from the post-adaptation memory, mean action; RL2MetaWorldAgent). Arrays in and out are numpy [B, ...].
"""
from __future__ import annotations

import numpy as np
import torch

from metarl.errors import UserError
from metarl.functional import params_of
from metarl.protocols import INNER_STEPS

OBS_DIM = 39  # Meta-World v3 observation size; wider observations carry the RL² augmentation
AUG_REWARD_SCALE = 10.0  # RNNBasedMetaRLWrapper writes reward / 10


class RL2MetaWorldAgent:
    """An RL² eval policy (agents.rl2.RL2EvalPolicy) over one trial per sub-env.

    form "restart" (Meta-World+'s, the default): sampled actions while adapting; adapt() keeps
    the post-adaptation memory (hidden state, previous action, reward and done, clock) and every
    evaluation episode restarts from it (reset(env_mask)) and acts with the mean action.
    form "carry": the memory runs on from the adaptation episodes through the evaluation
    episodes, with the policy's own action choice."""

    def __init__(self, policy, num_envs: int, form: str = "restart"):
        if form not in ("restart", "carry"):
            raise ValueError(f"form must be 'restart' or 'carry', not {form!r}")
        self.policy, self.num_envs, self.form = policy, num_envs, form
        self.init()

    def init(self) -> None:
        self.policy.reset(self.num_envs, "cpu")
        if self.form == "restart":
            self.policy.deterministic = False
        self._last_action, self._done = None, torch.ones(self.num_envs, dtype=torch.bool)
        self._saved = None

    def _act(self, obs: np.ndarray) -> np.ndarray:
        a = self.policy.act(torch.as_tensor(np.asarray(obs)[:, :OBS_DIM], dtype=torch.float32))
        self._last_action = a
        return a.numpy().astype(np.float64)

    def adapt_action(self, observations):
        return self._act(observations), {}

    def step(self, timestep) -> None:
        done = torch.as_tensor(np.logical_or(timestep.terminated, timestep.truncated))
        self.policy.observe(torch.as_tensor(timestep.action, dtype=torch.float32),
                            torch.as_tensor(timestep.reward, dtype=torch.float32), done, None)
        self._last_action = None  # observed

    def adapt(self) -> None:
        """RL² adapts in its memory; the restart form keeps it for every evaluation episode."""
        if self.form == "restart":
            p, hist = self.policy, self.policy.history
            self._saved = (p.h.clone(), hist.prev, torch.as_tensor(hist.t).expand(self.num_envs).clone())
            p.deterministic = True

    def _restore(self, mask: torch.Tensor) -> None:
        """Sub-envs `mask` [B] start an evaluation episode from the post-adaptation memory."""
        p, hist, (h, prev, t) = self.policy, self.policy.history, self._saved
        p.h = torch.where(mask.view(1, -1, 1), h, p.h)
        hist.restore((torch.where(mask, t, torch.as_tensor(hist.t).expand(self.num_envs)),
                      tuple(torch.where(mask.view(-1, *[1] * (new.dim() - 1)), old, new)
                            for old, new in zip(prev, hist.prev))))

    def eval_action(self, observations):
        obs = np.asarray(observations)
        if self._last_action is not None:  # the previous evaluation step, not yet observed
            A = self._last_action.shape[1]
            reward = (obs[:, OBS_DIM + A] * AUG_REWARD_SCALE if obs.shape[1] > OBS_DIM
                      else np.zeros(len(obs)))
            self.policy.observe(self._last_action, torch.as_tensor(reward, dtype=torch.float32), self._done, None)
        if self._saved is not None and bool(self._done.any()):
            self._restore(self._done)
        self._done = torch.zeros(self.num_envs, dtype=torch.bool)
        return self._act(obs)

    def reset(self, env_mask) -> None:
        self._done = torch.as_tensor(np.asarray(env_mask, dtype=bool))


class MAMLMetaWorldAgent:
    """A MAML meta-policy (agents.maml.MAMLEvalLearner): adaptation episodes are buffered per
    sub-env, adapt() takes one policy-gradient step per sub-env from them (vmapped), and
    evaluation samples from each sub-env's adapted policy."""

    def __init__(self, eval_learner, num_envs: int):
        self.ev, self.L, self.num_envs = eval_learner, eval_learner.learner, num_envs
        self.init()

    def init(self) -> None:
        self.params = {k: v.detach() for k, v in params_of(self.L.net).items()}
        self.per_task = False
        self.buf = {"obs": [], "actions": [], "rewards": [], "dones": []}

    @torch.no_grad()
    def _act(self, obs) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs)[:, :OBS_DIM], dtype=torch.float32)
        out = self.L.forward(self.params, o.unsqueeze(1), self.per_task)  # [B, 1, P]
        return self.L.dist(out).sample(self.ev.gen)[:, 0].numpy().astype(np.float64)

    def adapt_action(self, observations):
        return self._act(observations), {}

    def step(self, timestep) -> None:
        for k, v in (("obs", np.asarray(timestep.observation)[:, :OBS_DIM]), ("actions", timestep.action),
                     ("rewards", timestep.reward), ("dones", np.logical_or(timestep.terminated, timestep.truncated))):
            self.buf[k].append(torch.as_tensor(np.asarray(v)))

    @torch.no_grad()
    def adapt(self) -> None:
        """One gradient step per sub-env on its buffered episodes: [T, B] steps -> R episodes of H."""
        dones = torch.stack(self.buf["dones"])  # [T, B]
        T = dones.shape[0]
        ends = dones[:, 0].nonzero().flatten()
        if len(ends) == 0 or T % (int(ends[0]) + 1) or not dones[int(ends[0])::int(ends[0]) + 1].all():
            raise UserError("MAML adaptation needs equal-length episodes in every sub-env (Meta-World's "
                            "truncation at max_episode_steps, terminate_on_success off during adaptation)")
        H = int(ends[0]) + 1
        R = T // H

        def episodes(x):  # [T, B, ...] -> [B, H, R, ...]
            x = x.float().view(R, H, *x.shape[1:])
            return x.permute(2, 1, 0, *range(3, x.dim())).contiguous()
        data = {"obs": episodes(torch.stack(self.buf["obs"])), "actions": episodes(torch.stack(self.buf["actions"])),
                "rewards": episodes(torch.stack(self.buf["rewards"]))}
        data["adv"] = self.L.advantages(data)
        self.params = self.L.adapt(self.params, data, self.per_task, steps=1, first_order=True)
        self.per_task = True
        self.buf = {k: [] for k in self.buf}

    def eval_action(self, observations):
        return self._act(observations)

    def reset(self, env_mask) -> None:
        pass  # the adapted parameters stay; MAML keeps no per-episode state


def load_metaworld_agent(run_dir: str, num_envs: int, seed: int = 0, rl2_form: str = "restart"):
    """The trained agent of a run directory, wrapped for metaworld.evaluation (CPU); rl2_form:
    RL2MetaWorldAgent's form ("restart": Meta-World+'s evaluation, "carry")."""
    from metarl.run_config import load_run
    run = load_run(run_dir, device="cpu")  # the loader `metarl eval` uses
    policy = run.eval_policy(seed)
    if run.cfg["agent_spec"].protocol is INNER_STEPS:
        return MAMLMetaWorldAgent(policy, num_envs)
    return RL2MetaWorldAgent(policy, num_envs, rl2_form)

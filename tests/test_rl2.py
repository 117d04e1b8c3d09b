import pytest
import torch
import torch.nn.functional as F

from metarl.agents.rl2 import RL2Config, RL2Trainer, load_eval_policy
from metarl.config import build
from metarl.registry import ENVS, lookup


def _trainer(env="tabular-mdp", env_set=None, **agent):
    spec = lookup("env", ENVS, env)
    env_cfg = build(spec.config_cls, env_set or {"n": 3, "horizon": 4}, "env")
    cfg = build(RL2Config, {"num_envs": 8, "hidden_size": 16, **agent}, "agent")
    return spec, env_cfg, RL2Trainer(spec, env_cfg, cfg, 0, torch.device("cpu"))


def test_hidden_state_carries_across_episodes_within_a_trial():
    """The rollout's actions are the Gumbel-argmax, under the drawn noise, of the network run over
    the whole trial from a zero state, which they are only if acting never reset the hidden
    state at episode boundaries (resetting it changes the outputs: the state matters)."""
    spec, env_cfg, tr = _trainer()
    with torch.no_grad():
        tr.net.pi.linear.weight.mul_(300.0)  # logits that depend on the state, so a wrong state flips actions
    tasks = tr.dist.sample(8, tr.task_gen)
    state = tr.act_gen.get_state()
    batch, h_starts = tr.collect(tasks)
    tr.act_gen.set_state(state)
    noise = tr.net.pi.draw_noise((12, 8), tr.act_gen)
    assert batch.obs.shape[0] == 12 and batch.dones.sum(0).tolist() == [3] * 8  # 3 episodes of 4 steps
    assert torch.all(h_starts[0] == 0)
    with torch.no_grad():
        logits, _, _ = tr.net(batch.obs, tr.net.initial_state(8, "cpu"))
        logp_all = F.log_softmax(logits, -1)
        assert torch.equal(batch.actions, (logp_all + noise).argmax(-1))
        assert torch.allclose(logp_all.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1), batch.logprobs, atol=1e-5)
        reset_logits = torch.cat([tr.net(batch.obs[e * 4:(e + 1) * 4], tr.net.initial_state(8, "cpu"))[0]
                                  for e in range(3)])
        assert not torch.equal((F.log_softmax(reset_logits, -1) + noise).argmax(-1)[4:], batch.actions[4:])
    # the RL² input flags the episode boundary: done of the previous step
    done_col = batch.obs[:, :, -2]
    assert torch.equal(done_col[1:].bool(), batch.dones[:-1])


def test_truncated_bptt_chunks_start_from_rollout_states():
    spec, env_cfg, tr = _trainer(bptt_len=4)
    tasks = tr.dist.sample(8, tr.task_gen)
    batch, h_starts = tr.collect(tasks)
    assert h_starts.shape == (3, 8, 32)  # policy and critic GRU states
    with torch.no_grad():
        for c in range(3):
            logits, _, _ = tr.net(batch.obs[c * 4:(c + 1) * 4], h_starts[c].unsqueeze(0))
            logp = F.log_softmax(logits, -1).gather(-1, batch.actions[c * 4:(c + 1) * 4].unsqueeze(-1)).squeeze(-1)
            assert torch.allclose(logp, batch.logprobs[c * 4:(c + 1) * 4], atol=1e-5)
    m = tr.train_iteration(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_trial_inputs_rebuild_what_the_trial_env_fed_the_policy():
    """RL2Input.trial (how the workers' trials get their RL² inputs back) equals TrialEnv's
    step-by-step inputs (RL2History): previous action one-hot, reward, episode-boundary flag, time."""
    spec, env_cfg, tr = _trainer(reward_scale=0.5)
    tasks = tr.dist.sample(8, tr.task_gen)
    batch, _ = tr.collect(tasks)
    te = tr.trial_env
    x = te.spec.trial(batch.obs[..., :te.obs_dim], batch.actions, batch.rewards, te.env.horizon)
    assert te.spec.reward_scale == 0.5 and torch.equal(x, batch.obs)


@pytest.mark.slow
@pytest.mark.parametrize("time_feature,reward_per_action,reward_per_pair",
                         [(True, False, False), (False, True, False), (True, False, True)])
def test_policy_in_workers_collects_a_consistent_trial(time_feature, reward_per_action, reward_per_pair):
    """RL2Trainer.collect: GRURows acts through env.run_policy (here in-process: the MDP is a
    pure-tensor env) with noise drawn ahead, building its own RL² inputs step by step; its
    actions are the Gumbel-argmax, under that noise, of the network rerun over the inputs that
    trial_inputs rebuilt, with the recomputed log-probs and BPTT chunk states; then PPO trains.
    The policy head is scaled up so the logits depend on every input (a wrong input flips actions)."""
    spec, env_cfg, tr = _trainer(bptt_len=4, policy_in_workers=True, time_feature=time_feature,
                                 reward_per_action=reward_per_action, reward_per_pair=reward_per_pair)
    with torch.no_grad():
        tr.net.pi.linear.weight.mul_(300.0)
    tasks = tr.dist.sample(8, tr.task_gen)
    state = tr.act_gen.get_state()
    batch, h_starts = tr.collect(tasks)
    tr.act_gen.set_state(state)
    noise = tr.net.pi.draw_noise((12, 8), tr.act_gen)
    # the chunk states hold the policy GRU's and the critic GRU's side by side (agent.separate_critic)
    assert batch.obs.shape == (12, 8, tr.trial_env.input_dim) and h_starts.shape == (3, 8, 2 * 16)
    assert batch.dones.sum(0).tolist() == [3] * 8 and torch.all(h_starts[0] == 0)

    def actions(x):
        with torch.no_grad():
            logits, _, _ = tr.net(x, tr.net.initial_state(8, "cpu"))
        return F.log_softmax(logits, -1), (F.log_softmax(logits, -1) + noise).argmax(-1)
    logp_all, want = actions(batch.obs)
    assert torch.equal(batch.actions, want)
    assert torch.allclose(batch.logprobs, logp_all.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    for col in range(tr.trial_env.obs_dim, tr.trial_env.input_dim):  # the check sees every input column
        x = batch.obs.clone()
        x[1:, :, col] = 1.0 - x[1:, :, col]
        assert not torch.equal(actions(x)[1], want), col
    with torch.no_grad():
        h_mid = tr.net(batch.obs[:4], tr.net.initial_state(8, "cpu"))[2]
    assert torch.allclose(h_starts[1], h_mid[0], atol=1e-6)
    m = tr.train_iteration(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


@pytest.mark.slow
def test_separate_critic_keeps_value_gradients_out_of_the_policy_gru():
    """With agent.separate_critic the value head reads its own GRU: the value loss leaves the
    policy GRU's gradients at zero, both states are carried in h, and truncated BPTT chunks
    restart from the rollout's (policy, critic) states."""
    spec, env_cfg, tr = _trainer(separate_critic=True, bptt_len=4)
    tasks = tr.dist.sample(8, tr.task_gen)
    batch, h_starts = tr.collect(tasks)
    assert h_starts.shape == (3, 8, 32)
    assert h_starts[1, :, :16].abs().sum() > 0 and h_starts[1, :, 16:].abs().sum() > 0
    out, v, _ = tr.net(batch.obs, tr.net.initial_state(8, "cpu"))
    v.pow(2).sum().backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in tr.net.gru.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.net.critic_gru.parameters())
    with torch.no_grad():  # acting from the chunk starts reproduces the rollout's values
        for c in range(3):
            _, vc, _ = tr.net(batch.obs[c * 4:(c + 1) * 4], h_starts[c].unsqueeze(0))
            assert torch.allclose(vc * tr.rms.std + tr.rms.mean, batch.values[c * 4:(c + 1) * 4], atol=1e-5)
    m = tr.train_iteration(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_eval_policy_resets_hidden_state_between_trials():
    spec, env_cfg, tr = _trainer("bandit", {"k": 3, "n": 5})
    ck = {"trainer": tr.state_dict()}
    policy = load_eval_policy(ck, spec, env_cfg, tr.cfg, torch.device("cpu"), 0)
    obs = torch.zeros(4, 1)
    policy.reset(4, "cpu")
    assert torch.all(policy.h == 0)
    for _ in range(3):
        a = policy.act(obs)
        policy.observe(a, torch.ones(4), torch.zeros(4, dtype=torch.bool), obs)
    assert policy.h.abs().sum() > 0 and policy.history.t == 3
    policy.reset(4, "cpu")
    assert torch.all(policy.h == 0) and policy.history.state() == (0, (None, None, None, None))


@pytest.mark.slow
def test_training_improves_bandit_return():
    """A tiny RL² run learns to beat uniform play (mean 0.5 per pull) on 3-armed bandits."""
    spec, env_cfg, tr = _trainer("bandit", {"k": 3, "n": 8}, num_envs=256, hidden_size=32, lr=3e-3,
                                 total_steps=256 * 8 * 40, lr_anneal=False)
    returns = [tr.train_iteration(i)["trial_return"] for i in range(40)]
    assert sum(returns[:3]) / 3 < 4.2      # uniform play: 8 pulls x 0.5
    assert sum(returns[-5:]) / 5 > 4.4


def test_expected_rewards_are_the_task_means_of_the_chosen_actions():
    spec, env_cfg, tr = _trainer(expected_rewards=True)
    tasks = tr.dist.sample(8, tr.task_gen)
    batch, _ = tr.collect(tasks)
    # replay the states: the one-hot obs of each step gives s, so E[r] = R[b, s, a]
    s = batch.obs[:, :, :env_cfg.states].argmax(-1)                      # [T, B]
    b = torch.arange(8).expand_as(s)
    assert torch.allclose(batch.mean_rewards, tasks["R"][b, s, batch.actions])
    # the sampled rewards are those means plus N(0, 1) noise
    noise = batch.rewards - batch.mean_rewards
    assert 0.5 < noise.std().item() < 1.5 and not torch.allclose(noise, torch.zeros_like(noise))


def test_privileged_critic_informs_the_value_but_never_the_policy():
    spec, env_cfg, tr = _trainer("bandit", {"k": 3, "n": 6}, privileged_critic=True, expected_rewards=True)
    x = torch.randn(6, 8, tr.trial_env.input_dim)
    h = tr.net.initial_state(8, "cpu")
    f1, f2 = torch.rand(8, 3), torch.rand(8, 3)
    with torch.no_grad():
        l1, v1, _ = tr.net(x, h, f1)
        l2, v2, _ = tr.net(x, h, f2)
    assert torch.equal(l1, l2) and not torch.allclose(v1, v2)
    before = {k: p.clone() for k, p in tr.net.state_dict().items()}
    m = tr.train_iteration(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert not torch.equal(before["critic.0.weight"], tr.net.state_dict()["critic.0.weight"])
    # the evaluation policy loads the checkpoint and acts without any task features
    policy = load_eval_policy({"trainer": tr.state_dict()}, spec, env_cfg, tr.cfg, torch.device("cpu"), 0)
    policy.reset(4, "cpu")
    a = policy.act(torch.zeros(4, 1))
    assert a.shape == (4,) and int(a.max()) < 3


def test_reward_per_action_input_puts_each_reward_on_its_actions_line():
    from metarl.rl.trial import rl2_inputs
    obs = torch.zeros(3, 1)
    a, r, d = torch.tensor([0, 2, 1]), torch.tensor([1.0, 0.5, 0.0]), torch.zeros(3, dtype=torch.bool)
    x = rl2_inputs(obs, a, r, d, 3, 0.25, reward_per_action=True)
    assert x.shape == (3, 1 + 3 + 2 + 3 + 1)
    assert torch.equal(x[:, 6:9], torch.tensor([[1.0, 0, 0], [0, 0, 0.5], [0, 0, 0]]))
    assert torch.equal(x[:, -1], torch.full((3,), 0.25))
    start = rl2_inputs(obs, None, None, None, 3, 0.0, reward_per_action=True)
    assert torch.equal(start, torch.zeros(3, 10))
    # training and evaluation build the same inputs
    spec, env_cfg, tr = _trainer("bandit", {"k": 3, "n": 5}, reward_per_action=True)
    assert tr.trial_env.input_dim == 10
    policy = load_eval_policy({"trainer": tr.state_dict()}, spec, env_cfg, tr.cfg, torch.device("cpu"), 0)
    policy.reset(2, "cpu")
    policy.observe(torch.tensor([1, 2]), torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.bool), None)
    assert policy.act(torch.zeros(2, 1)).shape == (2,)


def test_reward_per_pair_input_puts_each_reward_on_its_state_action_line():
    from metarl.rl.trial import RL2History, RL2Input, rl2_inputs
    eye = torch.eye(4)
    obs, prev_obs = eye[[0, 1]], eye[[2, 3]]
    a, r, d = torch.tensor([1, 0]), torch.tensor([2.0, -1.0]), torch.zeros(2, dtype=torch.bool)
    x = rl2_inputs(obs, a, r, d, 3, None, prev_obs=prev_obs, reward_per_pair=True)
    assert x.shape == (2, 4 + 3 + 2 + 12)
    pairs = x[:, 9:].view(2, 4, 3)
    assert pairs[0, 2, 1] == 2.0 and pairs[1, 3, 0] == -1.0 and (pairs != 0).sum() == 2
    # step by step (RL2History: the observation each action was taken in) equals the whole-trial rebuild
    spec = RL2Input(3, 6, True, True, 0.5, True)
    g = torch.Generator().manual_seed(0)
    T, B = 6, 2
    seq_obs = eye[torch.randint(4, (T, B), generator=g)]
    acts, rews = torch.randint(3, (T, B), generator=g), torch.randn(T, B, generator=g)
    hist, xs = RL2History(spec), []
    for t in range(T):
        xs.append(hist.inputs(seq_obs[t]))
        hist.record(acts[t], rews[t], torch.full((B,), (t + 1) % 3 == 0))
    assert torch.equal(torch.stack(xs), spec.trial(seq_obs, acts, rews, 3))


def test_deterministic_evaluation_takes_the_most_likely_action():
    """The extra evaluated form "deterministic" acts by the policy's mode (argmax over arms):
    the same action every time for the same history, where sampling varies."""
    from metarl.agents.rl2 import extra_eval_policies
    spec, env_cfg, tr = _trainer("bandit", {"k": 3, "n": 5})
    ck = {"trainer": tr.state_dict()}
    forms = extra_eval_policies(ck, spec, env_cfg, tr.cfg, torch.device("cpu"), 0)
    det = forms["deterministic"](None)
    sampled = load_eval_policy(ck, spec, env_cfg, tr.cfg, torch.device("cpu"), 0)
    acts = {}
    for name, policy in (("det", det), ("sampled", sampled)):
        policy.reset(500, "cpu")
        acts[name] = policy.act(torch.zeros(500, 1))
    with torch.no_grad():
        x = torch.zeros(1, 500, tr.trial_env.input_dim)
        out, _, _ = det.net(x, det.net.initial_state(500, "cpu"))
    assert torch.equal(acts["det"], out[0].argmax(-1))
    assert acts["det"].unique().numel() == 1 and acts["sampled"].unique().numel() > 1


def test_restart_form_replays_the_post_adaptation_memory_in_every_evaluation_episode():
    """Meta-World+'s form: sampled actions while adapting, then each evaluation episode starts
    from the memory left by adaptation and takes mean actions, so on a deterministic env (2-D
    navigation starts at the origin) the evaluation episodes are identical; carrying the memory
    on instead makes them differ."""
    from metarl.agents.rl2 import RL2EvalPolicy, RL2RestartPolicy
    from metarl.eval.trials import play_trial
    spec, env_cfg, tr = _trainer("navigation-2d", {"horizon": 5, "episodes": 5})
    T, H, A = tr.trial_env.trial_length, 5, 2
    env, tasks = tr.trial_env.env, tr.dist.sample(8, torch.Generator().manual_seed(1))
    with torch.no_grad():  # make the memory matter: larger recurrent and input weights
        tr.net.gru.weight_hh_l0.mul_(3)
        tr.net.gru.weight_ih_l0.mul_(3)
        tr.net.pi.linear.weight.mul_(100)
    restart = RL2RestartPolicy(tr.net, 2, T, tr.cfg, torch.Generator().manual_seed(0), A * H, H)
    r = play_trial(restart, env, tasks, 5)["returns"]
    assert torch.allclose(r[:, 3], r[:, 2]) and torch.allclose(r[:, 4], r[:, 2])
    carry = RL2EvalPolicy(tr.net, 2, T, tr.cfg, torch.Generator().manual_seed(0), deterministic=True)
    c = play_trial(carry, env, tasks, 5)["returns"]
    assert not torch.allclose(c[:, 3], c[:, 2])
    # adaptation samples: the same seed draws the same adaptation episodes as the sampled policy
    sampled = RL2EvalPolicy(tr.net, 2, T, tr.cfg, torch.Generator().manual_seed(0))
    s = play_trial(sampled, env, tasks, 5)["returns"]
    assert torch.equal(s[:, :A], r[:, :A]) and not torch.allclose(s[:, 2], r[:, 2])


def test_branched_trial_plays_the_sampled_and_restart_forms_as_their_separate_trials():
    """eval_branch: one trial of A adaptation + E carried + E restarted episodes. Its first A + E
    episodes are the sampled form's trial and its last E the Meta-World+ form's evaluation
    episodes, bit for bit (same generator seed; 2-D navigation starts every episode at the
    origin), so `metarl eval` plays the shared adaptation episodes once."""
    from metarl.agents.rl2 import RL2EvalPolicy, RL2RestartPolicy
    from metarl.eval.trials import play_trial
    spec, env_cfg, tr = _trainer("navigation-2d", {"horizon": 5, "episodes": 5})
    T, H, A, E = tr.trial_env.trial_length, 5, 2, 3
    env, tasks = tr.trial_env.env, tr.dist.sample(8, torch.Generator().manual_seed(1))
    with torch.no_grad():  # make the memory matter: larger recurrent and input weights
        tr.net.gru.weight_hh_l0.mul_(3)
        tr.net.gru.weight_ih_l0.mul_(3)
        tr.net.pi.linear.weight.mul_(100)

    def gen():
        return torch.Generator().manual_seed(0)
    both = play_trial(RL2RestartPolicy(tr.net, 2, T, tr.cfg, gen(), A * H, H, carry_steps=E * H), env, tasks, A + 2 * E)
    sampled = play_trial(RL2EvalPolicy(tr.net, 2, T, tr.cfg, gen()), env, tasks, A + E)
    restart = play_trial(RL2RestartPolicy(tr.net, 2, T, tr.cfg, gen(), A * H, H), env, tasks, A + E)
    for k in ("returns", "step_reward"):
        n = (A + E) * (H if k == "step_reward" else 1)
        assert torch.equal(both[k][:, :n], sampled[k])
    assert torch.equal(both["returns"][:, A + E:], restart["returns"][:, A:])
    assert not torch.equal(sampled["returns"][:, A:], restart["returns"][:, A:])  # the forms differ


def test_eval_forms_in_workers_play_the_step_by_step_trials():
    """play_trial(in_workers=True) plays an eval form as a RowPolicy (GRURows, env.run_policy),
    its noise drawn ahead for the steps that sample only: on continuous actions every form gives
    the step-by-step trial bit for bit, batch after batch (the generator is consumed alike)."""
    from metarl.agents.rl2 import RL2EvalPolicy, RL2RestartPolicy
    from metarl.eval.trials import play_trial
    spec, env_cfg, tr = _trainer("navigation-2d", {"horizon": 5, "episodes": 5})
    T, H, A, E = tr.trial_env.trial_length, 5, 2, 2
    env = tr.trial_env.env
    with torch.no_grad():
        tr.net.gru.weight_hh_l0.mul_(3)
        tr.net.pi.linear.weight.mul_(100)
    forms = {"sampled": (lambda g: RL2EvalPolicy(tr.net, 2, T, tr.cfg, g), A + E),
             "deterministic": (lambda g: RL2EvalPolicy(tr.net, 2, T, tr.cfg, g, deterministic=True), A + E),
             "restart": (lambda g: RL2RestartPolicy(tr.net, 2, T, tr.cfg, g, A * H, H), A + E),
             "carry+restart": (lambda g: RL2RestartPolicy(tr.net, 2, T, tr.cfg, g, A * H, H, E * H), A + 2 * E)}
    for name, (make, episodes) in forms.items():
        step, rows = make(torch.Generator().manual_seed(0)), make(torch.Generator().manual_seed(0))
        for b in range(2):  # two batches of tasks with one policy object, as evaluate_success plays them
            tasks = tr.dist.sample(8, torch.Generator().manual_seed(b))
            by_step = play_trial(step, env, tasks, episodes)
            in_rows = play_trial(rows, env, tasks, episodes, in_workers=True)
            assert torch.equal(by_step["step_reward"], in_rows["step_reward"]), (name, b)
            assert torch.equal(by_step["returns"], in_rows["returns"]), (name, b)
        assert torch.equal(step.gen.get_state(), rows.gen.get_state()), name


def test_overlapping_chunks_cover_every_step_once_in_the_loss():
    """Meta-World+'s BPTT: 250-step chunks every 200 steps of a 5,000-step trial; the last one
    ends at the trial's end, and the burn-in mask puts every step in exactly one chunk's loss."""
    from metarl.rl.trial import burn_in_mask, chunk_starts
    starts = chunk_starts(5000, 250, 50)
    assert starts[:3] == [0, 200, 400] and starts[-2:] == [4600, 4750] and len(starts) == 25
    mask = burn_in_mask(starts, 250)
    counted = torch.zeros(5000)
    for c, s in enumerate(starts):
        counted[s:s + 250] += mask[:, c].float()
    assert torch.equal(counted, torch.ones(5000))
    assert mask[:, 0].all() and not mask[:50, 1].any() and mask[50:, 1].all() and not mask[:100, -1].any()
    assert chunk_starts(12, 4) == [0, 4, 8] and chunk_starts(12, 0) == [0]


def test_linear_baseline_is_each_trials_own_least_squares_fit():
    """agent.baseline=linear: per trial, the discounted return over the whole trial regressed on
    [x, x², t, t², t³, 1]; on returns that are such a function the fit is exact."""
    from metarl.agents.rl2 import linear_baseline_values
    g = torch.Generator().manual_seed(0)
    T, B = 40, 3
    x = torch.randn(T, B, 2, generator=g)
    gamma = 0.9
    t = torch.arange(T, dtype=torch.float64).view(T, 1) / 100
    target = (2 * x[..., 0] - x[..., 1] ** 2).double() + 3 * t - t ** 3 + torch.arange(B).double()  # [T, B]
    rewards = (target[:-1] - gamma * target[1:]).float()  # so that the return from t is target[t] - gamma^(T-t) ...
    rewards = torch.cat([rewards, target[-1:].float()])  # ... with the last step's return its own reward
    v = linear_baseline_values(x, rewards, gamma)
    assert torch.allclose(v.double(), target, atol=1e-3)


def test_metaworld_plus_recipe_acts_in_workers_as_the_network_and_trains():
    """The Meta-World+ recipe's options together (tanh MLP encoder, tanh head with a state-dependent
    log std, linear baseline, overlapping chunks, a chunk position per minibatch, no advantage
    normalisation) on 2-D navigation with the policy acting trial-long in GRURows: its actions are
    the network's under the drawn noise, chunk states are the network's, and PPO takes one Adam
    step per chunk position and epoch."""
    spec, env_cfg, tr = _trainer("navigation-2d", {"horizon": 5, "episodes": 3}, encoder_layers=2, encoder_size=8,
                                 head="tanh", baseline="linear", bptt_len=6, bptt_overlap=2, minibatch_by_chunk=True,
                                 normalize_advantages=False, policy_in_workers=True, epochs=2)
    assert tr.starts == [0, 4, 8, 9]
    tasks = tr.dist.sample(8, tr.task_gen)
    state = tr.act_gen.get_state()
    batch, h_starts = tr.collect(tasks)
    tr.act_gen.set_state(state)
    noise = tr.net.pi.draw_noise((15, 8), tr.act_gen)
    with torch.no_grad():
        out, _, _ = tr.net(batch.obs, tr.net.initial_state(8, "cpu"))
        assert out.abs().max() < 1  # tanh head
        assert torch.allclose(batch.actions, tr.net.pi.dist(out).sample_with(noise), atol=1e-5)
        h4 = tr.net(batch.obs[:4], tr.net.initial_state(8, "cpu"))[2]
    assert torch.allclose(h_starts[1], h4[0], atol=1e-6)
    steps = []
    tr.opt.step = (lambda step: lambda *a, **k: steps.append(1) or step(*a, **k))(tr.opt.step)
    m = tr.train_iteration(0)
    assert len(steps) == 2 * 4 and m["value_loss"] == 0.0
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_target_kl_stops_the_epochs_before_the_step_that_would_pass_it():
    """agent.target_kl: Adam steps stop at the first minibatch whose approximate KL from the
    sampling policy exceeds 1.5 x target_kl (that minibatch takes no step); off, every epoch runs."""
    steps = {}
    for target in (0.0, 0.01):
        spec, env_cfg, tr = _trainer(epochs=8, num_minibatches=4, lr=0.05, target_kl=target)
        n = []
        tr.opt.step = (lambda step: lambda *a, **k: n.append(1) or step(*a, **k))(tr.opt.step)
        m = tr.train_iteration(0)
        steps[target] = len(n)
        assert ("updates" in m) == bool(target) and m.get("updates", len(n)) == len(n)
        if target:
            assert m["approx_kl"] <= 1.5 * target  # the mean over the steps taken
    assert steps[0.0] == 32 and 1 <= steps[0.01] < 32


def test_hyper_policy_acts_as_its_network_and_its_weights_follow_the_memory():
    """policy_head=hyper: the rollout's actions (GRURows, acting step by step) are the network's
    over the whole trial under the drawn noise; the generated layer's weights differ between two
    memories and start near the bias-HyperInit layer; the linear head's network is unchanged."""
    spec, env_cfg, tr = _trainer(policy_head="hyper", hyper_size=12)
    with torch.no_grad():
        tr.net.pi.linear.weight.mul_(300.0)
    tasks = tr.dist.sample(8, tr.task_gen)
    state = tr.act_gen.get_state()
    batch, _ = tr.collect(tasks)
    tr.act_gen.set_state(state)
    noise = tr.net.pi.draw_noise((12, 8), tr.act_gen)
    with torch.no_grad():
        logits, _, _ = tr.net(batch.obs, tr.net.initial_state(8, "cpu"))
        assert torch.equal(batch.actions, (F.log_softmax(logits, -1) + noise).argmax(-1))
        hyper = tr.net.hyper
        z = torch.randn(2, 16)
        wb = hyper.gen(z).view(2, 12, -1)
        base = hyper.gen.bias.view(12, -1)
        assert not torch.allclose(wb[0], wb[1])
        assert (wb - base).abs().max() < 0.1 * base.abs().max()
    assert tr.net.pi.linear.in_features == 12
    m = tr.train_iteration(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    _, _, plain = _trainer()
    assert plain.net.hyper is None and not any(k.startswith("hyper") for k in plain.net.state_dict())


def test_task_advantage_scale_feeds_ppo_per_task_scaled_advantages(monkeypatch):
    """agent.task_advantage_scale: the advantages PPO sees are each trial's divided by its std
    (normalize_advantages off, so nothing rescales them after)."""
    import metarl.agents.rl2 as rl2
    seen = []
    real_loss = rl2.ppo_loss
    monkeypatch.setattr(rl2, "ppo_loss", lambda lp, old, a, *rest: seen.append(a.clone()) or real_loss(lp, old, a, *rest))
    for on in (False, True):
        seen.clear()
        spec, env_cfg, tr = _trainer(epochs=1, num_minibatches=1, normalize_advantages=False, task_advantage_scale=on)
        tr.train_iteration(0)
        per_trial = seen[0].reshape(-1, 8).std(0)  # one minibatch: [T * B] time-major, B = 8 trials
        assert torch.allclose(per_trial, torch.ones(8), atol=1e-4) == on

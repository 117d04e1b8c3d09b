"""What users write first: a plain script with no `if __name__ == "__main__":` guard. Run in a
subprocess, as users run them: a simulation worker started with spawn would re-import the
script and die ("worker 0 died during start"), so these scripts must start no processes."""
import subprocess
import sys
import textwrap

import pytest

MAKE_EVERY_ID = """
import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
import metarl.envs
from metarl.envs.gym_adapter import GYM_IDS, METAWORLD_GYM_IDS, MUJOCO_GYM_IDS

for gym_id in [*GYM_IDS, *MUJOCO_GYM_IDS, *METAWORLD_GYM_IDS]:
    env = gym.make(gym_id)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and np.isfinite(reward)
    env.close()
    print("ok", gym_id, flush=True)
"""

METALEARNING_EVALUATION = """
import metaworld
from metaworld.evaluation import metalearning_evaluation
from metarl.agents.metaworld_agents import load_metaworld_agent

envs = metaworld.make_ml_envs("reach-v3", seed=0, meta_batch_size=2, total_tasks_per_cls=2, split="test",
                              terminate_on_success=True, task_select="pseudorandom", max_episode_steps=10,
                              recurrent_info_in_obs=True)
success, mean_return, per_task = metalearning_evaluation(load_metaworld_agent(RUN, envs.num_envs), envs,
                                                         num_evals=1, adaptation_episodes=2, evaluation_episodes=1)
envs.close()
print("success", success, sorted(per_task))
"""


def run_script(tmp_path, text: str) -> subprocess.CompletedProcess:
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.slow
def test_every_gym_id_in_a_plain_script_makes_checks_steps_and_closes(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("metaworld")
    pytest.importorskip("stable_baselines3")
    from metarl.envs.gym_adapter import GYM_IDS, METAWORLD_GYM_IDS, MUJOCO_GYM_IDS
    done = run_script(tmp_path, MAKE_EVERY_ID)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")] == \
        [*GYM_IDS, *MUJOCO_GYM_IDS, *METAWORLD_GYM_IDS]


@pytest.mark.slow
def test_metalearning_evaluation_of_a_loaded_run_in_a_plain_script(tmp_path, cli):
    pytest.importorskip("metaworld")
    rd = tmp_path / "run"
    sets = ["env.horizon=10", "env.episodes=2", "env.workers=1", "agent.num_envs=2", "agent.hidden_size=8",
            "agent.total_steps=40", "agent.num_minibatches=1"]
    code, _, err = cli("train", "rl2", "--env", "ml1", "--run-dir", rd, *[a for s in sets for a in ("--set", s)],
                       "--quiet")
    assert code == 0, err
    done = run_script(tmp_path, f"RUN = {str(rd)!r}\n" + METALEARNING_EVALUATION)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "success" in done.stdout and "['reach-v3']" in done.stdout

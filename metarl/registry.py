"""Names -> "module:attr" strings, resolved only when used (as gymnasium entry points).

The core never imports envs/ or agents/ at import time, and an optional dependency is
imported only when a name that needs it is used.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from metarl.errors import UserError


@dataclass(frozen=True)
class Entry:
    target: str            # "module:attr"
    summary: str           # one line for `metarl list`
    families: tuple = ()   # for baselines: env families they apply to


ENVS: dict[str, Entry] = {
    "bandit": Entry("metarl.envs.bandits:BERNOULLI_BANDIT",
                    "Bernoulli k-armed bandit, arm means ~ U[0,1], n pulls per trial (env.k, env.n)"),
    "gaussian-bandit": Entry("metarl.envs.bandits:GAUSSIAN_BANDIT",
                             "Gaussian k-armed bandit, means ~ U[0,1], rewards ~ N(mean, env.sigma^2)"),
    "tabular-mdp": Entry("metarl.envs.tabular_mdp:TABULAR_MDP",
                         "random tabular MDPs as in RL² (10 states, 5 actions, 10-step episodes, env.n per trial)"),
    "navigation-2d": Entry("metarl.envs.navigation:NAVIGATION",
                           "2D point navigation to a goal ~ U[-0.5,0.5]^2, horizon 100 (MAML paper)"),
    "halfcheetah-vel": Entry("metarl.envs.mujoco_tasks:HALFCHEETAH_VEL",
                             "HalfCheetah-v5, target velocity ~ U[0,2], horizon 200 (needs the mujoco extra)"),
    "halfcheetah-dir": Entry("metarl.envs.mujoco_tasks:HALFCHEETAH_DIR",
                             "HalfCheetah-v5, run forward or backward, horizon 200 (needs the mujoco extra)"),
    "ant-dir": Entry("metarl.envs.mujoco_tasks:ANT_DIR",
                     "Ant-v5, run forward or backward, horizon 200 (needs the mujoco extra)"),
    "ant-goal": Entry("metarl.envs.mujoco_tasks:ANT_GOAL",
                      "Ant-v5, reach a goal ~ U[-3,3]^2, horizon 200 (needs the mujoco extra)"),
    "ml1": Entry("metarl.envs.metaworld_tasks:ML1",
                 "Meta-World ML1: one task (env.task, default reach-v3), train / test goals (needs the metaworld extra)"),
    "ml10": Entry("metarl.envs.metaworld_tasks:ML10",
                  "Meta-World ML10: 10 train tasks, 5 held-out test tasks, horizon 500 (needs the metaworld extra)"),
    "ml25": Entry("metarl.envs.metaworld_tasks:ML25",
                  "Meta-World ML25: 25 train tasks, 5 held-out test tasks (needs the metaworld extra)"),
    "ml45": Entry("metarl.envs.metaworld_tasks:ML45",
                  "Meta-World ML45: 45 train tasks, 5 held-out test tasks (needs the metaworld extra)"),
    "sinusoid": Entry("metarl.envs.regression_tasks:SINUSOID",
                      "few-shot regression of A sin(x - phi), A ~ U[0.1,5], phi ~ U[0,pi], K = env.shots (MAML paper)"),
    "gp-regression": Entry("metarl.envs.regression_tasks:GP_REGRESSION",
                           "few-shot regression of 1-D GP draws, squared-exponential kernel (CNP paper)"),
    "glyphs": Entry("metarl.envs.image_tasks:GLYPHS",
                    "N-way K-shot classification of generated handwritten glyphs (1200 classes, no download)"),
    "omniglot": Entry("metarl.envs.image_tasks:OMNIGLOT",
                      "N-way K-shot Omniglot from a local folder, env.data_dir (torchvision layout, never downloaded)"),
}

AGENTS: dict[str, Entry] = {
    "rl2": Entry("metarl.agents.rl2:RL2", "RL²: GRU actor-critic over trials, trained with PPO"),
    "recurrent-ppo": Entry("metarl.agents.sb3_baselines:RECURRENT_PPO",
                           "sb3-contrib's RecurrentPPO (LSTM) on the RL² trial env: an off-the-shelf RL² peer "
                           "(sb3 extra)"),
    "multitask-ppo": Entry("metarl.agents.multitask_ppo:MULTITASK_PPO",
                           "baseline: SB3 PPO pretrained on the training tasks (observation only), evaluated "
                           "fine-tuned on each held-out task during its trial and zero-shot (sb3 extra)"),
    "maml-trpo": Entry("metarl.agents.maml:MAML_TRPO",
                       "MAML (Finn et al. 2017): policy-gradient inner step, TRPO outer step"),
    "maml-ppo": Entry("metarl.agents.maml:MAML_PPO",
                      "MAML with a clipped (ProMP-style) outer objective optimised by Adam"),
    "maml": Entry("metarl.agents.fewshot_maml:MAML",
                  "supervised MAML, second order (agent.first_order=true: FOMAML), vectorized inner loop"),
    "meta-sgd": Entry("metarl.agents.fewshot_maml:META_SGD", "Meta-SGD: MAML with a learned step size per parameter"),
    "anil": Entry("metarl.agents.fewshot_maml:ANIL", "ANIL: MAML adapting only the classifier head"),
    "reptile": Entry("metarl.agents.fewshot_maml:REPTILE", "Reptile: SGD per task, meta-parameters moved toward it"),
    "pretrain": Entry("metarl.agents.fewshot_maml:PRETRAIN",
                      "baseline: one network trained on all tasks, fine-tuned at test time (regression)"),
    "protonet": Entry("metarl.agents.metric_learners:PROTONET", "Prototypical Networks (classification)"),
    "matching-net": Entry("metarl.agents.metric_learners:MATCHING_NET", "Matching Networks (classification)"),
    "relation-net": Entry("metarl.agents.metric_learners:RELATION_NET", "Relation Networks (classification)"),
    "cnp": Entry("metarl.agents.cnp:CNP_SPEC", "Conditional Neural Process (regression, predictive uncertainty)"),
    "fewshot-gen": Entry("metarl.agents.fewshot_gen:FEWSHOT_GEN",
                         "few-shot generation: a VAE meta-trained by Reptile (or pretrained: agent.mode) that "
                         "draws new examples of a class after fine-tuning on K of them"),
    "np": Entry("metarl.agents.neural_process:NP_SPEC",
                "latent Neural Process: CNP plus a global latent z, trained on the ELBO; samples coherent functions"),
    "learned-opt": Entry("metarl.agents.learned_opt:LEARNED_OPT",
                         "learned optimizer: a coordinate-wise LSTM replaces SGD in the inner loop, with a learned "
                         "init (agent.task_conditioned: one update rule per task)"),
    "leo": Entry("metarl.agents.leo:LEO", "LEO: gradient steps on a latent code decoded into the task network's weights"),
    "hypernet": Entry("metarl.agents.hypernet:HYPERNET",
                      "hypernetwork: the support set generates the task network's weights (agent.mode: end-to-end "
                      "or two-stage)"),
}

BASELINES: dict[str, Entry] = {
    "random": Entry("metarl.agents.bandit_baselines:RandomPolicy", "uniformly random actions",
                    ("bandit", "mdp", "navigation", "mujoco", "metaworld")),
    "greedy": Entry("metarl.agents.bandit_baselines:Greedy", "arm with the highest posterior mean", ("bandit",)),
    "epsilon-greedy": Entry("metarl.agents.bandit_baselines:EpsilonGreedy",
                            "greedy, random arm with probability epsilon (0.1)", ("bandit",)),
    "ucb1": Entry("metarl.agents.bandit_baselines:UCB1", "UCB1 (Auer et al. 2002)", ("bandit",)),
    "thompson": Entry("metarl.agents.bandit_baselines:Thompson", "Thompson sampling from the posterior", ("bandit",)),
    "gittins": Entry("metarl.agents.gittins:GittinsPolicy",
                     "Gittins index, discounted approximation (Bernoulli bandits)", ("bernoulli",)),
    "psrl": Entry("metarl.agents.mdp_baselines:PSRL", "posterior sampling RL (Osband et al. 2013)", ("mdp",)),
    "ppo-scratch": Entry("metarl.agents.sb3_scratch:PPOFromScratch",
                         "stable-baselines3 PPO trained from scratch on each held-out task during its trial "
                         "(sb3 extra; opt-in: name it in --baselines)",
                         ("bandit", "mdp", "navigation", "mujoco", "metaworld")),
    "sac-scratch": Entry("metarl.agents.sb3_scratch:SACFromScratch",
                         "stable-baselines3 SAC trained from scratch on each held-out task during its trial "
                         "(continuous control; sb3 extra; opt-in: name it in --baselines)", ("continuous",)),
    "mdp-greedy": Entry("metarl.agents.mdp_baselines:CertaintyEquivalent",
                        "plans on the posterior-mean MDP each episode", ("mdp",)),
}

BENCHES: dict[str, Entry] = {
    "bandit": Entry("metarl.app.bench:bench_bandit",
                    "bandit env steps/s alone and in RL² rollouts (4096 parallel tasks)"),
    "inner-loop": Entry("metarl.app.bench:bench_inner_loop",
                        "MAML inner step for 40 tasks: vmapped functional loop vs a per-task autograd loop"),
    "mujoco": Entry("metarl.app.bench:bench_mujoco",
                    "MuJoCo steps/s: one env alone vs one worker per core with the policy in the loop"),
    "mujoco-paper": Entry("metarl.app.bench:bench_mujoco_paper",
                          "the mujoco bench at the MAML paper's HalfCheetah scale: 800 sub-envs (40 tasks x 20 rollouts)"),
    "metaworld": Entry("metarl.app.bench:bench_metaworld",
                       "Meta-World ML10 steps/s: one env alone, metarl's workers and Meta-World's async vector env, "
                       "policy in the loop"),
    "metaworld-maml": Entry("metarl.app.bench:bench_metaworld_maml",
                            "the metaworld bench at the MAML ML10 config's scale: 200 sub-envs, 500-step episodes"),
    "metaworld-ray": Entry("metarl.app.bench:bench_metaworld_ray",
                           "Meta-World ML10 sampler steps/s on Ray actors vs worker processes, alternating rounds "
                           "(needs the [ray] extra)"),
    "metaworld-rl2-eval": Entry("metarl.app.bench:bench_metaworld_rl2_eval",
                                "RL² evaluation trials on ML10's held-out classes: the policy inside the simulation "
                                "workers vs acting step by step, alternating rounds"),
    "compare": Entry("metarl.app.bench:bench_compare",
                     "seconds metarl compare takes for a report over 10 runs (1000 and 10,000 held-out tasks each)"),
    "maml-sinusoid": Entry("metarl.app.bench:bench_maml_sinusoid",
                           "MAML meta-iterations/s on sinusoid (meta-batch 25, K=10, second order): functional "
                           "inner loop vs a per-task autograd loop"),
}


def load(target: str) -> Any:
    """The object an entry names. A missing optional dependency stays an ImportError (callers that
    list alternatives skip it); a target that names no module or attribute is a broken entry."""
    module, attr = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if module == e.name or module.startswith(f"{e.name}."):  # the target's own module, not a dependency
            raise UserError(f"registry entry {target!r} names no module {e.name!r}: fix its target in "
                            f"metarl/registry.py") from None
        raise
    if not hasattr(mod, attr):
        raise UserError(f"registry entry {target!r}: module {module} has no {attr!r}; fix its target in "
                        f"metarl/registry.py")
    return getattr(mod, attr)


def lookup(kind: str, table: dict[str, Entry], name: str) -> Any:
    """Resolve a registered name, or raise a UserError suggesting the closest names."""
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"unknown {kind} {name!r}; {hint}known {kind}s: {', '.join(table)} (see metarl list)")
    return load(table[name].target)


# Baselines that learn a network per task: slow for thousands of tasks, so only run when named
OPT_IN_BASELINES = ("ppo-scratch", "sac-scratch")


def baselines_for(families: tuple[str, ...], opt_in: bool = False) -> list[str]:
    """Baselines that apply to an env with these families (the opt-in ones only with opt_in)."""
    return [n for n, e in BASELINES.items() if set(e.families) & set(families)
            and (opt_in or n not in OPT_IN_BASELINES)]


def names_where(table: dict[str, Entry], pred) -> list[str]:
    """The registered names whose resolved object satisfies pred, for error messages that list
    alternatives (so they never go stale); entries whose optional dependency is missing are left out."""
    found = []
    for name, entry in table.items():
        try:
            obj = load(entry.target)
        except ImportError:
            continue
        if pred(obj):
            found.append(name)
    return found

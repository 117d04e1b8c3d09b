"""The evaluation protocols: how `metarl eval` scores a method on held-out tasks.

An agent declares its protocol (AgentSpec.protocol); Meta-World envs impose theirs on every
agent (`protocol_of`). The name is what eval.json's "protocol" records.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    name: str       # eval.json's "protocol"
    metric: str     # what a result's "total" measures (few-shot: per task kind, `fewshot_metric`)
    progress: str   # the unit of training progress: "env steps" or "meta-iterations"

    def __str__(self) -> str:
        return self.name


# RL²-style agents and every RL baseline: one trial of the env's episodes per held-out task
TRIAL = Protocol("trial", "mean total reward", "env steps")
# MAML on RL tasks: episode return before and after each inner gradient step
INNER_STEPS = Protocol("inner-steps", "mean episode return", "env steps")
# supervised few-shot learners: query MSE or accuracy after each number of inner steps
FEWSHOT = Protocol("fewshot", "query metric", "meta-iterations")
# Meta-World's meta-learning evaluation: success after adaptation episodes, two tallies
METAWORLD = Protocol("metaworld", "success rate", "env steps")

BY_NAME = {p.name: p for p in (TRIAL, INNER_STEPS, FEWSHOT, METAWORLD)}


def protocol_of(agent_spec, env_spec) -> Protocol:
    """The protocol a run is evaluated by: Meta-World's on Meta-World envs, else the agent's."""
    return METAWORLD if "metaworld" in env_spec.families else agent_spec.protocol


def fewshot_metric(kind: str) -> str:
    """A few-shot distribution's metric: "query MSE" (regression) or "query accuracy"."""
    return "query MSE" if kind == "regression" else "query accuracy"


def progress_unit(report: dict) -> str:
    """The training-progress unit of an eval.json report (its "protocol" name)."""
    p = BY_NAME.get(report.get("protocol"))
    return p.progress if p is not None else "env steps"

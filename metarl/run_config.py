"""A run's configuration: resolved from defaults, a config file and --set options, and loaded
back, with its checkpoint, from a run directory (what `metarl eval`, `--resume` and the
Meta-World agent loader share)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarl.config import as_dict, build, load_toml, parse_sets
from metarl.device import resolve_device
from metarl.errors import UserError
from metarl.protocols import FEWSHOT
from metarl.registry import AGENTS, ENVS, lookup, names_where
from metarl.rundir import load_checkpoint, open_existing

TRAINING_ONLY = ("eval_every", "eval_goals")  # agent.eval_* options that act while training, not at evaluation


def setup_threads(device: torch.device) -> None:
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def resolve_config(agent: str, env: str, file: dict[str, dict] | None = None, sets: list[str] = (),
                   seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Defaults < file (a --config TOML, or a run's saved config) < --set < --seed/--device.
    Returns the typed sections and the env/agent specs."""
    file = file or {}
    cli = parse_sets(list(sets))
    run = {"seed": 0, "device": "auto", **file.get("run", {}), **cli.get("run", {}), "agent": agent, "env": env}
    unknown = set(run) - {"agent", "env", "seed", "device"}
    if unknown:
        raise UserError(f"unknown option run.{sorted(unknown)[0]}; valid run options: agent, env, seed, device")
    if seed is not None:
        run["seed"] = seed
    if device is not None:
        run["device"] = device
    try:
        run["seed"] = int(run["seed"])
    except ValueError:
        raise UserError(f"run.seed={run['seed']!r} is not an integer; give e.g. --seed 0") from None
    if run["seed"] < 0:
        raise UserError(f"seed must be >= 0, got {run['seed']}")
    env_spec = lookup("env", ENVS, run["env"])
    agent_spec = lookup("agent", AGENTS, run["agent"])
    env_domain = getattr(env_spec, "domain", "rl")
    if env_domain != ("fewshot" if agent_spec.protocol is FEWSHOT else "rl"):
        kind = "a supervised few-shot" if env_domain == "fewshot" else "an RL"
        fits = ", ".join(names_where(AGENTS, lambda a: (a.protocol is FEWSHOT) == (env_domain == "fewshot")))
        raise UserError(f"agent {run['agent']!r} cannot train on env {run['env']!r}, which is {kind} task "
                        f"family; agents for it: {fits}")
    env_cfg = build(env_spec.config_cls, {**file.get("env", {}), **cli.get("env", {})}, "env")
    agent_cfg = build(agent_spec.config_cls, {**file.get("agent", {}), **cli.get("agent", {})}, "agent")
    return {"run": run, "env": env_cfg, "agent": agent_cfg, "env_spec": env_spec, "agent_spec": agent_spec}


def saved_config(cfg: dict[str, Any]) -> dict[str, dict]:
    return {"run": cfg["run"], "env": as_dict(cfg["env"]), "agent": as_dict(cfg["agent"])}


@dataclass
class LoadedRun:
    """A run directory read back: its saved config (as written), the resolved config
    (resolve_config's dict: typed sections and specs), its checkpoint and the device."""
    path: Path
    saved: dict[str, dict]
    cfg: dict[str, Any]
    checkpoint: dict[str, Any]
    device: torch.device
    which: str = "latest"  # which checkpoint: "latest" or "best"

    def eval_policy(self, seed: int):
        """The agent's evaluation policy (AgentSpec.load_eval_policy) of this checkpoint."""
        c = self.cfg
        return c["agent_spec"].load_eval_policy(self.checkpoint, c["env_spec"], c["env"], c["agent"], self.device, seed)


def load_run(run_dir: str | Path, *, checkpoint: str = "latest", device: str | None = "auto",
             sets: list[str] = ()) -> LoadedRun:
    """Read a trained run: config.toml (plus evaluation-only `sets`), then the chosen checkpoint
    on the device (weights only: nothing in it runs)."""
    path = open_existing(run_dir)
    saved = load_toml(path / "config.toml")
    cfg = resolve_config(saved["run"]["agent"], saved["run"]["env"], saved, sets=list(sets), device=device or "auto")
    dev = resolve_device(cfg["run"]["device"])
    return LoadedRun(path, saved, cfg, load_checkpoint(path, map_location=dev, which=checkpoint), dev, checkpoint)

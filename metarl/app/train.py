"""`metarl train`: start or resume a run, checkpointed and logged in its run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from metarl.config import as_dict, load_toml
from metarl.device import resolve_device
from metarl.errors import UserError
from metarl.eval.plots import class_success_curve, learning_curve
from metarl.eval.success import MONITOR_SELECT, held_out_monitor
from metarl.run_config import TRAINING_ONLY, resolve_config, saved_config, setup_threads
from metarl.rundir import RunDir, default_run_name, open_existing
from metarl.sim.options import SIMULATION_FIELDS
from metarl.training import train_loop


def train(agent: str, env: str, *, config_file: str | None = None, sets: list[str] = (), seed: int | None = None,
          device: str | None = None, run_dir: str | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, runs_root: str = "runs") -> Path:
    """Train AGENT on ENV; returns the run directory."""
    if resume:
        if not run_dir:
            raise UserError("--resume needs --run-dir RUN_DIR naming the run to continue")
        path = open_existing(run_dir)
        saved = load_toml(path / "config.toml")
        cfg = resolve_config(saved["run"]["agent"], saved["run"]["env"], saved,
                             [s for s in sets if s.startswith(RESUME_CHANGES)], device=device)
        _check_same_run(cfg, agent, env, config_file, sets, seed)
    else:
        if not env:
            raise UserError("--env ENV is needed to start a run (see metarl list); with --resume the run's own is used")
        cfg = resolve_config(agent, env, load_toml(config_file) if config_file else None, sets, seed, device)
        path = Path(run_dir) if run_dir else Path(runs_root) / default_run_name(env, agent, cfg["run"]["seed"])
    dev = resolve_device(cfg["run"]["device"])
    setup_threads(dev)
    monitor = _held_out_monitor(cfg, dev)
    # Build the trainer before touching the disk, so that a bad value leaves nothing behind.
    trainer = cfg["agent_spec"].trainer_cls(cfg["env_spec"], cfg["env"], cfg["agent"], cfg["run"]["seed"], dev)
    run = RunDir(path, resume=resume, overwrite=overwrite)
    start = 0
    if resume:
        ck = run.load_checkpoint(map_location=dev)
        trainer.load_state_dict(ck["trainer"])
        start = ck["iteration"]
        run.truncate_metrics(start)
    saved_cfg = saved_config(cfg)
    run.save_config(saved_cfg)
    if not quiet:
        print(f"training {agent or cfg['run']['agent']} on {cfg['run']['env']} ({trainer.iterations} logged iterations x "
              f"{trainer.steps_per_iteration:,} {cfg['agent_spec'].protocol.progress}, device {dev}) -> {path}", flush=True)
    train_loop(trainer, run, trainer.iterations, saved_cfg, start_iteration=start,
               checkpoint_every=cfg["agent"].checkpoint_every, quiet=quiet, desc=cfg["run"]["env"],
               shown=cfg["agent_spec"].curve_keys, select=MONITOR_SELECT if monitor else cfg["agent_spec"].select_key,
               monitor=monitor)
    metrics = run.read_metrics()
    if metrics:
        learning_curve(metrics, path / "learning_curve.png", f"{cfg['run']['agent']} on {cfg['run']['env']}",
                       keys=cfg["agent_spec"].curve_keys,
                       xlabel=cfg["agent_spec"].protocol.progress)
        class_success_curve(metrics, path / "class_success.png", f"{cfg['run']['agent']} on {cfg['run']['env']}: "
                                                                 "training success per class")
    return path



# What a resumed run may change: its length, and where it simulates (the samples do not depend on it)
RESUME_CHANGES = ("agent.total_steps=", "agent.iterations=", *(f"env.{f}=" for f in SIMULATION_FIELDS))


def _check_same_run(saved: dict[str, Any], agent: str | None, env: str | None, config_file: str | None,
                    sets: list[str], seed: int | None) -> None:
    """A resume given the command that started the run (plus --resume) is fine; one whose agent,
    env, --config, --set or --seed differ from the saved run in anything but RESUME_CHANGES (or the
    evaluation-only agent.eval_* options) is refused in one line naming the first difference."""
    run = saved["run"]
    for key, given in (("agent", agent), ("env", env)):
        if given and given != run[key]:
            raise UserError(f"the run was trained with {key} {run[key]!r}, not {given!r}; a resumed run keeps its "
                            f"saved config")
    if not (config_file or sets or seed is not None):
        return
    given = resolve_config(run["agent"], run["env"], load_toml(config_file) if config_file else saved_config(saved),
                           [s for s in sets if not s.startswith(RESUME_CHANGES)], seed)
    if given["run"]["seed"] != run["seed"]:
        raise UserError(f"the run was trained with seed {run['seed']}, not {given['run']['seed']}; a resumed run keeps "
                        f"its saved config")
    for sec in ("env", "agent"):
        old, new = as_dict(saved[sec]), as_dict(given[sec])
        for k in new:
            if f"{sec}.{k}=".startswith(RESUME_CHANGES) or (sec == "agent" and k.startswith("eval_")
                                                             and k not in TRAINING_ONLY):
                continue
            if new[k] != old.get(k):
                raise UserError(f"a resumed run keeps its saved config: {sec}.{k} is {old.get(k)!r} there, "
                                f"{new[k]!r} here; only agent.total_steps (RL²) or agent.iterations (MAML, few-shot) "
                                f"and where it simulates (env.{', env.'.join(SIMULATION_FIELDS)}) may "
                                f"change (start a new run for other changes)")



def _held_out_monitor(cfg: dict, dev):
    """(agent.eval_every, fn) for train_loop where the agent asks for held-out success while
    training, else None; refuses envs without a held-out protocol."""
    every = getattr(cfg["agent"], "eval_every", 0)
    if not every:
        return None
    env_spec = cfg["env_spec"]
    if "metaworld" not in env_spec.families:
        raise UserError(f"agent.eval_every needs an env with a held-out protocol (Meta-World: ml1, ml10, ml25, "
                        f"ml45); {cfg['run']['env']!r} has none: leave agent.eval_every at 0")
    return every, held_out_monitor(cfg["agent_spec"], env_spec, cfg["env"], cfg["agent"], cfg["run"]["seed"], dev,
                                   cfg["agent"].eval_goals)


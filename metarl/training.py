"""The iteration loop every trainer shares: progress bar, metrics, checkpoints, NaN and Ctrl-C.

A trainer implements:
    steps_per_iteration: int                  env steps per iteration
    iterations: int                           iterations in the whole run (from the agent's config)
    train_iteration(it) -> dict[str, float]   one iteration; deterministic metrics
    state_dict() / load_state_dict(d)         everything needed to resume bit-for-bit
"""
from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from metarl import protocols
from metarl.errors import TrainingDiverged
from metarl.rundir import BEST, RunDir


class Trainer(Protocol):
    """steps_per_iteration env steps per train_iteration. A trainer may also set `last_timing`
    ({"sample_s": ..., "update_s": ...}, seconds of the last iteration), logged to timing.jsonl
    (wall clock never goes into metrics.jsonl, which is reproducible bit for bit)."""
    steps_per_iteration: int
    iterations: int

    def train_iteration(self, it: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class AgentSpec:
    """What the registry returns for an agent name.

    trainer_cls(env_spec, env_cfg, agent_cfg, seed, device) -> Trainer
    load_eval_policy(checkpoint, env_spec, env_cfg, agent_cfg, device, seed) -> the evaluated
        object: a TrialPolicy for protocol TRIAL (RL²: one trial per held-out task), or an
        object with adaptation_returns(env, tasks, steps) -> [N, steps + 1] for INNER_STEPS
        (MAML: return before and after each gradient step); a few-shot learner for FEWSHOT.
    protocol: how `metarl eval` scores it (metarl.protocols; Meta-World envs impose METAWORLD).
    curve_keys: training metrics drawn in learning_curve.png.
    select_key: a training metric to keep the best iteration of (`metarl eval --checkpoint best`).
    extra_eval(checkpoint, env_spec, env_cfg, agent_cfg, device, seed) -> {label: ...}: more
        forms of the same run, reported as "NAME (label)": make_policy(env) -> TrialPolicy for RL
        protocols (multi-task PPO: zero-shot), few-shot learners for FEWSHOT (learned-opt: SGD).
    eval_branch(checkpoint, env_spec, env_cfg, agent_cfg, device, seed) -> (label, make_policy(env)):
        Meta-World, one extra_eval form that can share the agent's adaptation episodes: its
        TrialPolicy plays the agent's own form through adaptation and evaluation, then the form
        `label`'s evaluation episodes from the post-adaptation memory (RL²: Meta-World+'s form), so
        `metarl eval` plays the adaptation episodes once for both.
    """
    name: str
    config_cls: type
    trainer_cls: type
    load_eval_policy: Callable[..., Any]
    protocol: protocols.Protocol = protocols.TRIAL
    curve_keys: tuple[str, ...] = ("trial_return",)
    select_key: str | None = None  # training metric whose best iteration is kept as checkpoints/best.pt
    extra_eval: Callable[..., dict] | None = None
    eval_branch: Callable[..., tuple[str, Any]] | None = None


class Interrupted(Exception):
    """Ctrl-C during training, after a checkpoint was written."""


def progress_bar(total: int, quiet: bool, desc: str):
    from tqdm import tqdm
    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, disable=disable, desc=desc, unit="step", unit_scale=True, dynamic_ncols=True,
                smoothing=0.1)


def train_loop(trainer: Trainer, run: RunDir, iterations: int, config: dict, *, start_iteration: int = 0,
               checkpoint_every: int = 10, quiet: bool = False, desc: str = "train",
               shown: tuple[str, ...] = ("trial_return",), select: str | None = None,
               monitor: tuple[int, Callable[[dict], dict[str, float]]] | None = None) -> None:
    """Run iterations [start_iteration, iterations). Checkpoint every `checkpoint_every`
    iterations and at the end (the progress bar shows the metrics named in `shown`); with
    `select`, also keep checkpoints/best.pt, the iteration with the highest metrics[select] so far
    (the MAML paper evaluates "the model with the best average return during training"): the
    parameters that earned the metric, i.e. the state from before that iteration's update for a
    training metric, and the state after it for a metric of the monitor (which plays the updated
    parameters). A non-finite metric stops training without touching the last good checkpoint;
    Ctrl-C finishes the iteration, checkpoints it and raises Interrupted. monitor (every, fn):
    after every `every`-th iteration, fn(trainer state) -> more metrics for that iteration's row
    (held-out success while training), its seconds logged as monitor_s."""
    spi = trainer.steps_per_iteration

    def state(next_it: int, trainer_state=None, **extra):
        return {"iteration": next_it, "env_steps": next_it * spi, "config": config,
                "trainer": trainer.state_dict() if trainer_state is None else trainer_state, **extra}

    def save(next_it: int):
        run.save_checkpoint(state(next_it))

    # select_from: the first iteration the selection saw (a run resumed from a checkpoint written
    # before it tracked this metric chooses among the later iterations only)
    best, select_from = -math.inf, start_iteration
    if select and start_iteration > 0 and (run.path / BEST).exists():
        saved = run.load_checkpoint(which="best")
        if saved.get("select") == select:  # a best.pt of another selection metric is replaced
            best, select_from = saved.get("select_value", -math.inf), saved.get("select_from", 0)
    monitor_keys: set[str] = set()  # a monitor's metric measures the updated state: no copy needed

    stop = _InterruptFlag()
    bar = progress_bar(iterations * spi, quiet, desc)
    bar.update(start_iteration * spi)
    t_start = time.perf_counter() - (run.trained_s() if start_iteration else 0.0)
    try:
        with stop:
            for it in range(start_iteration, iterations):
                t0 = time.perf_counter()
                # The metric of iteration `it` measures the parameters it starts from; keep them
                # (a copy: state_dict tensors alias the live parameters the update changes).
                before = copy.deepcopy(trainer.state_dict()) if select and select not in monitor_keys else None
                metrics = trainer.train_iteration(it)
                dt = time.perf_counter() - t0
                bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
                if bad:
                    raise TrainingDiverged(
                        f"{', '.join(bad)} became non-finite at iteration {it}; training stopped, the last good "
                        f"checkpoint in {run.path / 'checkpoints'} is kept; lower agent.lr and resume or restart")
                extra, monitored = {}, {}
                if monitor is not None and (it + 1) % monitor[0] == 0:
                    t1 = time.perf_counter()
                    monitored = monitor[1](trainer.state_dict())
                    monitor_keys.update(monitored)
                    metrics = {**metrics, **monitored}
                    extra["monitor_s"] = time.perf_counter() - t1
                run.log({"iteration": it, "env_steps": (it + 1) * spi, **metrics},
                        {"iteration_s": dt, "steps_per_s": spi / dt, "wall_clock_s": time.perf_counter() - t_start,
                         **getattr(trainer, "last_timing", {}), **extra})
                if select and select in metrics and metrics[select] > best:
                    best = metrics[select]
                    tag = {"select": select, "select_value": best, "select_from": select_from}
                    earned = state(it + 1, **tag) if select in monitored else state(it, before, **tag)
                    run.save_checkpoint(earned, "best")
                bar.update(spi)
                postfix = {k: f"{metrics[k]:.3f}" for k in shown if k in metrics}
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
                if stop.requested or (it + 1) % checkpoint_every == 0 or it + 1 == iterations:
                    save(it + 1)
                if stop.requested:
                    raise Interrupted(f"interrupted; checkpoint of iteration {it + 1} saved in {run.path}; "
                                      f"continue with: metarl train ... --resume --run-dir {run.path}")
    finally:
        bar.close()
        run.close()


class _InterruptFlag:
    """First Ctrl-C asks the loop to stop after the current iteration (and checkpoint);
    a second one aborts at once, leaving the previous checkpoint."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

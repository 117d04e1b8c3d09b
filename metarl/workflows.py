"""What the CLI commands do, as plain functions (train, evaluate a run, demo)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from metarl.config import as_dict, build, load_toml, parse_sets
from metarl.device import resolve_device
from metarl.errors import UserError
from metarl.evaluation import (evaluate, evaluate_adaptation_steps, format_table, summarize, summarize_episodes,
                               summarize_steps)
from metarl.plots import adaptation_curve, learning_curve
from metarl.registry import AGENTS, BASELINES, ENVS, baselines_for, lookup
from metarl.run import RunDir, default_run_name, load_checkpoint, open_existing
from metarl.training import train_loop


def _setup_threads(device: torch.device) -> None:
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
    if env_domain != ("fewshot" if agent_spec.protocol == "fewshot" else "rl"):
        kind = "a supervised few-shot" if env_domain == "fewshot" else "an RL"
        fits = "maml, meta-sgd, anil, reptile, pretrain, protonet, matching-net, relation-net, cnp" \
            if env_domain == "fewshot" else "rl2, maml-trpo, maml-ppo"
        raise UserError(f"agent {run['agent']!r} cannot train on env {run['env']!r}, which is {kind} task "
                        f"family; agents for it: {fits}")
    env_cfg = build(env_spec.config_cls, {**file.get("env", {}), **cli.get("env", {})}, "env")
    agent_cfg = build(agent_spec.config_cls, {**file.get("agent", {}), **cli.get("agent", {})}, "agent")
    return {"run": run, "env": env_cfg, "agent": agent_cfg, "env_spec": env_spec, "agent_spec": agent_spec}


def _saved(cfg: dict[str, Any]) -> dict[str, dict]:
    return {"run": cfg["run"], "env": as_dict(cfg["env"]), "agent": as_dict(cfg["agent"])}


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
    _setup_threads(dev)
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
    saved_cfg = _saved(cfg)
    run.save_config(saved_cfg)
    if not quiet:
        print(f"training {agent or cfg['run']['agent']} on {cfg['run']['env']} ({trainer.iterations} iterations x "
              f"{trainer.steps_per_iteration} steps, device {dev}) -> {path}", flush=True)
    train_loop(trainer, run, trainer.iterations, saved_cfg, start_iteration=start,
               checkpoint_every=cfg["agent"].checkpoint_every, quiet=quiet, desc=cfg["run"]["env"],
               shown=cfg["agent_spec"].curve_keys, select=cfg["agent_spec"].select_key, monitor=monitor)
    metrics = run.read_metrics()
    if metrics:
        learning_curve(metrics, path / "learning_curve.png", f"{cfg['run']['agent']} on {cfg['run']['env']}",
                       keys=cfg["agent_spec"].curve_keys,
                       xlabel="meta-iterations" if cfg["agent_spec"].protocol == "fewshot" else "env steps")
    return path


RESUME_CHANGES = ("agent.total_steps=", "agent.iterations=")  # what a resumed run may change: its length


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
    given = resolve_config(run["agent"], run["env"], load_toml(config_file) if config_file else _saved(saved),
                           [s for s in sets if not s.startswith(RESUME_CHANGES)], seed)
    if given["run"]["seed"] != run["seed"]:
        raise UserError(f"the run was trained with seed {run['seed']}, not {given['run']['seed']}; a resumed run keeps "
                        f"its saved config")
    for sec in ("env", "agent"):
        old, new = as_dict(saved[sec]), as_dict(given[sec])
        for k in new:
            if sec == "agent" and (f"agent.{k}=".startswith(RESUME_CHANGES)
                                   or (k.startswith("eval_") and k not in TRAINING_ONLY)):
                continue
            if new[k] != old.get(k):
                raise UserError(f"a resumed run keeps its saved config: {sec}.{k} is {old.get(k)!r} there, "
                                f"{new[k]!r} here; only agent.total_steps (RL²) or agent.iterations (MAML, few-shot) "
                                f"may change (start a new run for other changes)")


TRAINING_ONLY = ("eval_every", "eval_goals")  # agent.eval_* options that act while training, not at evaluation


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
    from metarl.success_eval import held_out_monitor
    return every, held_out_monitor(cfg["agent_spec"], env_spec, cfg["env"], cfg["agent"], cfg["run"]["seed"], dev,
                                   cfg["agent"].eval_goals)


def choose_baselines(spec, names: str) -> list[str]:
    applicable = baselines_for(spec.families, opt_in=True)
    if names in ("all", ""):
        return baselines_for(spec.families)
    if names == "none":
        return []
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        lookup("baseline", BASELINES, n)
        if n not in applicable:
            raise UserError(f"baseline {n!r} does not apply to env {spec.name!r}; applicable: {', '.join(applicable)}")
    return chosen


def evaluate_run(run_dir: str, *, tasks: int = 1000, baselines: str = "all", seed: int = 0,
                 device: str | None = None, checkpoint: str = "latest", sets: list[str] = (),
                 split: str = "test") -> dict[str, Any]:
    """Evaluate a trained run (its latest or best checkpoint) and the chosen baselines on the
    same held-out tasks; writes eval.json. `sets` may change the agent's evaluation options
    (agent.eval_*) from those saved with the run. split "train" (Meta-World only, whose
    training and test classes differ) plays the training classes by the same protocol and
    writes eval_train.json: meta-train success beside meta-test, the generalization gap."""
    if tasks < 1:
        raise UserError(f"--tasks must be >= 1, got {tasks}")
    if split not in ("test", "train"):
        raise UserError(f"--split must be test or train, got {split!r}")
    eval_sets = parse_sets(list(sets))
    for section, keys in eval_sets.items():
        bad = [k for k in keys if section != "agent" or not k.startswith("eval_") or k in TRAINING_ONLY]
        if bad:
            raise UserError(f"--set {section}.{bad[0]}: metarl eval changes only evaluation options (agent.eval_*); "
                            f"the rest are fixed by training")
    path = open_existing(run_dir)
    saved = load_toml(path / "config.toml")
    cfg = resolve_config(saved["run"]["agent"], saved["run"]["env"], saved, sets=list(sets), device=device or "auto")
    dev = resolve_device(cfg["run"]["device"])
    _setup_threads(dev)
    names = choose_baselines(cfg["env_spec"], baselines)
    ck = load_checkpoint(path, map_location=dev, which=checkpoint)
    env_spec, env_cfg = cfg["env_spec"], cfg["env"]
    agent_name = saved["run"]["agent"]
    spec = cfg["agent_spec"]
    inner_steps = spec.protocol == "inner-steps"
    if spec.protocol == "fewshot":
        return _evaluate_fewshot_run(path, saved, cfg, ck, tasks, seed, dev, checkpoint)
    if "metaworld" in env_spec.families:  # success by Meta-World's protocol, every method alike
        return _evaluate_success_run(path, saved, cfg, ck, names, tasks, seed, dev, checkpoint, split)
    if split != "test":
        raise UserError(f"--split train is for Meta-World runs, whose training and test classes differ; "
                        f"{saved['run']['env']!r} draws both splits from one distribution")
    if inner_steps:  # MAML: return before and after each gradient step, baselines per episode
        learner = spec.load_eval_policy(ck, env_spec, env_cfg, cfg["agent"], dev, seed)
        steps = cfg["agent"].eval_steps
        results = {agent_name: summarize_steps(
            evaluate_adaptation_steps(learner, env_spec, env_cfg, tasks, seed, dev, steps))}
        summary = summarize_episodes
    else:
        results = {agent_name: summarize(evaluate(
            lambda env: spec.load_eval_policy(ck, env_spec, env_cfg, cfg["agent"], dev, seed),
            env_spec, env_cfg, tasks, seed, dev))}
        for label, make in _extra_policies(spec, ck, cfg, dev, seed).items():
            results[f"{agent_name} ({label})"] = summarize(evaluate(make, env_spec, env_cfg, tasks, seed, dev))
        summary = summarize
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summary(evaluate(lambda env: cls(env, env_cfg, seed), env_spec, env_cfg, tasks, seed, dev))
    report = {"env": saved["run"]["env"], "env_config": saved["env"], "agent": agent_name, "tasks": tasks,
              "seed": seed, "device": str(dev), "checkpoint_iteration": ck["iteration"], "env_steps": ck["env_steps"],
              "checkpoint": checkpoint, "eval_options": {k: getattr(cfg["agent"], k) for k in eval_sets.get("agent", {})},
              "protocol": spec.protocol, "metric": "mean episode return" if inner_steps else "mean total reward",
              "results": results}
    return _write_report(path, report)


def _extra_policies(spec, ck: dict, cfg: dict, dev, seed: int) -> dict:
    """{label: make_policy(env)}: the run's other evaluated forms (AgentSpec.extra_eval)."""
    if spec.extra_eval is None:
        return {}
    return spec.extra_eval(ck, cfg["env_spec"], cfg["env"], cfg["agent"], dev, seed)


def _which_tasks(report: dict) -> str:
    """'training' for a --split train report, else 'held-out'."""
    return "training" if report.get("split") == "train" else "held-out"


def _write_report(path: Path, report: dict, stem: str = "eval") -> dict:
    """STEM.json (atomically) and STEM_adaptation.png in the run directory."""
    tmp = path / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path / f"{stem}.json")
    adaptation_curve(report["results"], path / f"{stem}_adaptation.png",
                     f"{_which_tasks(report)} {report['env']} tasks")
    return report


def _evaluate_success_run(path: Path, saved: dict, cfg: dict, ck: dict, names: list[str], tasks: int, seed: int,
                          dev, checkpoint: str, split: str = "test") -> dict:
    """Meta-World: the split's classes x goals (env.goals_per_class, fewer when --tasks asks for
    fewer), adaptation then evaluation episodes; success tallied per task (metarl.success_eval).
    Writes eval.json (test) or eval_train.json (train)."""
    from metarl.success_eval import evaluate_success, summarize_success
    env_spec, env_cfg, spec = cfg["env_spec"], cfg["env"], cfg["agent_spec"]
    classes = len(env_spec.make_distribution(env_cfg).names[split])
    goals = max(1, min(env_cfg.goals_per_class, tasks // classes))
    agent = spec.load_eval_policy(ck, env_spec, env_cfg, cfg["agent"], dev, seed)
    results = {saved["run"]["agent"]: summarize_success(
        evaluate_success(lambda env: agent, spec.protocol, env_spec, env_cfg, goals, seed, dev, split=split))}
    for label, make in _extra_policies(spec, ck, cfg, dev, seed).items():
        results[f"{saved['run']['agent']} ({label})"] = summarize_success(
            evaluate_success(make, "trial", env_spec, env_cfg, goals, seed, dev, split=split))
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summarize_success(evaluate_success(
            lambda env, cls=cls: cls(env, env_cfg, seed), "trial", env_spec, env_cfg, goals, seed, dev, split=split))
    report = {"env": saved["run"]["env"], "env_config": saved["env"], "agent": saved["run"]["agent"],
              "split": split, "tasks": classes * goals, "goals_per_class": goals, "seed": seed, "device": str(dev),
              "checkpoint": checkpoint, "checkpoint_iteration": ck["iteration"], "env_steps": ck["env_steps"],
              "protocol": "metaworld",
              "metric": "success rate", "results": results}
    return _write_report(path, report, "eval" if split == "test" else "eval_train")


def _evaluate_fewshot_run(path: Path, saved: dict, cfg: dict, ck: dict, tasks: int, seed: int, dev,
                          checkpoint: str) -> dict:
    """Few-shot learners: query MSE (regression) or accuracy (classification) on held-out tasks
    after 0, 1, 5, 10 inner steps; CNP also against the number of context points."""
    from metarl import fewshot_eval as fe
    env_spec, env_cfg, spec, agent_cfg = cfg["env_spec"], cfg["env"], cfg["agent_spec"], cfg["agent"]
    dist = env_spec.make_distribution(env_cfg)
    learner = spec.load_eval_policy(ck, env_spec, env_cfg, agent_cfg, dev, seed)
    name = saved["run"]["agent"]
    result = fe.summarize_fewshot(fe.evaluate_fewshot(learner, dist, tasks, seed, agent_cfg.eval_steps, dev),
                                  dist.kind)
    title = f"held-out {saved['run']['env']} tasks"
    if hasattr(learner, "predict_dist"):
        contexts = [c for c in (1, 2, 5, 10, 20, 50, 100) if c <= getattr(env_cfg, "context_max", 100)]
        result["per_context"] = fe.evaluate_context_sizes(learner, dist, tasks, seed, contexts, dev)
        fe.context_plot(result["per_context"], path / "eval_context.png", f"{name}: {title}")
    report = {"env": saved["run"]["env"], "env_config": saved["env"], "agent": name, "tasks": tasks, "seed": seed,
              "device": str(dev), "checkpoint": checkpoint, "checkpoint_iteration": ck["iteration"],
              "env_steps": ck["env_steps"], "protocol": "fewshot",
              "metric": "query MSE" if dist.kind == "regression" else "query accuracy",
              "results": {name: result}}
    tmp = path / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path / "eval.json")
    fe.steps_plot(report["results"], path / "eval_adaptation.png", title)
    if dist.kind == "regression":
        fe.fits_plot(learner, dist, path / "eval_fits.png", f"{name}: {title}", seed,
                     fe.report_steps(agent_cfg.eval_steps), dev)
    return report


def table_rows(report: dict) -> dict[str, dict]:
    """One row per method; an inner-steps agent gets one row per number of gradient steps,
    named like the MAML paper's table ("maml-trpo (1 step)")."""
    rows = {}
    for name, r in report["results"].items():
        if "per_step" in r and isinstance(r["per_step"], dict):  # few-shot: one row per inner-step count
            if len(r["per_step"]) == 1:
                rows[name] = {"total": r["total"]}
            for k, c in (r["per_step"].items() if len(r["per_step"]) > 1 else ()):
                rows[f"{name} ({k} step{'' if k == '1' else 's'})"] = {"total": c}
        elif "per_step_return" in r:
            for k, c in enumerate(r["per_step_return"]):
                rows[f"{name} ({k} step{'' if k == 1 else 's'})"] = {"total": c}
        else:
            rows[name] = r
    return rows


def report_table(report: dict) -> str:
    rows = table_rows(report)
    text = format_table(rows, eval_title(report), report.get("metric", "mean total reward"),
                        lower_is_better=report.get("metric") == "query MSE")
    for name, r in rows.items():  # few-shot: tasks whose inner loop blew up make the mean nan / inf
        if r["total"].get("diverged"):
            text += (f"\n{name}: {r['total']['diverged']} of {r['total']['n']} tasks diverged (score not finite); "
                     f"median over the rest {r['total']['median']:.3f}")
    if report.get("protocol") == "metaworld":
        text += "".join("\n\n" + t for t in (tally_table(report["results"]), per_class_table(report["results"])) if t)
    return text


def tally_table(results: dict) -> str:
    """Meta-World: each method's success by both tallies of the same episodes (metarl.success_eval):
    per task (every episode counts) and Meta-World's own (the first episodes to end per class
    among a meta-batch of 20, what published figures use)."""
    rows = [(n, r) for n, r in results.items() if "metaworld_tally" in r]
    if not rows:
        return ""
    width = max(len("method"), *(len(n) for n, _ in rows)) + 2
    group = rows[0][1]["metaworld_tally"]["group_size"]
    lines = [f"success by tally ({group} goals of a class per Meta-World group)",
             f"{'method':<{width}}{'per task':>22}  {'Meta-World tally':>24}"]
    for n, r in rows:
        cells = [f"{t['mean']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}]"
                 for t in (r["total"], r["metaworld_tally"]["total"])]
        lines.append(f"{n:<{width}}{cells[0]:>22}  {cells[1]:>24}")
    return "\n".join(lines)


def per_class_table(results: dict) -> str:
    """Meta-World: success rate of each class (rows) for each method (columns), mean over its goals."""
    classes = list(dict.fromkeys(c for r in results.values() for c in r.get("per_class", {})))
    width = max([len("class")] + [len(c) for c in classes])
    cols = [max(len(n), 7) for n in results]
    lines = [f"{'class':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(results, cols))]
    for c in classes:
        cells = [f"{r['per_class'][c]['mean']:>{w}.3f}" if c in r.get("per_class", {}) else f"{'–':>{w}}"
                 for r, w in zip(results.values(), cols)]
        lines.append(f"{c:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def eval_title(report: dict) -> str:
    envc = ", ".join(f"{k}={v}" for k, v in report["env_config"].items())
    return (f"{report['env']} ({envc}): {report['tasks']} {_which_tasks(report)} tasks, seed {report['seed']}, "
            f"{report['agent']} after {report['env_steps']:,} "
            f"{'meta-iterations' if report.get('protocol') == 'fewshot' else 'env steps'}")


DEMO_STEPS = 6_000_000


def demo(*, device: str | None = None, quiet: bool = False, runs_root: str = "runs", steps: int = DEMO_STEPS) -> dict:
    """Meta-train RL² on 5-armed bandits with 10 pulls, then evaluate it against the classical
    baselines on 1000 held-out tasks."""
    path = train("rl2", "bandit", sets=[f"agent.total_steps={steps}", "agent.gamma=0.9", "agent.ent_anneal=true"],
                 device=device, quiet=quiet,
                 runs_root=runs_root, run_dir=str(Path(runs_root) / default_run_name("bandit", "rl2-demo", 0)))
    report = evaluate_run(str(path), tasks=1000, device=device)
    report["run_dir"] = str(path)
    return report

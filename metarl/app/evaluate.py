"""`metarl eval`: a trained run and the chosen baselines on the same held-out tasks, by its
env's protocol (trial totals, return per gradient step, few-shot metric per inner step, or
Meta-World success); writes eval.json (eval_train.json for --split train)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metarl.run_config import TRAINING_ONLY, LoadedRun, load_run, setup_threads
from metarl.app.report import which_tasks
from metarl.config import parse_sets
from metarl.errors import UserError
from metarl.evaluation import (EVAL_SCHEMA, evaluate, evaluate_adaptation_steps, summarize, summarize_episodes,
                               summarize_steps)
from metarl.plots import adaptation_curve
from metarl.registry import BASELINES, baselines_for, lookup


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
    run = load_run(run_dir, checkpoint=checkpoint, device=device, sets=sets)
    path, saved, cfg, ck, dev = run.path, run.saved, run.cfg, run.checkpoint, run.device
    setup_threads(dev)
    names = choose_baselines(cfg["env_spec"], baselines)
    env_spec, env_cfg = cfg["env_spec"], cfg["env"]
    agent_name = saved["run"]["agent"]
    spec = cfg["agent_spec"]
    inner_steps = spec.protocol == "inner-steps"
    if spec.protocol == "fewshot":
        return _evaluate_fewshot_run(run, tasks, seed, checkpoint)
    if "metaworld" in env_spec.families:  # success by Meta-World's protocol, every method alike
        return _evaluate_success_run(run, names, tasks, seed, checkpoint, split)
    if split != "test":
        raise UserError(f"--split train is for Meta-World runs, whose training and test classes differ; "
                        f"{saved['run']['env']!r} draws both splits from one distribution")
    if inner_steps:  # MAML: return before and after each gradient step, baselines per episode
        learner = run.eval_policy(seed)
        steps = cfg["agent"].eval_steps
        results = {agent_name: summarize_steps(
            evaluate_adaptation_steps(learner, env_spec, env_cfg, tasks, seed, dev, steps))}
        summary = summarize_episodes
    else:
        results = {agent_name: summarize(evaluate(lambda env: run.eval_policy(seed), env_spec, env_cfg, tasks,
                                                  seed, dev))}
        for label, make in _extra_policies(spec, ck, cfg, dev, seed).items():
            results[f"{agent_name} ({label})"] = summarize(evaluate(make, env_spec, env_cfg, tasks, seed, dev))
        summary = summarize
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summary(evaluate(lambda env: cls(env, env_cfg, seed), env_spec, env_cfg, tasks, seed, dev))
    report = {"schema": EVAL_SCHEMA, "env": saved["run"]["env"], "env_config": saved["env"], "agent": agent_name,
              "tasks": tasks,
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



def _write_report(path: Path, report: dict, stem: str = "eval") -> dict:
    """STEM.json (atomically) and STEM_adaptation.png in the run directory."""
    tmp = path / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path / f"{stem}.json")
    adaptation_curve(report["results"], path / f"{stem}_adaptation.png",
                     f"{which_tasks(report)} {report['env']} tasks")
    return report



def _evaluate_success_run(run: LoadedRun, names: list[str], tasks: int, seed: int, checkpoint: str,
                          split: str = "test") -> dict:
    """Meta-World: the split's classes x goals (env.goals_per_class, fewer when --tasks asks for
    fewer), adaptation then evaluation episodes; success tallied per task (metarl.success_eval).
    Writes eval.json (test) or eval_train.json (train)."""
    from metarl.success_eval import evaluate_success, summarize_success
    path, saved, cfg, ck, dev = run.path, run.saved, run.cfg, run.checkpoint, run.device
    env_spec, env_cfg, spec = cfg["env_spec"], cfg["env"], cfg["agent_spec"]
    classes = len(env_spec.make_distribution(env_cfg).names[split])
    goals = max(1, min(env_cfg.goals_per_class, tasks // classes))
    agent = run.eval_policy(seed)
    results = {saved["run"]["agent"]: summarize_success(
        evaluate_success(lambda env: agent, spec.protocol, env_spec, env_cfg, goals, seed, dev, split=split))}
    for label, make in _extra_policies(spec, ck, cfg, dev, seed).items():
        results[f"{saved['run']['agent']} ({label})"] = summarize_success(
            evaluate_success(make, "trial", env_spec, env_cfg, goals, seed, dev, split=split))
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summarize_success(evaluate_success(
            lambda env, cls=cls: cls(env, env_cfg, seed), "trial", env_spec, env_cfg, goals, seed, dev, split=split))
    report = {"schema": EVAL_SCHEMA, "env": saved["run"]["env"], "env_config": saved["env"],
              "agent": saved["run"]["agent"], "split": split, "tasks": classes * goals, "goals_per_class": goals, "seed": seed, "device": str(dev),
              "checkpoint": checkpoint, "checkpoint_iteration": ck["iteration"], "env_steps": ck["env_steps"],
              "protocol": "metaworld",
              "metric": "success rate", "results": results}
    return _write_report(path, report, "eval" if split == "test" else "eval_train")



def _evaluate_fewshot_run(run: LoadedRun, tasks: int, seed: int, checkpoint: str) -> dict:
    """Few-shot learners: query MSE (regression) or accuracy (classification) on held-out tasks
    after 0, 1, 5, 10 inner steps; CNP also against the number of context points."""
    from metarl import fewshot_eval as fe
    path, saved, cfg, ck, dev = run.path, run.saved, run.cfg, run.checkpoint, run.device
    env_spec, env_cfg, agent_cfg = cfg["env_spec"], cfg["env"], cfg["agent"]
    dist = env_spec.make_distribution(env_cfg)
    learner = run.eval_policy(seed)
    name = saved["run"]["agent"]
    result = fe.summarize_fewshot(fe.evaluate_fewshot(learner, dist, tasks, seed, agent_cfg.eval_steps, dev),
                                  dist.kind)
    title = f"held-out {saved['run']['env']} tasks"
    if hasattr(learner, "predict_dist"):
        contexts = [c for c in (1, 2, 5, 10, 20, 50, 100) if c <= getattr(env_cfg, "context_max", 100)]
        result["per_context"] = fe.evaluate_context_sizes(learner, dist, tasks, seed, contexts, dev)
        fe.context_plot(result["per_context"], path / "eval_context.png", f"{name}: {title}")
    report = {"schema": EVAL_SCHEMA, "env": saved["run"]["env"], "env_config": saved["env"], "agent": name,
              "tasks": tasks, "seed": seed,
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


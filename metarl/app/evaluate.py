"""`metarl eval`: a trained run and the chosen baselines on the same held-out tasks, by its
env's protocol (trial totals, return per gradient step, few-shot metric per inner step, or
Meta-World success); writes eval.json (eval_train.json for --split train; eval_best.json,
eval_train_best.json for --checkpoint best)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from metarl.app.report import which_tasks
from metarl.config import as_dict, build, parse_sets
from metarl.errors import UserError
from metarl.eval.plots import adaptation_curve
from metarl.eval.result import EVAL_SCHEMA
from metarl.eval.trials import evaluate, evaluate_adaptation_steps, summarize, summarize_episodes, summarize_steps
from metarl.protocols import FEWSHOT, INNER_STEPS, METAWORLD, TRIAL, Protocol, protocol_of
from metarl.registry import BASELINES, ENVS, baselines_for, lookup
from metarl.run_config import TRAINING_ONLY, LoadedRun, load_run, setup_threads


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
                 split: str = "test", env: str | None = None, attack=None) -> dict[str, Any]:
    """Evaluate a trained run (its latest or best checkpoint) and the chosen baselines on the
    same held-out tasks; writes eval.json. `sets` may change the agent's evaluation options
    (agent.eval_*) from those saved with the run. split "train" (Meta-World only, whose
    training and test classes differ) plays the training classes by the same protocol and
    writes eval_train.json: meta-train success beside meta-test, the generalization gap. `env`
    (few-shot runs) evaluates on another task family with its default options, e.g. a learner
    trained on sinusoid tested unchanged on gp-regression; writes eval_ENV.json. `attack`
    (metarl.fewshot.attacks.Attack, few-shot classifiers) adds the learner's robust accuracy
    under that attack on the same tasks."""
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
    setup_threads(run.device)
    protocol = protocol_of(run.cfg["agent_spec"], run.cfg["env_spec"])
    if split != "test" and protocol is not METAWORLD:
        raise UserError(f"--split train is for Meta-World runs, whose training and test classes differ; "
                        f"{run.saved['run']['env']!r} draws both splits from one distribution")
    names = choose_baselines(run.cfg["env_spec"], baselines)
    if attack is not None and (protocol is not FEWSHOT or "classification" not in run.cfg["env_spec"].families):
        raise UserError("--attack perturbs query images: it is for few-shot classifiers (glyphs, omniglot)")
    if env is not None or attack is not None:
        if protocol is not FEWSHOT:
            raise UserError("--env (another task family) is for few-shot runs; an RL run is evaluated on its own env")
        return _evaluate_fewshot_run(run, names, tasks, seed, split, eval_sets,
                                     other=None if env is None else _other_family(run, env), attack=attack)
    return EVALUATE[protocol](run, names, tasks, seed, split, eval_sets)


def _other_family(run: LoadedRun, name: str) -> tuple:
    """(name, spec, default config) of a few-shot family whose tasks fit the run's network."""
    spec = lookup("env", ENVS, name)
    if getattr(spec, "domain", "rl") != "fewshot":
        raise UserError(f"--env {name!r} is an RL task distribution; a few-shot run is evaluated on few-shot ones")
    cfg = build(spec.config_cls, {}, "env")
    own, other = run.cfg["env_spec"].make_distribution(run.cfg["env"]), spec.make_distribution(cfg)
    def shape(d):
        return d.kind, tuple(d.x_shape), d.y_dim if d.kind == "regression" else d.ways
    if shape(own) != shape(other):
        raise UserError(f"--env {name!r} has tasks {shape(other)} (kind, input shape, outputs); the run's network "
                        f"was built for {shape(own)}")
    return name, spec, cfg


def _report(run: LoadedRun, protocol: Protocol, metric: str, tasks: int, seed: int, results: dict, **extra) -> dict:
    """eval.json: what was evaluated, how, and every method's result (metarl.eval.result)."""
    ck = run.checkpoint
    return {"schema": EVAL_SCHEMA, "env": run.saved["run"]["env"], "env_config": run.saved["env"],
            "agent": run.saved["run"]["agent"], "tasks": tasks, "seed": seed, "device": str(run.device),
            "checkpoint": run.which, "checkpoint_iteration": ck["iteration"], "env_steps": ck["env_steps"],
            "protocol": protocol.name, "metric": metric, **extra, "results": results}


def _evaluate_trial_run(run: LoadedRun, names: list[str], tasks: int, seed: int, split: str, eval_sets: dict) -> dict:
    """RL²-style agents, their other forms and the baselines: one trial per held-out task, total reward."""
    cfg, dev = run.cfg, run.device
    env_spec, env_cfg, agent = cfg["env_spec"], cfg["env"], run.saved["run"]["agent"]
    results = {agent: summarize(evaluate(lambda env: run.eval_policy(seed), env_spec, env_cfg, tasks, seed, dev))}
    for label, make in _extra_policies(cfg["agent_spec"], run.checkpoint, cfg, dev, seed).items():
        results[f"{agent} ({label})"] = summarize(evaluate(make, env_spec, env_cfg, tasks, seed, dev))
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summarize(evaluate(lambda env: cls(env, env_cfg, seed), env_spec, env_cfg, tasks, seed, dev))
    return _write_report(run.path, _report(run, TRIAL, TRIAL.metric, tasks, seed, results,
                                           eval_options=_eval_options(cfg, eval_sets)))


def _evaluate_steps_run(run: LoadedRun, names: list[str], tasks: int, seed: int, split: str, eval_sets: dict) -> dict:
    """MAML: the episode return before and after each gradient step; baselines per episode."""
    cfg, dev = run.cfg, run.device
    env_spec, env_cfg = cfg["env_spec"], cfg["env"]
    learner = run.eval_policy(seed)
    results = {run.saved["run"]["agent"]: summarize_steps(
        evaluate_adaptation_steps(learner, env_spec, env_cfg, tasks, seed, dev, cfg["agent"].eval_steps))}
    for name in names:
        cls = lookup("baseline", BASELINES, name)
        results[name] = summarize_episodes(evaluate(lambda env: cls(env, env_cfg, seed), env_spec, env_cfg, tasks,
                                                    seed, dev))
    return _write_report(run.path, _report(run, INNER_STEPS, INNER_STEPS.metric, tasks, seed, results,
                                           eval_options=_eval_options(cfg, eval_sets)))


def _eval_options(cfg: dict, eval_sets: dict) -> dict:
    """The agent.eval_* options given to `metarl eval`, as applied."""
    return {k: getattr(cfg["agent"], k) for k in eval_sets.get("agent", {})}


def _extra_policies(spec, ck: dict, cfg: dict, dev, seed: int) -> dict:
    """The run's other evaluated forms (AgentSpec.extra_eval): {label: make_policy(env)}, or for a
    few-shot learner {label: learner}."""
    if spec.extra_eval is None:
        return {}
    return spec.extra_eval(ck, cfg["env_spec"], cfg["env"], cfg["agent"], dev, seed)



def _write_report(path: Path, report: dict, stem: str = "eval") -> dict:
    """STEM.json (atomically) and STEM_adaptation.png in the run directory; STEM_best.* for the
    best checkpoint, so that its evaluation never replaces the latest one's."""
    if report.get("checkpoint") == "best":
        stem += "_best"
    tmp = path / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path / f"{stem}.json")
    adaptation_curve(report["results"], path / f"{stem}_adaptation.png",
                     f"{which_tasks(report)} {report['env']} tasks")
    return report



def _evaluate_success_run(run: LoadedRun, names: list[str], tasks: int, seed: int, split: str,
                          eval_sets: dict) -> dict:
    """Meta-World: the split's classes x goals (env.goals_per_class, fewer when --tasks asks for
    fewer), adaptation then evaluation episodes; success tallied per task (metarl.eval.success).
    Writes eval.json (test) or eval_train.json (train). Each method's result is kept as it is
    done (_MethodParts), so an evaluation stopped part way resumes at the next method."""
    from metarl.eval.success import evaluate_success, evaluate_success_branches, summarize_success
    cfg, ck, dev = run.cfg, run.checkpoint, run.device
    env_spec, env_cfg, spec = cfg["env_spec"], cfg["env"], cfg["agent_spec"]
    classes = len(env_spec.make_distribution(env_cfg).names[split])
    goals = max(1, min(env_cfg.goals_per_class, tasks // classes))
    stem = "eval" if split == "test" else "eval_train"
    parts = _MethodParts(run, stem + ("_best" if run.which == "best" else ""), {"goals": goals, "seed": seed, "eval_options": _eval_options(cfg, eval_sets)})
    name = run.saved["run"]["agent"]

    def agent_result():
        agent = run.eval_policy(seed)  # one policy object for every batch of tasks, as the forms below
        return summarize_success(evaluate_success(lambda env: agent, spec.protocol, env_spec, env_cfg, goals, seed,
                                                  dev, split=split, desc=f"{name} ({split})"))
    forms = {name: agent_result}
    for label, make in _extra_policies(spec, ck, cfg, dev, seed).items():
        forms[f"{name} ({label})"] = lambda make=make, label=label: summarize_success(evaluate_success(
            make, TRIAL, env_spec, env_cfg, goals, seed, dev, split=split, desc=f"{name} ({label}, {split})"))
    if spec.eval_branch is not None:  # the agent and one extra form played on the same adaptation episodes
        label, make = spec.eval_branch(ck, env_spec, env_cfg, cfg["agent"], dev, seed)
        pair = [name, f"{name} ({label})"]
        if not any(parts.has(m) for m in pair):
            both = evaluate_success_branches(make, TRIAL, env_spec, env_cfg, goals, seed, dev, split=split, branches=2,
                                             desc=f"{name} and {label} ({split})")
            for m, ev in zip(pair, both):
                parts.put(m, summarize_success(ev))
    results = {m: parts.get(m, compute) for m, compute in forms.items()}
    for b in names:
        cls = lookup("baseline", BASELINES, b)
        results[b] = parts.get(b, lambda: summarize_success(evaluate_success(
            lambda env: cls(env, env_cfg, seed), TRIAL, env_spec, env_cfg, goals, seed, dev, split=split,
            desc=f"{b} ({split})")))
    report = _report(run, METAWORLD, METAWORLD.metric, classes * goals, seed, results, split=split,
                     goals_per_class=goals)
    report = _write_report(run.path, report, stem)
    parts.clear()
    return report


class _MethodParts:
    """Finished methods of an evaluation in progress, RUN/STEM_parts/METHOD.json, each stamped
    with what it was computed for (checkpoint, its iteration, device and `key`); a part with another
    stamp is computed again. Cleared once the whole report is written."""

    def __init__(self, run: LoadedRun, stem: str, key: dict):
        self.dir = run.path / f"{stem}_parts"
        self.stamp = {"checkpoint": run.which, "iteration": run.checkpoint["iteration"], "device": str(run.device),
                      **key}

    def _path(self, method: str) -> Path:
        return self.dir / f"{method.replace('/', '_')}.json"

    def has(self, method: str) -> bool:
        path = self._path(method)
        return path.exists() and json.loads(path.read_text()).get("stamp") == self.stamp

    def get(self, method: str, compute) -> dict:
        if self.has(method):
            return json.loads(self._path(method).read_text())["result"]
        result = compute()
        self.put(method, result)
        return result

    def put(self, method: str, result: dict) -> None:
        path = self._path(method)
        self.dir.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stamp": self.stamp, "result": result}))
        os.replace(tmp, path)

    def clear(self) -> None:
        if self.dir.exists():
            for f in self.dir.iterdir():
                f.unlink()
            self.dir.rmdir()


def _evaluate_fewshot_run(run: LoadedRun, names: list[str], tasks: int, seed: int, split: str,
                          eval_sets: dict, other: tuple | None = None, attack=None) -> dict:
    """Few-shot learners: query MSE (regression) or accuracy (classification) on held-out tasks
    after 0, 1, 5, 10 inner steps; CNP also against the number of context points. `other`:
    (name, spec, config) of another family to test on instead (_other_family); `attack`: also the
    learner's robust accuracy, as "NAME (ATTACK)"."""
    from metarl.fewshot import evaluation as fe
    path, saved, cfg, dev = run.path, run.saved, run.cfg, run.device
    env_spec, env_cfg, agent_cfg = cfg["env_spec"], cfg["env"], cfg["agent"]
    stem, extra = "eval", {}
    if other is not None:
        env_name, env_spec, env_cfg = other
        stem = f"eval_{env_name}"
        extra = {"env": env_name, "env_config": as_dict(env_cfg), "trained_on": saved["run"]["env"]}
    dist = env_spec.make_distribution(env_cfg)
    learner = run.eval_policy(seed)
    name = saved["run"]["agent"]
    if hasattr(learner, "evaluate_tasks"):  # a learner with its own protocol (few-shot generation)
        if attack is not None or other is not None:
            raise UserError(f"agent {name} has its own evaluation: --attack and --env do not apply")
        results = learner.evaluate_tasks(dist, tasks, seed, dev, path / f"{stem}_samples.png")
        return _write_report(path, _report(run, FEWSHOT, results[name]["metric"], tasks, seed, results), stem)
    result = fe.summarize_fewshot(fe.evaluate_fewshot(learner, dist, tasks, seed, agent_cfg.eval_steps, dev),
                                  dist.kind)
    results = {name: result}
    if attack is not None:
        results[f"{name} ({attack.label})"] = fe.summarize_fewshot(
            fe.evaluate_fewshot(learner, dist, tasks, seed, agent_cfg.eval_steps, dev, attack=attack), dist.kind)
    for label, extra_learner in _extra_policies(cfg["agent_spec"], run.checkpoint, cfg, dev, seed).items():
        results[f"{name} ({label})"] = fe.summarize_fewshot(  # the same tasks, e.g. SGD from a learned init
            fe.evaluate_fewshot(extra_learner, dist, tasks, seed, agent_cfg.eval_steps, dev), dist.kind)
    if getattr(getattr(learner, "model", None), "arch", "") is None:  # a cell search: the chosen cell
        from metarl.agents.arch_search import arch_report, choose_on_validation, supernet_accuracy, weight_count
        from metarl.agents.fewshot_nets import Conv4
        conv4 = weight_count(Conv4(dist.x_shape[0], agent_cfg.channels, dist.ways))
        budget = conv4 if agent_cfg.search_weights == "conv4" else None
        val_tasks, started = min(tasks, 200), time.perf_counter()
        val, widths = choose_on_validation(learner, dist, seed, dev, val_tasks, agent_cfg.eval_steps,
                                           max_weights=budget, proxy_iterations=agent_cfg.search_proxy_iterations)
        shared = supernet_accuracy(learner, dist, list(val), seed, dev, val_tasks, agent_cfg.eval_steps)
        extra["search"] = {**arch_report(learner.model, val, widths, shared, path / f"{stem}_arch.txt",
                                         path / f"{stem}_arch.png", conv4, budget),
                           "choice_s": time.perf_counter() - started}  # the search's second part, timed
    title = f"held-out {extra.get('env', saved['run']['env'])} tasks"
    if hasattr(learner, "loglik"):  # probabilistic regressors: CNP, NP
        most = min(getattr(env_cfg, "context_max", 100), getattr(env_cfg, "points", 0) or 100)
        contexts = [c for c in (1, 2, 5, 10, 20, 50, 100) if c <= most]
        result["per_context"] = fe.evaluate_context_sizes(learner, dist, tasks, seed, contexts, dev)
        fe.context_plot(result["per_context"], path / f"{stem}_context.png", f"{name}: {title}")
    report = _write_report(path, _report(run, FEWSHOT, result["metric"], tasks, seed, results, **extra), stem)
    if dist.kind == "regression":
        fe.fits_plot(learner, dist, path / f"{stem}_fits.png", f"{name}: {title}", seed,
                     fe.report_steps(agent_cfg.eval_steps), dev)
    return report


EVALUATE = {TRIAL: _evaluate_trial_run, INNER_STEPS: _evaluate_steps_run, METAWORLD: _evaluate_success_run,
            FEWSHOT: _evaluate_fewshot_run}  # protocol -> fn(run, baselines, tasks, seed, split, eval_sets)

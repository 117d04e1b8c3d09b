"""Run a named experiment: train with experiments/configs/NAME.toml, evaluate the agent and
the baselines on the same held-out tasks ([experiment] baselines = "a,b", default every
applicable one), and write experiments/results/NAME.json
(+ NAME_curve.png, NAME_adaptation.png) with the exact command and commit. Few-shot configs may
also name [experiment] transfer_env = "FAMILY": the learner tested unchanged on that family's
tasks (as `metarl eval RUN --env FAMILY`), kept in the results file under "transfer";
[experiment] arch_from = "NAME" trains the cell that the cell-search experiment NAME chose (its
results file's search.chosen, at search.channels) from scratch, as agent.arch (agent.channels).

    python experiments/run.py bandit_k5_n10            # trains (or resumes) then evaluates
    python experiments/run.py bandit_k5_n10 --eval-only

The run directory is runs/experiments/NAME; an interrupted experiment resumes from its
checkpoint when started again. Runs longer than a session (the machine, and runs/ with it, may
not outlive the session) are parked in git between sessions:

    python experiments/run.py maml_trpo_ml10 --park   # copy the run's checkpoint and logs to
                                                      # experiments/inflight/NAME (commit it)
    python experiments/run.py maml_trpo_ml10          # on a fresh checkout: resumes from there

The parked copy is removed once the experiment finishes and its results file is written.

Each finished run also keeps its record, what `metarl compare` reads (config, eval.json,
eval_train.json, metrics and timing logs), in experiments/results/runs/NAME[_seedN]; once a config
has two or more seeds recorded, their comparison report (IQM and mean over seeds with 95%
stratified-bootstrap CIs, Meta-World's tally included) is rewritten in
experiments/results/NAME_seeds/:

    python experiments/run.py rl2_ml10_mwplus --seed 1   # ... and --seed 2: the report covers 0, 1, 2

Seeds evaluated at their best checkpoints are compared as they are (each seed's best lies at its
own iteration of the same budget; the report lists each); `--checkpoint latest` on each seed
gives the final checkpoints' comparison in experiments/results/NAME_latest_seeds/.

A run trained with agent.eval_every keeps checkpoints/best.pt, its iteration with the best
held-out sample (the Meta-World paper reports the maximum over training); `--checkpoint best`
evaluates it into experiments/results/NAME_best.json (record runs/NAME_best) beside NAME.json:

    python experiments/run.py rl2_ml10_mwplus_kl --checkpoint best
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from metarl.app.evaluate import evaluate_run
from metarl.app.train import train
from metarl.config import as_dict, build, tomllib
from metarl.errors import UserError
from metarl.eval.plots import SUCCESS_KEYS, adaptation_curve, class_success_curve, learning_curve
from metarl.eval.stats import paired_diff_ci
from metarl.eval.success import MONITOR_SELECT
from metarl.eval.trials import best_baseline, paired_vs, reference_of
from metarl.fewshot.attacks import Attack
from metarl.protocols import FEWSHOT
from metarl.registry import AGENTS, ENVS, lookup
from metarl.run_config import TRAINING_ONLY
from metarl.rundir import load_checkpoint, read_jsonl
from metarl.training import Interrupted

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARKED = ("config.toml", "metrics.jsonl", "timing.jsonl", "checkpoints/latest.pt", "checkpoints/best.pt",
          "eval.json", "eval_train.json", "eval_best.json", "eval_train_best.json")
PARKED_PARTS = ("eval_parts", "eval_train_parts", "eval_best_parts", "eval_train_best_parts")  # metarl.app.evaluate's finished methods of an evaluation
RECORD = ("config.toml", "eval.json", "eval_train.json", "metrics.jsonl", "timing.jsonl")


def commit() -> str:
    """HEAD's short hash (+ "-dirty" where metarl/, envs/ or agents/ differ from it); METARL_COMMIT
    overrides it where the checkout's git metadata is not the code's (a copied working tree)."""
    if os.environ.get("METARL_COMMIT"):
        return os.environ["METARL_COMMIT"]
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--", "metarl", "envs", "agents"],
                                        cwd=ROOT, text=True).strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def same_config(run_dir: Path, raw: dict) -> bool:
    """Does the saved run config agree with every [env]/[agent] value of the experiment file?
    (Evaluation options, agent.eval_*, do not count: evaluation applies the file's; eval_every and
    eval_goals act while training and do.)"""
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    return all(saved.get(sec, {}).get(k) == v for sec in ("env", "agent") for k, v in raw.get(sec, {}).items()
               if not (sec == "agent" and k.startswith("eval_") and k not in TRAINING_ONLY))


def paired_with(ref: str | None, report: dict) -> dict | None:
    """[experiment] paired_with = "NAME": each result minus the same-named result of experiment
    NAME (its record in experiments/results/runs/NAME), paired by held-out task: the two were
    evaluated on the same tasks, which is checked. None without a reference."""
    if ref is None:
        return None
    other = json.loads((HERE / "results" / "runs" / ref / "eval.json").read_text())
    defaults = as_dict(build(lookup("env", ENVS, report["env"]).config_cls, {}, "env"))

    def tasks_of(r: dict) -> tuple:  # env options added since REF ran count at their defaults
        return r["env"], {**defaults, **r["env_config"]}, r["tasks"], r["seed"]
    if tasks_of(other) != tasks_of(report):  # main() checked the record exists before training
        raise UserError(f"[experiment] paired_with = {ref!r}: evaluated on other tasks (env, env options, tasks "
                        f"or seed differ)")
    return {"experiment": ref, **{n: paired_diff_ci(r["scores"], other["results"][n]["scores"])
                                  for n, r in report["results"].items()
                                  if "scores" in r and "scores" in other["results"].get(n, {})}}


def arch_from(search: str | None) -> dict:
    """[experiment] arch_from = "NAME": the cell that cell-search experiment NAME chose (its results
    file's search.chosen) and its width where recorded (search.channels), to train from scratch:
    {"arch": cell, "channels": width}; {} without the option."""
    if search is None:
        return {}
    path = HERE / "results" / f"{search}.json"
    if not path.exists():
        raise UserError(f"[experiment] arch_from = {search!r} has no results file {path}; run "
                        f"`python experiments/run.py {search}` first")
    found = json.loads(path.read_text())["metrics"].get("search", {})
    if not found.get("chosen"):
        raise UserError(f"[experiment] arch_from = {search!r}: {path} records no chosen cell (not a cell search)")
    return {"arch": found["chosen"], **({"channels": found["channels"]} if "channels" in found else {})}


def reference_lines(results: dict, agent: str, metric: str | None, paper: dict) -> tuple[dict, dict]:
    """Held-out results as horizontal lines on the plot whose axis they share: (lines for the
    training-return curve, lines for the training-success plot). Returns go on the return curve
    (the agent's own eval is the adaptation plot's job); a success rate (Meta-World) goes on the
    success plot, the agent's included, so the train/test gap shows. Paper figures are returns."""
    success = metric == "success rate"
    evals = {f"{n} (held-out)": r["total"]["mean"] for n, r in results.items()
             if n != "random" and (success or n != agent)}
    papers = {f"paper: {k}": v for k, v in paper.items()}
    return (papers, evals) if success else ({**evals, **papers}, {})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment name: a file experiments/configs/NAME.toml")
    p.add_argument("--tasks", type=int, default=None,
                   help="held-out tasks for evaluation (default: [experiment] eval_tasks of the config, else 10000)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the existing run without training")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--checkpoint", choices=("latest", "best"),
                   help="the checkpoint to evaluate (default: [experiment] checkpoint of the config, else latest); "
                        "another than the config's writes NAME_CHECKPOINT.json")
    p.add_argument("--park", action="store_true",
                   help="copy the run's checkpoint and logs to experiments/inflight/NAME (to commit), then exit")
    p.add_argument("--seed", type=int, default=None,
                   help="train with this seed instead of the config's; the run directory and the results file "
                        "are NAME_seedN (several seeds of one config, for metarl compare)")
    args = p.parse_args(argv)
    cfg_file = HERE / "configs" / f"{args.name}.toml"
    if not cfg_file.exists():
        print(f"error: no experiment {args.name!r}: {cfg_file} does not exist", file=sys.stderr)
        return 2
    raw = tomllib.loads(cfg_file.read_text())
    meta, run = raw.get("experiment", {}), raw["run"]
    default_tasks = int(meta.get("eval_tasks", 10000))
    if args.tasks is None:
        args.tasks = default_tasks
    stem = args.name if args.seed is None else f"{args.name}_seed{args.seed}"
    run_dir = ROOT / "runs" / "experiments" / stem
    inflight = HERE / "inflight" / stem
    which = args.checkpoint or meta.get("checkpoint", "latest")
    suffix = "_best" if which == "best" else ""  # metarl eval's report names for that checkpoint
    out_stem = stem if which == meta.get("checkpoint", "latest") else f"{stem}_{which}"
    if args.park:
        return park(run_dir, inflight, command(args, default_tasks))
    ref = meta.get("paired_with")
    if ref is not None and not (HERE / "results" / "runs" / ref / "eval.json").exists():
        print(f"error: [experiment] paired_with = {ref!r} has no record experiments/results/runs/{ref}/eval.json; "
              f"run `python experiments/run.py {ref}` first", file=sys.stderr)
        return 2
    if checkpoint_iteration(inflight) > checkpoint_iteration(run_dir):  # a fresh machine, or a newer parked copy
        copy_files(inflight, run_dir)
        print(f"resuming from the parked run {inflight}", file=sys.stderr)
    try:
        arch = arch_from(meta.get("arch_from"))
        if not args.eval_only:
            resume = (run_dir / "checkpoints" / "latest.pt").exists()
            if resume and not same_config(run_dir, raw):
                raise UserError(f"{run_dir} was trained with another config than {cfg_file}; delete the run "
                                f"directory to start again with the new config")
            # a resumed run continues from its saved config (same_config: the file's, checked above)
            train(run["agent"], run["env"], config_file=None if resume else str(cfg_file), run_dir=str(run_dir),
                  sets=[f"agent.{k}={v}" for k, v in arch.items()] if not resume else [], resume=resume,
                  device=args.device, quiet=args.quiet, seed=None if resume else args.seed)
        eval_sets = [f"agent.{k}={v}" for k, v in raw.get("agent", {}).items()
                     if k.startswith("eval_") and k not in TRAINING_ONLY]
        attack = meta.get("attack")  # few-shot classifiers: robust accuracy too, e.g. {kind="pgd", eps=0.1, steps=10}
        report = finished_metaworld(run_dir, "eval" + suffix, args.tasks, which) or evaluate_run(
            str(run_dir), tasks=args.tasks, device=args.device, sets=eval_sets, checkpoint=which,
            baselines=meta.get("baselines", "all"),
            attack=None if attack is None else Attack(attack["kind"], attack["eps"], attack.get("steps", 10)))
        transfer = None
        if meta.get("transfer_env"):  # few-shot: the learner tested unchanged on another family's tasks
            transfer = evaluate_run(str(run_dir), tasks=args.tasks, device=args.device, sets=eval_sets,
                                    checkpoint=which, baselines="none", env=meta["transfer_env"])
        meta_train = None
        if report["protocol"] == "metaworld":  # meta-train success by the same protocol: the generalization gap
            # [experiment] train_eval_tasks: fewer training-split tasks (ML10: 10 classes to the test's 5)
            train_tasks = min(args.tasks, int(meta.get("train_eval_tasks", args.tasks)))
            meta_train = finished_metaworld(run_dir, "eval_train" + suffix, train_tasks, which) or evaluate_run(
                str(run_dir), tasks=train_tasks, device=args.device, sets=eval_sets, checkpoint=which,
                baselines="none", split="train")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted:  # Ctrl-C: the iteration was finished and checkpointed
        print(f"interrupted; checkpoint saved in {run_dir}; `{command(args, default_tasks)}` resumes",
              file=sys.stderr)
        return 130
    try:
        pairs = paired_with(ref, report)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    timing = read_jsonl(run_dir / "timing.jsonl")
    best = load_checkpoint(run_dir, which="best") if which == "best" else None
    row = metrics[-1] if metrics else None
    if best:  # the row that measured best.pt's parameters: a monitor's metric plays them after that
        # row's update (best.pt's iteration is the next one); a training metric before it
        it = best["iteration"] - (1 if best.get("select") == MONITOR_SELECT else 0)
        row = next((r for r in metrics if r["iteration"] == it), None)
    train_s = sum(t["iteration_s"] for t in timing)
    agent = report["agent"]
    results = report["results"]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    refs, success_refs = reference_lines(results, agent, report.get("metric"), meta.get("paper", {}))
    if meta_train is not None:  # the same protocol on the training classes, beside the held-out lines
        success_refs.update({f"{n} (training classes)": r["total"]["mean"] for n, r in meta_train["results"].items()})
    spec = lookup("agent", AGENTS, agent)
    if "episode_return" in spec.curve_keys:  # one episode per point: trial totals scaled to one episode
        refs = {k: v / report["env_config"].get("episodes", 1) for k, v in refs.items()}
    fewshot = report["protocol"] == FEWSHOT.name
    learning_curve(metrics, out / f"{out_stem}_curve.png", f"{out_stem}: {agent} training", keys=spec.curve_keys,
                   references=None if fewshot else refs, xlabel="meta-iterations" if fewshot else "env steps")
    if fewshot:  # the run's own plots: metric against inner steps, fitted curves, CNP context curve
        for src, dst in (("eval_adaptation.png", "adaptation.png"), ("eval_fits.png", "fits.png"),
                         ("eval_context.png", "context.png"), ("eval_samples.png", "samples.png"),
                         ("eval_arch.png", "arch.png"), ("eval_arch.txt", "arch.txt")):
            if (run_dir / src).exists():  # (samples: few-shot generation; arch: a cell search's choice)
                shutil.copyfile(run_dir / src, out / f"{out_stem}_{dst}")
    else:
        adaptation_curve(results, out / f"{out_stem}_adaptation.png", f"{out_stem}: held-out tasks")
    success_keys = tuple(k for k in SUCCESS_KEYS if any(k in m for m in metrics))
    if success_keys:  # Meta-World: training success next to the return curve
        learning_curve(metrics, out / f"{out_stem}_success.png", f"{out_stem}: {agent} training success",
                       keys=success_keys, references=success_refs,
                       marks={f"evaluated checkpoint ({which})": report["env_steps"]})
        class_success_curve(metrics, out / f"{out_stem}_classes.png", f"{out_stem}: {agent} training success per class")
    summary = {
        "experiment": out_stem, "config": args.name,
        "command": command(args, default_tasks),
        "commit": commit(),
        "device": f"{report['device']}, {torch.get_num_threads()} threads",
        "wall_clock_s": train_s,
        "metrics": {
            "env": report["env"], "env_config": report["env_config"], "agent": agent,
            "held_out_tasks": report["tasks"], "env_steps": report["env_steps"], "train_time_s": train_s,
            "checkpoint": which, "checkpoint_iteration": report["checkpoint_iteration"],
            # best.pt's selection metric (heldout_success with agent.eval_every, MAML's post_return) and
            # the first iteration it chose among
            **({"checkpoint_select": best["select"], "checkpoint_select_from": best.get("select_from", 0)}
               if best else {}),
            "protocol": report["protocol"], "metric": report["metric"], "eval_options": report.get("eval_options", {}),
            "results": {n: {**r["total"], **{k: r[k] for k in ("metric", "curve", "per_class", "return", "per_task",
                                                               "metaworld_tally", "per_context", "chance",
                                                               "evaluator_accuracy_on_real",
                                                               "evaluator_accuracy_on_blurred_real", "sample_z")
                                                      if k in r}}
                        for n, r in results.items()},
            "paired_vs_best_baseline": paired_vs(results, agent, best_baseline(results, agent)),
            # against Gittins / PSRL: the RL² paper's claim that RL² beats PSRL at n = 10 and 25
            "paired_vs_reference": paired_vs(results, agent, reference_of(results)),
            "paired_with": pairs,
            "paper": meta.get("paper", {}), "description": meta.get("description", ""),
            # Meta-World: the protocol on the training classes (metarl eval --split train)
            "meta_train": None if meta_train is None else {
                "tasks": meta_train["tasks"],
                "results": {n: {**r["total"], "per_class": r["per_class"],
                                **({"metaworld_tally": r["metaworld_tally"]} if "metaworld_tally" in r else {})}
                            for n, r in meta_train["results"].items()}},
            # [experiment] transfer_env: the same evaluation on another task family (metarl eval --env)
            "transfer": None if transfer is None else {
                "env": transfer["env"], "env_config": transfer["env_config"], "held_out_tasks": transfer["tasks"],
                "results": {n: {**r["total"], **{k: r[k] for k in ("metric", "curve") if k in r}}
                            for n, r in transfer["results"].items()}},
            # Meta-World: training success of the evaluated checkpoint's iteration, the last one unless
            # best (RL²: last episode of the trial; MAML: adapted)
            "train_success": next((row[k] for k in ("success_last", "post_success") if row and k in row), None),
            # agent.search: the chosen cell, its candidates' validation accuracy and its weights against Conv4's
            **({"search": report["search"]} if "search" in report else {}),
            # [experiment] arch_from: the searched cell this run trained from scratch
            **({"arch_from": meta["arch_from"], **arch} if arch else {}),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    (out / f"{out_stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if inflight.exists():  # finished: the results file replaces the parked run
        shutil.rmtree(inflight)
    keep_record(run_dir, out / "runs" / out_stem, suffix, transfer_env=meta.get("transfer_env"))
    from metarl.app.report import report_table
    print(report_table(report))
    print(f"training time {train_s / 60:.1f} min; wrote {out / (out_stem + '.json')}")
    tail = out_stem[len(stem):]  # "_latest" or "_best" for a checkpoint other than the config's
    seeds = seed_records(out / "runs", args.name, tail)
    if len(seeds) > 1:
        compare_seeds(seeds, out / f"{args.name}{tail}_seeds", selected=which == "best")
    return 0


def keep_record(run_dir: Path, dst: Path, suffix: str = "", transfer_env: str | None = None) -> None:
    """The run's RECORD files (small: no checkpoints) into dst, replacing an earlier record; with
    suffix "_best", the best checkpoint's reports (eval_best.json, ...) as the record's eval.json
    and eval_train.json (their "checkpoint" field says which); with transfer_env, its report too."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in RECORD + ((f"eval_{transfer_env}.json",) if transfer_env else ()):
        src = run_dir / (name.replace(".json", f"{suffix}.json") if name.startswith("eval") else name)
        if src.exists():
            shutil.copyfile(src, dst / name)


def seed_records(records: Path, name: str, tail: str = "") -> list[Path]:
    """The recorded runs of config `name`: NAME (its own seed) and NAME_seedN, by seed; with tail
    ("_latest"), the records of that checkpoint: NAME_latest, NAME_seedN_latest."""
    pattern = rf"{re.escape(name)}(_seed(\d+))?{re.escape(tail)}"
    found = [(m, p) for p in records.glob(f"{name}*") if (m := re.fullmatch(pattern, p.name))]
    return [p for m, p in sorted(found, key=lambda mp: -1 if mp[0][2] is None else int(mp[0][2]))]


def compare_seeds(records: list[Path], out_dir: Path, selected: bool = False) -> None:
    """`metarl compare` over the recorded seeds into out_dir (replaced); a failure is reported, not
    raised: the results file is already written. selected: the records are best checkpoints, each
    seed's chosen within the same training budget, so their evaluated budgets differ (the report
    lists each)."""
    from metarl.eval.compare import compare
    try:
        summary = compare([os.path.relpath(p) for p in records], os.path.relpath(out_dir), overwrite=True,
                          allow_unequal_budgets=selected)
    except UserError as e:
        print(f"warning: no seed comparison in {out_dir}: {e}", file=sys.stderr)
        return
    print(f"compared {len(records)} seeds: {summary['out']}/report.md")


def checkpoint_iteration(run_dir: Path, which: str = "latest") -> int:
    """The iteration of the run's latest (or best) checkpoint (-1 without one)."""
    f = run_dir / "checkpoints" / f"{which}.pt"
    return torch.load(f, map_location="cpu", weights_only=True)["iteration"] if f.exists() else -1


def copy_files(src: Path, dst: Path) -> None:
    """The PARKED files and the finished parts of an evaluation in progress that src holds, into dst."""
    names = list(PARKED) + [str(f.relative_to(src)) for d in PARKED_PARTS for f in sorted((src / d).glob("*.json"))]
    for name in names:
        if (src / name).exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)


def finished_metaworld(run_dir: Path, stem: str, tasks: int, which: str) -> dict | None:
    """A Meta-World evaluation (RUN/STEM.json) already written for this checkpoint and what
    `--tasks TASKS` plays (its classes x min(env.goals_per_class, TASKS // classes) goals): an hour or
    more of episodes a resumed experiment need not play again. None otherwise."""
    f = run_dir / f"{stem}.json"
    if not f.exists():
        return None
    rep = json.loads(f.read_text())
    goals = rep.get("goals_per_class")
    played = None
    if goals:
        classes = rep["tasks"] // goals
        played = classes * max(1, min(rep["env_config"]["goals_per_class"], tasks // classes))
    same = (rep.get("protocol") == "metaworld" and rep.get("tasks") == played and rep.get("seed") == 0
            and rep.get("checkpoint") == which
            and rep.get("checkpoint_iteration") == checkpoint_iteration(run_dir, which))
    if same:
        print(f"using the finished evaluation {f}", file=sys.stderr)
    return rep if same else None


def park(run_dir: Path, inflight: Path, resume_command: str) -> int:
    if not (run_dir / "checkpoints" / "latest.pt").exists():
        print(f"error: {run_dir} has no checkpoint to park", file=sys.stderr)
        return 2
    tmp = inflight.with_name(inflight.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    copy_files(run_dir, tmp)
    done = checkpoint_iteration(tmp)
    for log in ("metrics.jsonl", "timing.jsonl"):  # rows past the checkpoint are logged again on resume
        if (tmp / log).exists():
            rows = [r for r in read_jsonl(tmp / log) if r["iteration"] < done]
            (tmp / log).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if inflight.exists():
        shutil.rmtree(inflight)
    os.replace(tmp, inflight)
    print(f"parked {run_dir} (checkpoint of iteration {checkpoint_iteration(inflight)}) in {inflight}; commit it, "
          f"and `{resume_command}` on a fresh checkout resumes from it")
    return 0


def command(args, default_tasks: int) -> str:
    """The command line that reproduces (or resumes) this experiment."""
    return (f"python experiments/run.py {args.name}" + (f" --seed {args.seed}" if args.seed is not None else "")
            + (f" --tasks {args.tasks}" if args.tasks != default_tasks else "")
            + (f" --checkpoint {args.checkpoint}" if args.checkpoint else ""))


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

"""`metarl` command line. Errors a user can cause print one line and exit with code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metarl.errors import UserError

EXAMPLES = """examples:
  metarl train rl2 --env bandit --set env.k=10 --set env.n=100
  metarl train rl2 --env tabular-mdp --set env.n=25 --seed 1 --run-dir runs/mdp25
  metarl train rl2 --env bandit --config experiments/configs/bandit_k5_n10.toml
  metarl train rl2 --run-dir runs/mdp25 --resume
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message by default)
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _named(argv: list[str]) -> tuple[str | None, str | None]:
    """(agent, env) that a `train ... --help` command line names, before argparse runs."""
    agent = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    env = None
    for i, a in enumerate(argv):
        if a == "--env" and i + 1 < len(argv):
            env = argv[i + 1]
        elif a.startswith("--env="):
            env = a.split("=", 1)[1]
    return agent, env


def _options_help(agent: str | None = None, env: str | None = None) -> str:
    """The env and agent options with their defaults and meanings, for `train --help`: those of
    the agent and env the command names (when they are registered names), else every one."""
    from metarl.config import describe
    from metarl.registry import AGENTS, ENVS, load
    agents = [agent] if agent in AGENTS else list(AGENTS)
    envs = [env] if env in ENVS else list(ENVS)
    parts = ["options settable with --set (or in a --config TOML file under [env] / [agent]):"]
    for name in agents:
        parts += [f"\nagent {name}:", describe(load(AGENTS[name].target).config_cls, "agent")]
    seen = set()
    for name in envs:
        spec = load(ENVS[name].target)
        if spec.config_cls in seen:
            parts.append(f"\nenv {name}: same options as above")
            continue
        seen.add(spec.config_cls)
        parts += [f"\nenv {name}:", describe(spec.config_cls, "env")]
    parts.append("\nrun options: run.seed, run.device (same as --seed, --device)")
    if len(agents) == 1 or len(envs) == 1:
        parts.append("the options of every agent and env: metarl train --help")
    return "\n".join(parts)


def build_parser(full_help: bool = False,
                 named: tuple[str | None, str | None] = (None, None)) -> argparse.ArgumentParser:
    p = _Parser(prog="metarl", description="Meta-reinforcement learning: train, evaluate and benchmark meta-learners.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="train RL² on 5-armed bandits (n=10) and compare it with the classical baselines",
                       description="Meta-train RL² on Bernoulli 5-armed bandits with 10 pulls (a few minutes on a "
                                   "laptop CPU), then evaluate it and the classical baselines on 1000 held-out tasks "
                                   "and print the table. The run is kept under --runs-root.")
    d.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
    d.add_argument("--runs-root", default="runs", help="folder for the demo run (default: runs)")
    d.add_argument("--seed", type=int, default=0, help="training seed (default 0); the held-out tasks stay the same")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of a table")

    sub.add_parser("list", help="registered envs, agents, baselines and benchmarks",
                   description="List every registered env, agent, baseline and benchmark with one line of help.")

    t = sub.add_parser("train", help="meta-train an agent on a task distribution",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Meta-train AGENT on the task distribution ENV. The run directory gets "
                                   "config.toml, metrics.jsonl, timing.jsonl, TensorBoard events (tb/), "
                                   "checkpoints/latest.pt and learning_curve.png.",
                       epilog=EXAMPLES + ("\n" + _options_help(*named) if full_help else
                                          "\nrun `metarl train --help` to list every --set option"))
    t.add_argument("agent", help="agent name (see metarl list), e.g. rl2")
    t.add_argument("--env", help="task distribution name (see metarl list), e.g. bandit; with --resume, the run's own")
    t.add_argument("--config", metavar="FILE.toml", help="TOML file with [run], [env] and [agent] tables")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, e.g. --set env.k=10 --set agent.lr=1e-3 (repeatable)")
    t.add_argument("--seed", type=int, help="run seed (default 0); same seed on CPU gives the same metrics.jsonl")
    t.add_argument("--device", help="auto (CUDA if available), cpu or cuda (default: auto)")
    t.add_argument("--run-dir", help="run directory (default: runs/{env}__{agent}__{seed}__{time})")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint: the command that started it plus "
                        "--resume, or just AGENT --run-dir DIR --resume; only agent.total_steps / agent.iterations "
                        "and where it simulates (env.workers, env.backend, --ray-address) may change")
    t.add_argument("--ray-address", metavar="ADDRESS",
                   help="with --set env.backend=ray (MuJoCo, Meta-World): the Ray cluster to simulate on; default: "
                        "start a local Ray instance; auto: join the cluster `ray start` made on this machine; "
                        "HOST:PORT: a remote head")
    t.add_argument("--overwrite", action="store_true", help="start again in an existing --run-dir, replacing it")
    t.add_argument("--quiet", action="store_true", help="no progress bar or messages")

    e = sub.add_parser("eval", help="evaluate a trained run against baselines on held-out tasks",
                       description="Evaluate the trained agent and each baseline on the same held-out tasks (test "
                                   "split), each figure with a 95% CI: RL² plays one trial per task (mean total "
                                   "reward); MAML agents report the return before and after 1, 2 and 3 inner steps; "
                                   "few-shot learners report query MSE or accuracy after 0, 1, 5 and 10 steps; "
                                   "Meta-World runs use the benchmark's protocol (success rate). Saves eval.json "
                                   "and eval_adaptation.png in the run directory (--split train: eval_train.json "
                                   "and eval_train_adaptation.png).")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by metarl train")
    e.add_argument("--tasks", type=int, default=1000, help="number of held-out tasks (default 1000)")
    e.add_argument("--baselines", default="all",
                   help="comma-separated baseline names, 'all' (those that apply to the env, except the slow "
                        "per-task learners ppo-scratch and sac-scratch, which run only when named) or 'none'")
    e.add_argument("--seed", type=int, default=0, help="evaluation seed: picks the held-out tasks (default 0)")
    e.add_argument("--checkpoint", default="latest", choices=("latest", "best"),
                   help="latest (default) or best: the training iteration with the best selection metric "
                        "(with agent.eval_every: the best held-out sample, the Meta-World paper's max over "
                        "training; else MAML: post-adaptation return, the MAML paper's protocol)")
    e.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    e.add_argument("--split", default="test", choices=("test", "train"),
                   help="test (default): the held-out tasks; train (Meta-World): the training classes by the same "
                        "protocol, meta-train success beside meta-test")
    e.add_argument("--env", metavar="FAMILY",
                   help="few-shot runs: test on another task family with its default options, e.g. a learner "
                        "trained on sinusoid on gp-regression (the same input and output shapes); writes "
                        "eval_FAMILY.json")
    e.add_argument("--attack", choices=("fgsm", "pgd"),
                   help="few-shot classifiers: also report robust accuracy with the query images perturbed "
                        "against each adapted model (FGSM, or PGD from a random start), on the same tasks")
    e.add_argument("--eps", type=float, default=0.1, help="--attack: L-infinity radius on [0, 1] pixels (default 0.1)")
    e.add_argument("--attack-steps", type=int, default=10, help="--attack pgd: steps (default 10)")
    e.add_argument("--set", action="append", default=[], metavar="agent.eval_KEY=VALUE", dest="sets",
                   help="an evaluation option of the agent (repeatable), e.g. agent.eval_later_lr=0.05 or "
                        "agent.eval_rollouts=40 for MAML; the other options are fixed by training")
    e.add_argument("--json", action="store_true", help="print the report as JSON")

    c = sub.add_parser("compare", help="one report across evaluated runs: curves, interval statistics, per-task tables",
                       description="Compare evaluated runs (agents and seeds) on their shared held-out tasks: "
                                   "mean and interquartile mean with 95% stratified-bootstrap CIs (rliable) over runs x tasks "
                                   "and, with several runs, over each run's overall score (the IQM over seeds "
                                   "that Meta-World+ reports), the "
                                   "probability of improvement of every pair, adaptation and training curves (PNG), "
                                   "per-task tables and, for Meta-World, a per-task success heatmap. Writes "
                                   "report.md, summary.csv, poi.csv, per_task.csv and the PNGs into --out. Runs "
                                   "evaluated on different tasks, or trained on different budgets, are refused. "
                                   "Needs rliable: pip install -e \".[compare]\".")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, each evaluated by metarl eval")
    c.add_argument("--out", required=True, help="folder for the report (refused if it exists and is not empty)")
    c.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    c.add_argument("--no-baselines", action="store_true", help="leave out the baselines held in the evaluations")
    c.add_argument("--allow-unequal-budgets", action="store_true",
                   help="compare runs trained for different numbers of env steps (the report lists each "
                        "budget), e.g. seeds each kept at its best checkpoint")
    c.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")

    b = sub.add_parser("bench", help="throughput benchmarks (steps/s)",
                       description="Measure throughput. `metarl list` names the benchmarks; --json prints "
                                   '{"bench", "device", "figures"} for scripts.')
    b.add_argument("name", help="benchmark name, e.g. bandit")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _attack(args):
    """metarl eval --attack / --eps / --attack-steps as an Attack, or None without --attack."""
    if args.attack is None:
        return None
    from metarl.fewshot.attacks import Attack
    return Attack(args.attack, args.eps, args.attack_steps)


def cmd_list() -> None:
    from metarl.registry import AGENTS, BASELINES, BENCHES, ENVS
    for title, table in (("envs", ENVS), ("agents", AGENTS), ("baselines", BASELINES), ("benchmarks", BENCHES)):
        print(f"{title}:")
        width = max(map(len, table)) + 2
        for name, e in table.items():
            extra = f" [for: {', '.join(e.families)}]" if e.families else ""
            print(f"  {name:<{width}}{e.summary}{extra}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wants_help = any(a in ("-h", "--help") for a in argv)
    train_help = wants_help and argv[:1] == ["train"]
    parser = build_parser(full_help=train_help, named=_named(argv) if train_help else (None, None))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from metarl.training import Interrupted
    try:
        if args.command == "list":
            cmd_list()
        elif args.command == "train":
            from metarl.app.train import train
            sets = args.set + ([f"env.ray_address={args.ray_address}"] if args.ray_address is not None else [])
            path = train(args.agent, args.env, config_file=args.config, sets=sets, seed=args.seed,
                         device=args.device, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
                         quiet=args.quiet)
            if not args.quiet:
                print(f"done: {path}\nevaluate with: metarl eval {path}")
        elif args.command in ("eval", "demo"):
            from metarl.app.demo import demo
            from metarl.app.evaluate import evaluate_run
            from metarl.app.report import report_table
            if args.command == "demo":
                report = demo(device=args.device, quiet=args.quiet, runs_root=args.runs_root, seed=args.seed)
            else:
                report = evaluate_run(args.run_dir, tasks=args.tasks, baselines=args.baselines, seed=args.seed,
                                      device=args.device, checkpoint=args.checkpoint, sets=args.sets,
                                      split=args.split, env=args.env, attack=_attack(args))
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                print(report_table(report))
        elif args.command == "compare":
            from metarl.eval.compare import compare
            summary = compare(args.run_dirs, args.out, reps=args.reps, seed=args.seed, baselines=not args.no_baselines,
                              allow_unequal_budgets=args.allow_unequal_budgets, overwrite=args.overwrite)
            if args.json:
                print(json.dumps(summary, indent=2))
            else:
                print(Path(summary["out"], "report.md").read_text())
        elif args.command == "bench":
            from metarl.registry import BENCHES, lookup
            fn = lookup("benchmark", BENCHES, args.name)
            from metarl.device import resolve_device
            result = fn(resolve_device(args.device))
            if args.json:
                print(json.dumps(result))
            else:
                print(f"bench {result['bench']} on {result['device']}")
                for k, v in result["figures"].items():
                    print(f"  {k:<24}{v:,.4g}" if isinstance(v, float) else f"  {k:<24}{v}")
    except UserError as e:
        print(f"metarl: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"metarl: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("metarl: aborted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the results from experiments/results/*.json (never typed by hand): the README's
headline table (the best run of each setting beside its published anchor) and the full record
in docs/results.md (every run, the ML10 table, benchmarks, GPU checks).

    python experiments/readme_table.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from metarl.eval.result import curve_of, shown, upgrade_result
from metarl.eval.trials import best_baseline, paired_vs, reference_of

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def experiment_summaries():
    """(path, summary) of every results file experiments/run.py wrote, in name order; the other
    JSON files beside them (timings, GPU checks, benches, demo checks, curvature and MDP behaviour
    tables) have no "metrics" and their own tables."""
    for f in sorted((ROOT / "experiments" / "results").glob("*.json")):
        s = read_summary(f)
        if "metrics" in s and "_timing" not in f.stem:
            yield f, s


def read_summary(f: Path) -> dict:
    """A results file of experiments/run.py, its method results in the current eval.json form
    (files written before schema 2 are upgraded on reading)."""
    s = json.loads(f.read_text())
    m = s.get("metrics", {})
    if isinstance(m.get("results"), dict) and m.get("protocol") != "peer":
        m["results"] = {n: upgrade_result(r, m.get("metric")) for n, r in m["results"].items()}
    return s


def headline() -> str:
    """One row per setting (env, its defining options, agent): the best run's figure beside the
    published anchor, the best classical baseline and the run's command. Settings without a
    results file do not appear; the full record is docs/results.md."""
    best: dict[tuple, tuple] = {}
    for f, s in experiment_summaries():
        row = headline_figure(s)
        if row is None:
            continue
        config = s.get("config", s["experiment"])
        over = seeds_headline(config, s["metrics"]["agent"])
        if over is not None and s["experiment"] in over[2] and s["experiment"] != config:
            continue  # one seed of a config whose seeds are compared: the config's own row shows them
        if s["metrics"].get("checkpoint_select") == "heldout_success":
            # chosen on held-out tasks (as the Meta-World paper's maximum over training): shown only
            # beside the same run's final checkpoint, never alone
            final = other_checkpoint(f)
            if final is None:
                continue
            final_cell = headline_figure(read_summary(final))[3]
            if over is None or s["experiment"] != config:  # (NAME_best of a config reporting its last)
                row = row[:3] + (f"{row[3]}; final checkpoint {final_cell}",) + row[4:]
            else:  # several seeds: their IQM, never one seed's best
                value, cell, records = over
                row = (row[0], value, row[2], f"{cell}; seed {record_seed(s['experiment'])}'s final checkpoint "
                       f"{final_cell}") + row[4:]
                others = [r.rsplit("_seed", 1)[1] for r in records if "_seed" in r]
                commits = dict.fromkeys(read_summary(ROOT / "experiments" / "results" / f"{r}.json")["commit"]
                                        for r in records)
                s = {**s, "command": f"{s['command']} [--seed {'|'.join(others)}]" if others else s["command"],
                     "commit": ", ".join(commits)}
        key, value, lower = row[0], row[1], row[2]
        if key not in best or (value < best[key][1] if lower else value > best[key][1]):
            best[key] = row + (s,)
    rows = []
    for key in sorted(best):
        _, _, _, ours, anchor, baseline, s = best[key]
        rows.append(f"| {key[0]} | {key[1]} | {ours} | {anchor or '–'} | {baseline or '–'} | "
                    f"`{s['command']}` ({s['commit']}) |")
    return md_table(["setting", "agent", "ours: best run", "published", "best classical baseline", "run"], rows)


def seeds_headline(config: str, agent: str) -> tuple[float, str, list[str]] | None:
    """(IQM, cell, the records' names) of the agent's best form by Meta-World's tally over the
    config's recorded seeds at its reported checkpoint (experiments/results/CONFIG_seeds, metarl
    compare's over-runs statistic; the headline takes it for configs kept at their best), or None."""
    f = ROOT / "experiments" / "results" / f"{config}_seeds" / "summary.json"
    summary = json.loads(f.read_text()) if f.exists() else {}
    runs = summary.get("over_runs", {}).get("metaworld_tally")
    forms = {n: v for n, v in (runs or {}).items() if n == agent or n.startswith(agent + " (")}
    if not forms:
        return None
    form, st = max(forms.items(), key=lambda kv: kv[1]["iqm"][0])
    v = st["iqm"]
    return v[0], (f"IQM {100 * v[0]:.1f}% [{100 * v[1]:.1f}, {100 * v[2]:.1f}] over {len(st['runs'])} seeds "
                  f"({form}, Meta-World tally, each seed's best checkpoint by the held-out sample; "
                  f"{per_seed(summary['runs'], st['runs'])})"), [Path(r).name for r in summary["runs"]]


def per_seed(records: list[str], values: list[float]) -> str:
    """"seed 1 37.3%, seed 0 24.0%": each compared record (a run directory under the repository
    root, as compare's summary lists them) labelled with its training seed."""
    return ", ".join(f"seed {record_seed(Path(r).name)} {100 * x:.1f}%" for r, x in zip(records, values))


def record_seed(record: str) -> int:
    """The training seed of a committed run record (experiments/results/runs/RECORD/config.toml)."""
    from metarl.config import load_toml
    return load_toml(ROOT / "experiments" / "results" / "runs" / record / "config.toml")["run"]["seed"]


def headline_figure(s: dict):
    """(setting key, value to rank by, lower is better, ours cell, published cell, baseline cell)
    of one results file, or None where it has no headline figure (peer and multi-task rows)."""
    m = s["metrics"]
    if m.get("protocol") == "peer" or m["agent"] in ("multitask-ppo", "fewshot-gen"):
        return None  # peers and multi-task rows, and generation (its score is recognition, not MSE): docs only
    if agent_option(s, "search", ""):  # a cell search's mixed network is not the learner's row
        return None
    agent, res, envc = m["agent"], m["results"], m["env_config"]
    paper = paper_refs(s)
    protocol = m.get("protocol") or "trial"
    if protocol == "metaworld":
        forms = [n for n in res if n == agent or n.startswith(agent + " (")]
        # like for like with published figures: Meta-World's own tally of each form, the best form
        scored = [(res[n]["metaworld_tally"]["total"] if "metaworld_tally" in res[n] else res[n], n) for n in forms]
        r, form = max(scored, key=lambda x: x[0]["mean"])
        tally = "Meta-World tally" if "metaworld_tally" in res[form] else "per task"
        setting = m["env"].upper() + (f" {envc['task']}" if m["env"] == "ml1" else "") + " meta-test success"
        cfg = ROOT / "experiments" / "configs" / f"{s.get('config', s['experiment'])}.toml"
        from metarl.config import tomllib
        pub = tomllib.loads(cfg.read_text()).get("experiment", {}).get("published", {}) if cfg.exists() else {}
        # the tally counts a round's first episodes to end, so successes weigh more: per task beside it
        per_task = f"; per task {pct(res[form])}" if "metaworld_tally" in res[form] else ""
        return ((setting, agent), r["mean"], False, f"{pct(r)} ({form}, {tally}{per_task}{best_note(m)})",
                "; ".join(f"{k} {v}" for k, v in pub.items()), None)
    if protocol == "inner-steps":
        steps = curve_of(res[agent]).points
        one = [v for k, v in paper.items() if k.endswith("1 step")]
        base = best_baseline(res, agent)
        return ((f"{m['env']} return after 1 gradient step", agent), steps[1]["mean"], False, fmt(steps[1]),
                f"{one[0]} (MAML paper)" if one else None, None if base is None else f"{base} {fmt(res[base])}")
    if protocol == "fewshot":
        r = res[agent]
        per = {str(p["x"]): p for p in curve_of(r).points}
        acc = r["metric"] == "query accuracy"
        k = "1" if "1" in per else next(iter(per))
        fam = m["env"] + (f" {envc['ways']}-way {envc['shots']}-shot" if "ways" in envc else
                          f" K={envc['shots']}" if envc.get("shots") else "")
        what = "accuracy" if acc else "query MSE"
        after = f"after {k} step{'s' if k != '1' else ''}" if len(per) > 1 else "(closed form)"
        c = per[k]
        last = max(per, key=int)
        if int(last) > 1 and k == "1":  # after 1 step and after the most, ranked by the most
            # regression over all tasks: a run whose inner loop diverges on some ranks last (nan), not by the rest
            value = per[last]["mean"] if per[last]["mean"] == per[last]["mean"] else float("inf")
            anchor = " / ".join(f"{n} {v}" for n, v in paper.items() if " 1 step" in n or f" {last} steps" in n)
            trained = agent_option(s, "inner_steps", 1)
            cell = (lambda x: pct(x)) if acc else mse_cell
            return ((f"{fam} {what} after 1 / {last} steps" + (f" (trained with {trained})" if trained != 1 else ""),
                     agent), value, not acc, f"{cell(c)} / {cell(per[last])}", anchor or None, None)
        value = shown(c)["mean"]  # without the tasks whose inner loop diverged, if any
        anchor = [f"{n} {v}" for n, v in paper.items() if f" {k} step" in n]
        return ((f"{fam} {what} {after}", agent), value, not acc, pct(c) if acc else mse_cell(c),
                anchor[0] if anchor else None, None)
    ag = res[agent]
    base = best_baseline(res, agent)
    opts = ", ".join(f"{k}={envc[k]}" for k in ("k", "n") if k in envc)
    return ((f"{m['env']} ({opts}) total reward", agent), ag["mean"], False, fmt(ag),
            "; ".join(f"{k} {v}" for k, v in paper.items()) or None, None if base is None else f"{base} {fmt(res[base])}")


def config_option(s: dict, table: str, key: str, default=None):
    """An option of the experiment's config, [table] key (the default where it is not set)."""
    from metarl.config import tomllib
    cfg = ROOT / "experiments" / "configs" / f"{s.get('config', s['experiment'])}.toml"
    return tomllib.loads(cfg.read_text()).get(table, {}).get(key, default) if cfg.exists() else default


def agent_option(s: dict, key: str, default):
    return config_option(s, "agent", key, default)


def experiment_option(s: dict, key: str, default=None):
    return config_option(s, "experiment", key, default)


def paper_refs(s: dict) -> dict:
    """Published figures: from the experiment's config (kept current), else from the results file."""
    from metarl.config import tomllib
    cfg = ROOT / "experiments" / "configs" / f"{s['experiment']}.toml"
    if cfg.exists():
        meta = tomllib.loads(cfg.read_text()).get("experiment", {})
        if meta.get("paper"):
            return meta["paper"]
    return s["metrics"].get("paper", {})


def md_table(columns: list[str], rows: list[str]) -> str:
    """A markdown table: a header of `columns`, its separator, then `rows` (each '| ... |')."""
    return "\n".join(["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|", *rows])


def section(intro: str, columns: list[str], rows: list[str]) -> str:
    """'\n\n' + intro + '\n\n' + the table, or '' when there are no rows."""
    return "\n\n" + intro + "\n\n" + md_table(columns, rows) if rows else ""


def fmt(r: dict) -> str:
    return f"{r['mean']:.2f} ± {r['mean'] - r['ci_low']:.2f}"


def paired_cell(paired: dict, agent: str) -> str:
    """'+0.31 [-0.02, +0.64]; deterministic ...': the agent's mean per-task lead over the best
    baseline with its 95% CI, and its deterministic form's."""
    def one(d):
        return f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
    det = paired.get(agent + " (deterministic)")
    return one(paired[agent]) + (f"; deterministic {one(det)}" if det else "")


def reference_pairs(s: dict) -> dict | None:
    """The agent minus the reference (Gittins, PSRL), paired by task: the results file's
    paired_vs_reference (experiments/run.py, written since 2026-12-03), else computed from the run's
    committed record (experiments/results/runs/NAME/eval.json), else None."""
    if "paired_vs_reference" in s["metrics"]:
        return s["metrics"]["paired_vs_reference"]
    record = ROOT / "experiments" / "results" / "runs" / s["experiment"] / "eval.json"
    if not record.exists():
        return None
    res = json.loads(record.read_text())["results"]
    return paired_vs(res, s["metrics"]["agent"], reference_of(res))


def row_tail(s: dict) -> str:
    """The paper, train time, commit and command cells every row ends with."""
    paper = "; ".join(f"{k} {v}" for k, v in paper_refs(s).items())
    return f" | {paper or '–'} | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |"


def table() -> str:
    rows = []
    steps_rows, mw_rows, fs_rows, peer_rows, mt_rows, gen_rows = [], [], [], [], [], []
    for f, s in experiment_summaries():
        m = s["metrics"]
        if m.get("protocol") == "inner-steps":
            steps_rows.append(steps_row(s))
            continue
        if m.get("protocol") == "metaworld":
            mw_rows.append(metaworld_row(s))
            continue
        if m.get("protocol") == "fewshot" and m["agent"] == "fewshot-gen":
            gen_rows.append(generation_row(s))
            continue
        if m.get("protocol") == "fewshot":
            fs_rows.append(fewshot_row(s))
            continue
        if m.get("protocol") == "peer":
            peer_rows.append(peer_row(s))
            continue
        if m["agent"] == "multitask-ppo":
            mt_rows.append(multitask_row(s))
            continue
        res = m["results"]
        agent = res[m["agent"]]
        ref_name = reference_of(res)
        det = res.get(m["agent"] + " (deterministic)")  # evaluated since 2026-11-26
        best = best_baseline(res, m["agent"])
        paired = m.get("paired_vs_best_baseline")  # written since 2026-11-26 (fourth session)
        envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items() if k != "sigma" or "gaussian" in m["env"])
        rows.append(
            f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | {fmt(agent)} | "
            f"{fmt(det) if det else 'not evaluated'} | "
            + (f"{best} {fmt(res[best])}" if best else "–") + " | "
            + (paired_cell(paired, m["agent"]) if paired else "–") + " | "
            + (f"{ref_name} {fmt(res[ref_name])}" if ref_name else "–")
            + (f"; RL² − {ref_name}, paired: {paired_cell(vs_ref, m['agent'])}" if (vs_ref := reference_pairs(s)) else "")
            + row_tail(s))
    out = md_table(["experiment", "env", "RL² (sampled actions)", "RL² (deterministic)", "best classical baseline",
                    "RL² − best baseline, paired by task", "Bayes-optimal-ish reference", "paper", "train time",
                    "commit", "command"], rows) + "\n\nMean total reward per trial ± half-width of the 95% CI. Curves: " \
        "`experiments/results/NAME_curve.png` (training) and `NAME_adaptation.png` (adaptation: reward per pull, or return per episode)."
    out += section("MAML agents, the MAML paper's protocol: mean episode return on held-out tasks before adaptation "
                   "and after 1, 2, 3 policy-gradient steps (fresh rollouts each step), ± half-width of the 95% CI.",
                   ["experiment", "env", "agent", "0 steps", "1 step", "2 steps", "3 steps", "random", "paper",
                    "train time", "commit", "command"], steps_rows)
    out += section("Meta-World, its meta-learning protocol tallied per task (`metarl eval`): success rate on held-out "
                   "tasks (test classes x goals) after 10 adaptation episodes, over 3 evaluation episodes, ± half-width "
                   "of the 95% CI; \"before\" is the success with no adaptation episodes seen; meta-train success is that "
                   "of the last training iteration and, for runs since 2026-11-27, the same protocol on the training "
                   "classes (`metarl eval --split train`).",
                   ["experiment", "benchmark", "agent", "meta-test success", "before adaptation", "random",
                    "meta-train success (last iteration)", "train time", "commit", "command"], mw_rows)
    out += section("Supervised few-shot learning on held-out tasks: query MSE (regression) or accuracy "
                   "(classification) after 0, 1, 5, 10 inner gradient steps on the support set (one figure for learners "
                   "that adapt in closed form), ± half-width of the 95% CI.",
                   ["experiment", "task family", "learner", "0 steps", "1 step", "5 steps", "10 steps", "paper",
                    "train time", "commit", "command"], fs_rows)
    out += section("Few-shot generation (`fewshot-gen`) on held-out glyph classes: the share of drawings generated "
                   "after fine-tuning on K drawings of a class (the decoder's mean drawings, z from the prior or from the "
                   "support drawings' posteriors: the training column says which) that a classifier of the held-out "
                   "classes, trained on their real drawings (blurred at random, as a VAE's mean drawings are, where "
                   "the evaluator column gives its accuracy on blurred drawings), puts in that class among the task's N (chance 1 / N), and the fine-tuned VAE's "
                   "ELBO per held-out drawing of the class (nats), ± half-width of the 95% CI; the difference from the "
                   "paired run is per task with its 95% CI.",
                   ["experiment", "task family", "training", "recognised before / after fine-tuning (chance)",
                    "held-out ELBO before / after", "evaluator on real drawings",
                    "difference, paired (recognised; ELBO)", "train time", "commit", "command"], gen_rows)
    out += (rl_pairs_table() + context_table() + objectives_table() + arch_table() + transfer_table() + curvature_table()
            + behaviour_table() + demo_table())
    out += section("metarl's RL² against sb3-contrib's RecurrentPPO on the same trial env and budget (env steps), "
                   "on the same held-out tasks: mean total reward ± half-width of the 95% CI; score ratio = RL² / "
                   "RecurrentPPO (inverse for negative returns: > 1 means RL² is better); time ratio = RecurrentPPO's "
                   "training time / the time RL² took to reach RecurrentPPO's final training score; P(RL² better) "
                   "paired by task (`metarl compare`, report in experiments/results/NAME/).",
                   ["experiment", "env", "budget", "RL²", "RecurrentPPO", "random", "score ratio", "P(RL² better)",
                    "time ratio", "train time (RL² / RecurrentPPO)", "commit", "command"], peer_rows)
    out += section("Multi-task PPO (stable-baselines3, observation only) pretrained on the training tasks, on the "
                   "held-out tasks: fine-tuned during each task's trial (PPO continues from the pretrained weights), "
                   "zero-shot (no updates), and PPO from scratch on the same tasks; mean total reward per trial ± "
                   "half-width of the 95% CI.",
                   ["experiment", "env", "pretraining budget", "fine-tuned", "zero-shot", "PPO from scratch", "random",
                    "train time", "commit", "command"], mt_rows)
    out += "\n\n" + ml10_table()
    bench = ROOT / "experiments" / "results" / "bench_cpu.json"
    if bench.exists():
        out += "\n\n" + cpu_bench_table(json.loads(bench.read_text()))
    for f in sorted((ROOT / "experiments" / "results").glob("gpu_check*.json")):
        out += "\n\n" + gpu_table(json.loads(f.read_text()), f.name)
    return out


WORKERS_MEASURE = ("steps/s (efficiency vs cores x one env alone; workers stepping / acting; one step inside a "
                   "worker vs alone)")


def workers_figure(f: dict) -> str:
    """A simulation-worker bench's figure: steps/s (efficiency; the workers' share of the time
    stepping / acting; one env step inside a worker vs alone)."""
    nan = float("nan")
    spread = (f" [{f['efficiency_spread'][0]:.2f}, {f['efficiency_spread'][1]:.2f}] over {f['rounds']} rounds"
              if "efficiency_spread" in f else "")  # median of alternating rounds, since 4e7263a
    return (f"{f['parallel_steps_per_s']:,.0f} (**{f['efficiency']:.2f}**{spread}; "
            f"{f.get('worker_busy_fraction', nan):.2f} / {f.get('worker_policy_fraction', nan):.2f}; "
            f"{f.get('worker_us_per_env_step', nan):.0f} vs {f.get('single_env_us_per_step', nan):.0f} µs)")


def cpu_bench_table(b: dict) -> str:
    """Throughput on this machine's CPU (experiments/bench.py), each against its issue's target."""
    rows = []
    tail = lambda e: f" | {e['commit']} | `{e['command']}` |"  # noqa: E731
    for name, e in b["benches"].items():
        f = e["figures"]
        if name.startswith("mujoco"):
            rows.append(f"| MuJoCo ({f['env']}, {f['envs']} sub-envs) workers on {f['cores']} cores, MAML's sampler: "
                        f"{WORKERS_MEASURE} | {workers_figure(f)} | efficiency 0.80" + tail(e))
        elif name == "metaworld-ray":
            lo, hi = f["ray_vs_local_spread"]
            rows.append(f"| Meta-World {f['benchmark']} ({f['envs']} sub-envs) on {f['cores']} Ray actors vs {f['cores']} "
                        f"worker processes, MAML's sampler, {f['rounds']} alternating rounds: steps/s | "
                        f"{f['ray_steps_per_s']:,.0f} vs {f['local_steps_per_s']:,.0f} (Ray **{f['ray_vs_local']:.2f}x** "
                        f"[{lo:.2f}, {hi:.2f}]) | at least 0.8x" + tail(e))
        elif name == "metaworld-rl2-eval":
            lo, hi = f["speedup_spread"]
            rows.append(f"| Meta-World {f['benchmark']} RL² evaluation trials ({f['envs']} held-out sub-envs, "
                        f"{f['episodes']} episodes of {f['horizon']} steps, {f['cores']} workers), {f['rounds']} "
                        f"alternating rounds: steps/s in the workers vs step by step | "
                        f"{f['in_workers_steps_per_s']:,.0f} vs {f['step_by_step_steps_per_s']:,.0f} "
                        f"(**{f['speedup']:.2f}x** [{lo:.2f}, {hi:.2f}]) | faster" + tail(e))
        elif name.startswith("metaworld"):
            rows.append(f"| Meta-World {f['benchmark']} ({f['envs']} sub-envs) workers on {f['cores']} cores, MAML's "
                        f"sampler (2x512 policy): {WORKERS_MEASURE} | {workers_figure(f)} | efficiency 0.85" + tail(e))
            if "metaworld_async_steps_per_s" in f:
                rows.append(f"| ... vs Meta-World's own async vector env, same policy | "
                            f"{f['metaworld_async_steps_per_s']:,.0f} steps/s (metarl **{f['speedup_vs_metaworld_async']:.2f}x**) "
                            "| beat it" + tail(e))
        elif name == "inner-loop":
            rows.append(f"| MAML inner step, {f['tasks']} tasks: vmap vs per-task autograd loop, "
                        f"{f['rollouts']} rollouts x {f['horizon']} steps per task (1 rollout) | "
                        f"**{f['speedup']:.2f}x** ({f['speedup_1_rollout']:.2f}x) | 5x" + tail(e))
        elif name == "bandit":
            rows.append(f"| bandit env alone, {f['num_envs']} tasks: steps/s | **{f['env_steps_per_s'] / 1e6:.1f}M** | "
                        "5M" + tail(e))
            rows.append(f"| ... RL² rollout with the policy in the loop: steps/s (env's share of the time) | "
                        f"{f['rollout_steps_per_s'] / 1e6:.2f}M (**{f['env_time_fraction']:.0%}**) | at most 20%" + tail(e))
        else:  # any other benchmark: its numeric figures as they are
            figs = ", ".join(f"{k} {v:,.4g}" for k, v in f.items() if isinstance(v, (int, float)))
            rows.append(f"| {name} | {figs} | – " + tail(e))
    return (f"Benchmarks on {b['machine']} (experiments/results/bench_cpu.json; run on a quiet machine):\n\n"
            + md_table(["measure", "figure", "target", "commit", "command"], rows))


def gpu_table(g: dict, name: str) -> str:
    """The CUDA check (experiments/device_check.sh): which paths ran with --device cuda, and GPU
    throughput beside the same machine's CPU, from one run."""
    st = g["steps"]
    fig = lambda k: st.get(k, {}).get("figures", {})  # noqa: E731
    checked = [k for k in st if k.endswith("_cuda") and "rc" in st[k]]
    ok = [k for k in checked if st[k]["rc"] == 0]
    bc, bp = fig("bench_bandit_cuda"), fig("bench_bandit_cpu")
    il, ms, mj = fig("bench_inner_loop_cuda"), fig("bench_maml_sinusoid_cuda"), fig("bench_mujoco_cpu")
    big = st.get("runs", {}).get("rl2b4096", {}).get("last_timing", {})
    rows = []
    if bc and bp:
        rows.append(f"| bandit env alone, steps/s ({bc['num_envs']} tasks) | {bc['env_steps_per_s'] / 1e6:.1f}M | "
                    f"{bp['env_steps_per_s'] / 1e6:.1f}M ({bp['threads']} threads) | "
                    f"{bc['env_steps_per_s'] / bp['env_steps_per_s']:.2f} |")
        rows.append(f"| RL² rollout with the policy in the loop, steps/s | {bc['rollout_steps_per_s'] / 1e6:.2f}M | "
                    f"{bp['rollout_steps_per_s'] / 1e6:.2f}M | {bc['rollout_steps_per_s'] / bp['rollout_steps_per_s']:.2f} |")
    if big:
        rows.append(f"| RL² training (bandit k=5 n=100, 4096 trials, PPO update included), env steps/s | "
                    f"{big['steps_per_s'] / 1e6:.2f}M | – | – |")
    if il:
        rows.append(f"| MAML inner step, 40 tasks: vmap vs per-task loop, tasks/s | {il['vmap_tasks_per_s']:,.0f} vs "
                    f"{il['loop_tasks_per_s']:,.0f} | – | {il['speedup']:.1f}x |")
    if ms:
        rows.append(f"| supervised MAML sinusoid meta-iterations/s (vs per-task loop) | {ms['meta_iters_per_s']:.0f} "
                    f"({ms['speedup']:.1f}x the loop; 70k iterations in {ms['minutes_for_70k_iterations']:.1f} min) | – | – |")
    if mj:
        rows.append(f"| MuJoCo workers, {mj['cores']} cores, policy in the loop: steps/s (efficiency vs cores x one env) | – | "
                    f"{mj['parallel_steps_per_s']:,.0f} ({mj['efficiency']:.2f}; independent processes reach "
                    f"{mj['ceiling_efficiency']:.2f}) | – |")
    out = (f"GPU check on {g['device']} at {g['commit']} (`{g['command']}` on that machine, condensed into "
           f"experiments/results/{name} by experiments/device_summary.py): {len(ok)} of {len(checked)} "
           f"`--device cuda` training and evaluation paths ran to exit 0 ("
           + ", ".join(k.removesuffix("_cuda") for k in ok) + ").\n\n"
           + md_table(["measure", "GPU", "CPU (same machine)", "ratio"], rows))
    if "pytest" in st:
        tail = st["pytest"].get("output_tail", "")
        cut = st["pytest"].get("rc") == 124 and not re.search(r"^[.s]*[FE]", tail, re.M)
        passed = sum(len(m) for m in re.findall(r"^[.s]+", tail, re.M)) if cut else None
        out += (f"\n\nTest suite with CUDA visible: exit {st['pytest'].get('rc')}"
                + (f" (cut by its {st['pytest'].get('seconds', 0):.0f} s limit after about {passed} tests, "
                   "none failed)" if passed else "") + ".")
    return out


def multitask_row(s: dict) -> str:
    m = s["metrics"]
    res = m["results"]
    cell = lambda n: fmt(res[n]) if n in res else "–"  # noqa: E731
    envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items() if k in ("horizon", "episodes", "k", "n"))
    return (f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | {m['env_steps']:,} | "
            f"{cell(m['agent'])} | {cell(m['agent'] + ' (zero-shot)')} | {cell('ppo-scratch')} | {cell('random')} | "
            f"{s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")


def fewshot_row(s: dict) -> str:
    m = s["metrics"]
    r = m["results"][m["agent"]]
    acc = r["metric"] == "query accuracy"
    f = (lambda c: pct(c)) if acc else mse_cell
    per = {str(p["x"]): p for p in curve_of(r).points}
    cells = [f(per[k]) if k in per else "–" for k in ("0", "1", "5", "10")]
    if len(per) == 1:  # closed-form adaptation: one figure
        cells = [f(next(iter(per.values())))] + ["–"] * 3
    learner = m["agent"]
    if search := agent_option(s, "search", ""):  # the mixed network's accuracy, and the cell it chose
        chosen = (m.get("search") or {}).get("chosen")
        learner += f" ({search} search: the mixed network" + (f"; chosen cell {chosen})" if chosen else ")")
    return (f"| {s['experiment']} | {family_of(m)}, {m['held_out_tasks']} held-out tasks | {learner} | "
            + " | ".join(cells) + row_tail(s))


def mse_cell(c: dict) -> str:
    k = shown(c)
    cell = f"{k['mean']:.3f} ± {k['mean'] - k['ci_low']:.3f}"
    if c.get("diverged"):  # a few tasks blew up: the mean is over the others, and the cell says so
        cell += f" ({c['diverged']} of {c['n']} diverged, left out; median {c['median']:.3f})"
    elif "median" in c and c["mean"] - c["ci_low"] > c["mean"]:  # heavy tail: a few tasks far off
        cell += f" (heavy tail; median {c['median']:.3f})"
    return cell


def peer_row(s: dict) -> str:
    m = s["metrics"]
    envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items())
    t = m["train_time_s"]
    reach = f"{m['time_ratio']:.2f}" if m.get("time_ratio") else "RL² never reached it"
    poi = m["p_rl2_better"]
    return (f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | "
            f"{m['budget_env_steps']['rl2']:,} | {fmt(m['score']['rl2'])} | {fmt(m['score']['recurrent-ppo'])} | "
            f"{fmt(m['random'])} | {m['score_ratio']:.2f} | {poi[0]:.2f} [{poi[1]:.2f}, {poi[2]:.2f}] | {reach} | "
            f"{t['rl2'] / 60:.1f} / {t['recurrent-ppo'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")


def other_checkpoint(f: Path) -> Path | None:
    """The same run's evaluation at its other checkpoint, where one was written: NAME_best.json
    beside NAME.json of the last iteration, or NAME_latest.json beside NAME.json of a config that
    reports its best checkpoint (experiments/run.py --checkpoint)."""
    stem = f.stem
    if stem.endswith("_best") or stem.endswith("_latest"):
        other = f.with_name(stem.rsplit("_", 1)[0] + ".json")
    else:
        which = read_summary(f)["metrics"].get("checkpoint", "latest")
        other = f.with_name(f"{stem}_{'latest' if which == 'best' else 'best'}.json")
    return other if other.exists() else None


def best_note(m: dict) -> str:
    """A results file of a run's best checkpoint (experiments/run.py --checkpoint best) says so."""
    if m.get("checkpoint") != "best":
        return ""
    sel = m.get("checkpoint_select")
    by = {"heldout_success": "the held-out sample while training",
          "post_return": "post-adaptation training return"}.get(sel, sel)
    since = m.get("checkpoint_select_from") or 0
    return (f", best checkpoint of training (after {m['checkpoint_iteration']} iterations"
            + (f", by {by}" if by else "") + (f" from iteration {since} on" if since else "") + ")")


def pct(r: dict) -> str:
    return f"{100 * r['mean']:.1f}% ± {100 * (r['mean'] - r['ci_low']):.1f}"


def success_cell(r: dict) -> str:
    """Per-task success, and Meta-World's own tally of the same episodes where recorded."""
    t = r.get("metaworld_tally")
    return pct(r) + (f" (Meta-World tally {pct(t['total'])})" if t else "")


def forms_cell(results: dict, agent: str) -> str:
    """The agent's evaluated forms, each with both tallies (success_cell)."""
    forms = [n for n in results if n == agent or n.startswith(agent + " (")]
    if len(forms) == 1:
        return success_cell(results[agent])
    return "; ".join(f"{'sampled actions' if n == agent else n[len(agent) + 2:-1]}: {success_cell(results[n])}"
                     for n in forms)


def metaworld_row(s: dict) -> str:
    m = s["metrics"]
    res = m["results"]
    mine = res[m["agent"]]
    before = curve_of(mine).points[0]
    envc = m["env_config"]
    bench = m["env"].upper() + (f" {envc['task']}" if m["env"] == "ml1" else "")
    rnd = pct(res["random"]) if "random" in res else "–"
    ts = f"{100 * m['train_success']:.1f}%" if m.get("train_success") is not None else "–"
    if m.get("meta_train"):  # the protocol on the training classes (results written since 2026-11-27)
        ts += f"; protocol {success_cell(m['meta_train']['results'][m['agent']])}"
    return (f"| {s['experiment']}{best_note(m)} | {bench}, {m['held_out_tasks']} held-out tasks | {m['agent']} | "
            f"{forms_cell(res, m['agent'])} | "
            f"{pct(before)} | {rnd} | {ts} | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | "
            f"`{s['command']}` |")


def ml10_table() -> str:
    """Published ML10 meta-test success beside ours: measured where a results file exists, else
    'not yet run' with the expected wall-clock stated in the experiment's config."""
    from metarl.config import tomllib
    rows = []
    for name in sorted((ROOT / "experiments" / "configs").glob("*_ml10*.toml")):
        cfg = tomllib.loads(name.read_text())
        meta, agent = cfg.get("experiment", {}), cfg["run"]["agent"]
        pub = meta.get("published", {})
        res = ROOT / "experiments" / "results" / f"{name.stem}.json"
        seeds = ROOT / "experiments" / "results" / f"{name.stem}_seeds" / "summary.json"
        command = f"`python experiments/run.py {name.stem}`"
        if seeds.exists():  # several seeds recorded: their IQM (experiments/run.py runs metarl compare)
            c = json.loads(seeds.read_text())
            ours = seeds_cell(c, agent) + final_checkpoints(name.stem, c, agent)
            selected = meta.get("checkpoint") == "best"
            status = (f"{len(c['runs'])} seeds, " + (
                f"best checkpoints after {', '.join(f'{x:,}' for x in c['env_steps'])} env steps" if selected
                else f"{min(c['env_steps']):,} env steps each")
                      + "; per seed: "
                      + ", ".join(f"{Path(r).name}.json" for r in c["runs"])
                      + f"; report experiments/results/{name.stem}_seeds/report.md")
            command = (f"`python experiments/run.py {name.stem} --seed N` for each seed, then "
                       f"`metarl compare {' '.join(c['runs'])} --out experiments/results/{name.stem}_seeds"
                       + (" --allow-unequal-budgets`" if selected else "`"))
        elif res.exists():
            s = read_summary(res)
            m = s["metrics"]
            ours = forms_cell(m["results"], agent)
            note = best_note(m)  # "" for the last iteration's checkpoint
            status = (f"measured at {s['commit']}: " + (
                f"the checkpoint after {m['env_steps']:,} env steps of a {m['train_time_s'] / 3600:.1f} h run"
                if note else f"{m['env_steps']:,} env steps in {m['train_time_s'] / 3600:.1f} h"))
            if m.get("train_success") is not None:
                status += (f", training success {100 * m['train_success']:.0f}% "
                           + ("at that checkpoint" if note else "at the end"))
            if m.get("meta_train"):
                status += f" ({success_cell(m['meta_train']['results'][agent])} by the protocol on the training classes)"
            timing = ROOT / "experiments" / "results" / f"{name.stem}_timing.json"
            if timing.exists():  # the projection made before the run, to check it against
                t = json.loads(timing.read_text())
                status += (f" (projected {t['full_run_here_h']:.1f} h here at {t['commit']} by `{t['command']}`: "
                           f"{t['update_s']:.0f} s update, {t['sample_s']:.0f} s simulation an iteration"
                           f"{earlier_timings(name.stem)})")
            if note:
                ours = f"at the{note[1:]}: {ours}"
            other = other_checkpoint(res)
            if other is not None:  # the same run at its other checkpoint (best by the held-out sample, or final)
                o = read_summary(other)
                o_note = best_note(o["metrics"])
                where = f"the{o_note[1:]}" if o_note else (
                    f"the final checkpoint (after {o['metrics']['checkpoint_iteration']} iterations)")
                ours += f"; at {where}: {forms_cell(o['metrics']['results'], agent)}"
                command += f", then `{o['command']}`"
        else:
            running = in_progress(name.stem)
            ours, status = "–", (running + "; cost: " if running else "not yet run; ") + expected(name.stem)
        status += gpu_measured(name.stem)
        rows.append(f"| {agent} | {pub.get('Meta-World paper', '–')} | {pub.get('Meta-World+', '–')} | {ours} | "
                    f"{status} | {command} |")
    return "ML10 meta-test success, published and ours:\n\n" + md_table(
        ["agent", "Meta-World paper (v1 rewards)", "Meta-World+ (v2 rewards)", "ours", "status", "command"], rows)


def seeds_cell(c: dict, agent: str) -> str:
    """IQM over seeds [95% CI] of each form of the agent's overall success, per task and by
    Meta-World's own tally, as Meta-World+ reports (metarl compare's "over runs"; reports written
    before it have only the IQM over seeds and tasks)."""
    def iqm(v):
        return f"{100 * v[0]:.1f}% [{100 * v[1]:.1f}, {100 * v[2]:.1f}]"
    runs = c.get("over_runs")
    cells = []
    for m, st in c["methods"].items():
        if m != agent and not m.startswith(agent + " ("):
            continue
        label = "sampled actions" if m == agent else m[len(agent) + 2:-1]
        if runs:
            tally = runs["metaworld_tally"].get(m)
            cells.append(f"{label}: IQM {iqm(runs['per_task'][m]['iqm'])}"
                         + (f" (Meta-World tally IQM {iqm(tally['iqm'])}; {per_seed(c['runs'], tally['runs'])})"
                            if tally else ""))
        else:
            tally = c["metaworld_tally"].get(m)
            cells.append(f"{label}: IQM {iqm(st['iqm'])}"
                         + (f" (Meta-World tally IQM {iqm(tally['iqm'])})" if tally else ""))
    return "; ".join(cells)


def final_checkpoints(name: str, c: dict, agent: str) -> str:
    """For seeds compared at their best checkpoints: the final checkpoints' figures (experiments/run.py
    --checkpoint latest), over seeds once two were evaluated (NAME_latest_seeds), else per seed."""
    results = ROOT / "experiments" / "results"
    latest = results / f"{name}_latest_seeds" / "summary.json"
    if latest.exists():
        return f"; at the final checkpoints: {seeds_cell(json.loads(latest.read_text()), agent)}"
    done = [(Path(r).name, results / f"{Path(r).name}_latest.json") for r in c["runs"]]
    done = [(n, f) for n, f in done if f.exists()]
    return "".join(f"; {n} at its final checkpoint: {forms_cell(read_summary(f)['metrics']['results'], agent)}"
                   for n, f in done)


def in_progress(name: str) -> str:
    """A long run parked between sessions (experiments/run.py --park): how far it got, or ""."""
    f = ROOT / "experiments" / "inflight" / name / "metrics.jsonl"
    if not f.exists():
        return ""
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if not rows:
        return ""
    last, held = rows[-1], [r for r in rows if "heldout_success" in r]
    train = next((k for k in ("post_success", "success_last") if k in last), None)
    text = f"in progress: {last['env_steps']:,} env steps ({last['iteration'] + 1} iterations) so far"
    if train:
        text += f", training success {100 * last[train]:.0f}%"
    if held:
        text += (f", held-out sample {100 * held[-1]['heldout_success']:.0f}% at {held[-1]['env_steps']:,} steps "
                 f"(agent.eval_every)")
    return text + f"; parked in experiments/inflight/{name}, `python experiments/run.py {name}` resumes"


def gpu_measured(name: str) -> str:
    """The full run's wall-clock measured with the learner on a GPU, from NAME_timing_cuda.json
    (experiments/wall_clock.py NAME --device cuda on a GPU machine), or ""."""
    f = ROOT / "experiments" / "results" / f"{name}_timing_cuda.json"
    if not f.exists():
        return ""
    t = json.loads(f.read_text())
    return (f"; measured on {t['gpu']} + {t['cores_here']} cores at {t['commit']}: {t['iteration_s']:.1f} s per "
            f"iteration ({t['sample_s']:.1f} s simulation, {t['update_s']:.1f} s update), so "
            f"{t['full_iterations']} iterations take {t['full_run_here_h']:.2f} h there — `{t['command']}`")


def expected(name: str) -> str:
    """The projected wall-clock of a full run, from experiments/results/NAME_timing.json."""
    f = ROOT / "experiments" / "results" / f"{name}_timing.json"
    if not f.exists():
        return f"cost not measured (`python experiments/wall_clock.py {name}`)"
    t = json.loads(f.read_text())
    proj = "; ".join(f"{n} cores + GPU ≤ {v['total_h']:.1f} h" for n, v in t["projection_by_cores"].items())
    return (f"measured {t['iteration_s']:.0f} s per iteration on {t['cores_here']} cores ({t['sample_s']:.0f} s "
            f"simulation, {t['update_s']:.0f} s update) at {t['commit']}, so {t['full_iterations']} iterations take "
            f"{t['full_run_here_h']:.1f} h here; projected {proj} (simulation scaled by cores, update time as "
            f"measured on this CPU, an upper bound for a GPU) — `{t['command']}`" + earlier_timings(name))


def earlier_timings(name: str) -> str:
    """Earlier measurements kept as NAME_timing_COMMIT.json (wall_clock.py's output renamed before
    a change), so a speed-up reads against its before."""
    out = ""
    for f in sorted((ROOT / "experiments" / "results").glob(f"{name}_timing_*.json")):
        if f.stem.endswith("_timing_cuda"):
            continue
        t = json.loads(f.read_text())
        out += (f"; before, at {t['commit']} on the same machine: {t['update_s']:.0f} s update "
                f"({t['sample_s']:.0f} s simulation), {f.name}")
    return out


def steps_row(s: dict) -> str:
    m = s["metrics"]
    res = m["results"]
    steps = curve_of(res[m["agent"]]).points
    cells = [fmt(c) for c in steps[:4]] + ["–"] * (4 - len(steps[:4]))
    envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items())
    rnd = fmt(res["random"]) if "random" in res else "–"
    return (f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | {m['agent']} | "
            + " | ".join(cells) + f" | {rnd}" + row_tail(s))


RESULTS_PAGE = ROOT / "docs" / "results.md"
OBJECTIVES_FIGURE = ROOT / "docs" / "objectives.png"  # objectives_figure, shown on the results page


def evaluator_cell(rec: dict) -> str:
    """The evaluator's accuracy on held-out real drawings, and on them blurred (sigma 1) where recorded."""
    blurred = rec.get("evaluator_accuracy_on_blurred_real", {}).get("1.0")
    return f"{100 * rec['evaluator_accuracy_on_real']:.1f}%" + (f" (blurred: {100 * blurred:.1f}%)" if blurred else "")


def generation_row(s: dict) -> str:
    m = s["metrics"]
    rec, elbo = m["results"]["fewshot-gen"], m["results"]["fewshot-gen (ELBO)"]
    record = ROOT / "experiments" / "results" / "runs" / s["experiment"] / "eval.json"
    if "sample_z" not in rec and record.exists():  # results files written before run.py kept these keys
        full = json.loads(record.read_text())["results"]["fewshot-gen"]
        rec = {**rec, **{k: full[k] for k in ("sample_z", "evaluator_accuracy_on_blurred_real") if k in full}}
    pts = lambda r: (r["curve"]["points"][0], r["curve"]["points"][-1])  # noqa: E731
    (r0, r1), (e0, e1) = pts(rec), pts(elbo)
    paired = m.get("paired_with")
    diff = ("–" if not paired else "; ".join(
        f"{paired[n]['mean']:+.3f} [{paired[n]['ci_low']:+.3f}, {paired[n]['ci_high']:+.3f}]"
        for n in ("fewshot-gen", "fewshot-gen (ELBO)") if n in paired) + f" vs {paired['experiment']}")
    envc = m["env_config"]
    alt = next((n for n in m["results"] if n.startswith("fewshot-gen (z from ")), None)
    other_z = f"; {alt[len('fewshot-gen ('):-1]}: {pct(m['results'][alt])}" if alt else ""
    return (f"| {s['experiment']} | {m['env']} {envc['ways']}-way {envc['shots']}-shot, {m['held_out_tasks']} held-out "
            f"tasks | {agent_option(s, 'mode', 'reptile')}, z from {rec.get('sample_z', 'prior')} | {pct(r0)} / {pct(r1)} after {r1['x']} steps "
            f"({100 * rec['chance']:.0f}%){other_z} | {fmt(e0)} / {fmt(e1)} | {evaluator_cell(rec)} | "
            f"{diff} | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")


def agent_changes(s: dict, ref: str) -> str:
    """The [agent] options by which an experiment's config differs from the reference's: "policy_head=hyper, ..."."""
    from metarl.config import tomllib
    configs = ROOT / "experiments" / "configs"
    ours, theirs = (tomllib.loads((configs / f"{n}.toml").read_text()).get("agent", {})
                    for n in (s.get("config", s["experiment"]), ref))
    return ", ".join(f"{k}={ours.get(k, 'default')}" for k in sorted(set(ours) | set(theirs))
                     if ours.get(k) != theirs.get(k)) or "–"


def rl_pairs_table() -> str:
    """RL trial runs that change one thing against a reference run ([experiment] paired_with): the
    difference on the same held-out tasks, paired by task."""
    rows = []
    for _, s in experiment_summaries():
        m = s["metrics"]
        paired = m.get("paired_with")
        if m.get("protocol") != "trial" or not paired:
            continue
        agent = m["agent"]
        rows.append(f"| {s['experiment']} | {m['env']}, {m['held_out_tasks']} held-out tasks | "
                    f"{agent_changes(s, paired['experiment'])} | {fmt(m['results'][agent])} | {paired['experiment']} | "
                    f"{paired_cell(paired, agent)} | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | "
                    f"`{s['command']}` |")
    return section("RL variants against their reference run (`[experiment] paired_with`): mean total reward per trial "
                   "± half-width of the 95% CI, and the variant minus the reference on the same held-out tasks, paired "
                   "by task, 95% CI (sampled actions; deterministic).",
                   ["experiment", "env", "changed [agent] options", "mean total reward", "reference",
                    "difference, paired", "train time", "commit", "command"], rows)


def context_table() -> str:
    """Probabilistic regressors (CNP, NP): held-out log-likelihood per target point and MSE against
    the number of context points, one row per run, so the models sit side by side."""
    rows, sizes = [], []
    for f, s in experiment_summaries():
        m = s["metrics"]
        per = m.get("results", {}).get(m.get("agent"), {}).get("per_context") if m.get("protocol") == "fewshot" else None
        if not per:
            continue
        sizes = per["contexts"]
        cells = [f"{ll['mean']:.2f} ± {ll['mean'] - ll['ci_low']:.2f} / {mse['mean']:.3f}"
                 for ll, mse in zip(per["loglik"], per["mse"])]
        rows.append(f"| {s['experiment']} | {m['agent']} | " + " | ".join(cells) +
                    f" | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")
    return section("Probabilistic regressors on held-out functions: test log-likelihood per target point (± half-width "
                   "of the 95% CI; NP: Monte Carlo estimate of the joint predictive over draws of z, divided by the "
                   "targets) / MSE of the predictive mean, against the number of context points.",
                   ["experiment", "model", *(f"{c} context" for c in sizes), "train time", "commit", "command"],
                   rows)


def objective_of(s: dict) -> str:
    """What an experiment changes in the meta-objective or the task family (issue 26's axes; for a two-stage
    hypernetwork, where its parameter targets come from: issue 25's symmetry measurement)."""
    if s["metrics"].get("agent") == "hypernet" and agent_option(s, "mode", "end-to-end") == "two-stage":
        init = agent_option(s, "target_init", "shared")
        parts = [f"two-stage, targets fit from {'one shared init' if init == 'shared' else init + ' inits'}"]
    else:
        parts = [agent_option(s, "meta_loss", "maml")]
    if agent_option(s, "adversarial", ""):
        parts.append(f"ADML {agent_option(s, 'adversarial', '')} eps={agent_option(s, 'adv_eps', 0.1):g}")
    envc = s["metrics"]["env_config"]
    if envc.get("fixed_labels") or envc.get("task_ids"):
        parts.append("non-mutually-exclusive tasks")
    return ", ".join(parts)


def family_of(m: dict) -> str:
    """A few-shot run's task family in words: "glyphs 5-way 1-shot", "sinusoid K=10"."""
    envc = m["env_config"]
    return m["env"] + (f" {envc['ways']}-way {envc['shots']}-shot" if "ways" in envc else f" K={envc.get('shots')}")


def objectives_table() -> str:
    """Few-shot runs that change the meta-objective (agent.meta_loss, ADML) or use the non-mutually-
    exclusive families, against their paired reference where the config names one."""
    rows = []
    for f, s in experiment_summaries():
        m = s["metrics"]
        if m.get("protocol") != "fewshot" or m.get("agent") == "fewshot-gen" or experiment_option(s, "arch_from"):
            continue  # generation and searched cells have tables of their own
        objective, paired = objective_of(s), m.get("paired_with")
        if objective == "maml" and not paired:
            continue
        res, agent = m["results"], m["agent"]
        cell = (lambda r: pct(shown(r))) if res[agent]["metric"] == "query accuracy" else mse_cell
        robust = next((n for n in res if n.startswith(agent + " (fgsm") or n.startswith(agent + " (pgd")), None)
        diff = lambda n: (f"{paired[n]['mean']:+.3f} [{paired[n]['ci_low']:+.3f}, {paired[n]['ci_high']:+.3f}]"  # noqa: E731
                          if paired and n in paired else "–")
        fam = family_of(m)
        rows.append(f"| {s['experiment']} | {fam} | {agent}: {objective} | {cell(res[agent])} | "
                    f"{cell(res[robust]) + ' (' + robust[len(agent) + 2:-1] + ')' if robust else '–'} | "
                    f"{paired['experiment'] if paired else '–'} | {diff(agent)} | {diff(robust) if robust else '–'} | "
                    f"{s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")
    return section("Meta-objectives (`agent.meta_loss`, `agent.adversarial`, a two-stage hypernetwork's parameter "
                   "targets) and non-mutually-exclusive task families: "
                   "held-out query MSE or accuracy after the run's evaluation steps (± half-width of the 95% CI), robust "
                   "accuracy under the attack named, and the difference from the reference run (the same tasks, paired "
                   "by task, 95% CI)."
                   + (f"\n\n![each objective's paired difference from its reference]({OBJECTIVES_FIGURE.name})"
                      if rows and objective_differences() else ""),
                   ["experiment", "task family", "objective", "held-out", "under attack", "reference",
                    "difference, paired", "difference under attack, paired", "train time", "commit", "command"], rows)


def arch_table() -> str:
    """Cells a search chose ([experiment] arch_from), trained from scratch: held-out accuracy, weights
    against Conv4's, the search's time, and the difference from the hand-designed Conv4 run."""
    rows = []
    for _, s in experiment_summaries():
        search = experiment_option(s, "arch_from")
        if not search or not (ROOT / "experiments" / "results" / f"{search}.json").exists():
            continue
        found = json.loads((ROOT / "experiments" / "results" / f"{search}.json").read_text())
        info, m = found["metrics"]["search"], s["metrics"]
        paired, agent = m.get("paired_with"), m["agent"]
        diff = (f"{paired[agent]['mean']:+.3f} [{paired[agent]['ci_low']:+.3f}, {paired[agent]['ci_high']:+.3f}] vs "
                f"{paired['experiment']}" if paired and agent in paired else "–")
        width = f" at {info['channels']} channels" if "channels" in info else ""
        rows.append(f"| {s['experiment']} | {family_of(m)} | {info['chosen']}{width} | {info['chosen_params']:,} "
                    f"(Conv4 {info['conv4_params']:,}) | {pct(m['results'][agent])} | {diff} | "
                    f"{search}, {found['wall_clock_s'] / 60:.1f} min"
                    + (f" + choice {info['choice_s'] / 60:.1f} min" if "choice_s" in info else "")
                    + f" ({found['commit']}) | "
                    f"{s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |")
    return section("Searched cells (`agent.search = \"darts\"`, then `[experiment] arch_from`): the cell the search "
                   "chose on validation classes, trained from scratch; held-out accuracy after the run's evaluation "
                   "steps (± half-width of the 95% CI) and the difference from the hand-designed Conv4 on the same "
                   "tasks, paired by task (95% CI).",
                   ["experiment", "task family", "cell", "weights", "held-out", "difference, paired", "search",
                    "train time", "commit", "command"], rows)


def objective_differences() -> dict[str, list[tuple[str, dict]]]:
    """Per task family, (objective, paired difference from the reference) of every objectives_table
    run that has a reference: what objectives_figure draws."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for _, s in experiment_summaries():
        m = s["metrics"]
        paired = m.get("paired_with")
        if (m.get("protocol") != "fewshot" or m["agent"] == "fewshot-gen" or not paired or m["agent"] not in paired
                or experiment_option(s, "arch_from")):
            continue
        fam = family_of(m)
        label = objective_of(s).removeprefix("maml,").removeprefix("maml, ").replace(", non-mutually-exclusive tasks",
                                                                                     " (NME tasks)")
        if m["agent"] != "maml":
            label = f"{m['agent']}: {label}"
        out.setdefault(f"{fam}: {m['results'][m['agent']]['metric']}", []).append((label, paired[m["agent"]]))
    return {fam: sorted(rows, key=lambda r: r[0]) for fam, rows in sorted(out.items())}


def objectives_figure(path: Path) -> bool:
    """A forest plot, one panel per task family: each objective's held-out difference from its
    reference run, paired by task, with its 95% CI. False (nothing written) when there is none."""
    fams = objective_differences()
    if not fams:
        return False
    from metarl.eval.plots import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 0.45 * max(map(len, fams.values())) + 1.8))
    for ax, (fam, rows) in zip(list(axes) if len(fams) > 1 else [axes], fams.items()):
        y = range(len(rows))
        mean = [d["mean"] for _, d in rows]
        err = [[d["mean"] - d["ci_low"] for _, d in rows], [d["ci_high"] - d["mean"] for _, d in rows]]
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        ax.set_yticks(list(y), [name for name, _ in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference, 95% CI ({'lower' if 'MSE' in fam else 'higher'} is better)")
        ax.set_title(fam, fontsize=10)
    fig.suptitle("Each objective against its learner without it, on the same held-out tasks (NME: on NME tasks)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def transfer_table() -> str:
    """Few-shot learners tested unchanged on another task family ([experiment] transfer_env):
    each evaluated form's query metric after 0, 1, 5, 10 inner steps there."""
    rows = []
    for f, s in experiment_summaries():
        t = s["metrics"].get("transfer")
        if not t:
            continue
        m = s["metrics"]
        for name, r in t["results"].items():
            per = {str(p["x"]): p for p in curve_of(r).points}
            cell = (lambda c: pct(shown(c))) if r.get("metric") == "query accuracy" else mse_cell
            cells = [cell(per[k]) if k in per else "–" for k in ("0", "1", "5", "10")]
            rows.append(f"| {s['experiment']} | {m['env']} → {t['env']}, {t['held_out_tasks']} tasks | {name} | "
                        + " | ".join(cells) + f" | {s['commit']} | `{s['command']}` |")
    return section("Few-shot learners tested unchanged on another task family (`[experiment] transfer_env`, as "
                   "`metarl eval RUN --env ENV`): query MSE (or accuracy) after 0, 1, 5, 10 inner steps on its tasks, "
                   "± half-width of the 95% CI.",
                   ["experiment", "trained on → tested on", "learner", "0 steps", "1 step", "5 steps", "10 steps",
                    "commit", "command"], rows)


def curvature_table() -> str:
    """experiments/curvature.py: each MAML-family regression init's curvature against its step size."""
    rows = []
    for f in sorted((ROOT / "experiments" / "results").glob("*_curvature.json")):
        s = json.loads(f.read_text())
        e, w = s["top_eigenvalue"], s["worst_task"]
        rows.append(f"| {s['experiment']} | {s['inner_lr']:g} | {s['stability_limit']:g} | {e['median']:.0f} / "
                    f"{e['p99']:.0f} / {e['max']:.0f} | {100 * s['share_above_limit']:.0f}% | "
                    f"{s['support_loss_grew']} of {s['tasks']} | {w['support_loss'][-1]:.3g} "
                    f"(float64 {w['support_loss_float64'][-1]:.3g}) | {s['commit']} | `{s['command']}` |")
    return section("Why a few-shot init diverges with more inner steps than it trained with: the top eigenvalue of "
                   "each held-out task's support-loss Hessian at the init against 2 / inner lr (plain SGD's stability "
                   "limit), and the support loss along 10 SGD steps.",
                   ["experiment", "inner lr", "2 / lr", "top eigenvalue median / p99 / max", "tasks above 2 / lr",
                    "support loss grew", "worst task after 10 steps", "commit", "command"], rows)


def behaviour_table() -> str:
    """experiments/mdp_behaviour.py: each method's return in each episode of a tabular-MDP trial."""
    rows = []
    for f in sorted((ROOT / "experiments" / "results").glob("*_behaviour.json")):
        s = json.loads(f.read_text())
        for name, r in s["results"].items():
            per = " / ".join(f"{e['mean']:.1f}" for e in r["return"])
            rows.append(f"| {s['experiment']} | {name} | {per} | {s['tasks']} | {s['commit']} | `{s['command']}` |")
    return section("What a method does in each episode of a tabular-MDP trial (the full tables, regret, optimal "
                   "actions, new pairs and agreement with the certainty-equivalent planner, are in the JSON and PNG "
                   "beside each file): return of episodes 1 to n.",
                   ["experiment", "method", "return per episode", "tasks", "commit", "command"], rows)


def demo_table() -> str:
    """experiments/demo_check.py: `metarl demo` with several seeds, RL² against greedy."""
    f = ROOT / "experiments" / "results" / "demo_check.json"
    if not f.exists():
        return ""
    s = json.loads(f.read_text())
    rows = [f"| {r['seed']} | {r['wall_clock_s'] / 60:.1f} min | {r['rl2']['mean']:.3f} | {r['greedy']['mean']:.3f} | "
            f"{r['rl2_minus_greedy']['mean']:+.3f} [{r['rl2_minus_greedy']['ci_low']:+.3f}, "
            f"{r['rl2_minus_greedy']['ci_high']:+.3f}] | {r['gittins']['mean']:.3f} |" for r in s["runs"]]
    return (f"\n\n`metarl demo` ({s['demo']['steps']:,} steps, {', '.join(s['demo']['sets'])}), one run per "
            f"training seed, 1,000 held-out tasks: `{s['command']}` at {s['commit']}; "
            f"target (RL² at greedy's level or above within 5 minutes, every seed) "
            f"{'met' if s['target_met'] else 'not met'}.\n\n"
            + md_table(["seed", "time", "RL²", "greedy", "RL² − greedy, paired", "Gittins"], rows))


def results_page() -> str:
    return ("# metarl: every result\n\nGenerated from `experiments/results/*.json` by `python experiments/readme_table.py`"
            " (never typed by hand); each file records the command and the commit that produced it. The README shows "
            "the best run of each setting.\n\n" + table() + "\n")


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n" + headline() + "\n" + END, text, flags=re.S)
    readme.write_text(new)
    RESULTS_PAGE.parent.mkdir(exist_ok=True)
    RESULTS_PAGE.write_text(results_page())
    objectives_figure(OBJECTIVES_FIGURE)
    print(headline())


if __name__ == "__main__":
    main()

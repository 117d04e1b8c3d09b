"""The README's results come from experiments/results/*.json, and each names its command."""
import pytest
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_results_table_is_generated_from_results_files():
    table = _load("readme_table").table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README results are stale: run python experiments/readme_table.py"
    for f in (ROOT / "experiments" / "results").glob("*.json"):
        s = json.loads(f.read_text())
        if f.stem.endswith("_timing"):  # experiments/wall_clock.py: per-iteration cost, shown in the ML10 table
            name = f.stem[: -len("_timing")]
            assert s["command"].startswith(f"python experiments/wall_clock.py {name}")
            assert (ROOT / "experiments" / "configs" / f"{name}.toml").exists() and s["command"] in table
            continue
        assert {"experiment", "command", "commit", "device", "wall_clock_s", "metrics"} <= set(s)
        script = "peer.py" if s["metrics"].get("protocol") == "peer" else "run.py"
        assert s["command"].startswith(f"python experiments/{script} {f.stem}")
        assert (ROOT / "experiments" / "configs" / f"{f.stem}.toml").exists()
        assert f"| {f.stem} |" in table


def test_experiment_runner_detects_a_changed_config(tmp_path):
    run = _load("run")
    (tmp_path / "config.toml").write_text('[run]\nseed = 0\n[env]\nk = 5\n[agent]\nlr = 0.0003\nnum_envs = 8\n')
    assert run.same_config(tmp_path, {"env": {"k": 5}, "agent": {"lr": 3e-4}})
    assert not run.same_config(tmp_path, {"env": {"k": 5}, "agent": {"lr": 1e-3}})
    assert not run.same_config(tmp_path, {"env": {"k": 10}})


@pytest.mark.parametrize("cfg", sorted((ROOT / "experiments" / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_experiment_config_resolves(cfg):
    """Every key of every experiment config is a real option with a valid value."""
    from metarl.config import load_toml, tomllib
    from metarl.workflows import resolve_config
    raw = tomllib.loads(cfg.read_text())
    if "agent" in raw["run"]:
        raw = load_toml(str(cfg))  # also refuses unknown sections
        resolve_config(raw["run"]["agent"], raw["run"]["env"], raw)
        return
    peer = _load("peer")  # experiments/peer.py: one table of options per agent, one budget
    assert raw["experiment"]["total_steps"] > 0
    for agent in peer.AGENTS:
        resolve_config(agent, raw["run"]["env"], {"run": raw["run"], "env": raw.get("env", {}),
                                                  "agent": {**raw[agent], "total_steps": raw["experiment"]["total_steps"]}})

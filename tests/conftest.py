import contextlib
import io
import warnings

import pytest
import torch

torch.set_num_threads(1)

TINY = ["--set", "agent.num_envs=16", "--set", "agent.hidden_size=16", "--set", "agent.checkpoint_every=1",
        "--quiet", "--device", "cpu"]


@pytest.fixture
def cli():
    """Run `metarl ARGS` in-process; returns (exit code, stdout, stderr)."""
    from metarl.app.cli import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()
    return run


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture
def sb3_checker():
    """assert_passes(env): stable-baselines3's env checker raises on errors and warns about what may break its
    algorithms; the one warning allowed is its recommendation of a [-1, 1] action box, which
    navigation's [-0.1, 0.1] (the MAML paper's bounds) and MuJoCo's torque limits are not."""
    checker = pytest.importorskip("stable_baselines3.common.env_checker")

    def assert_passes(env) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checker.check_env(env, warn=True)
        assert [str(w.message) for w in caught if "symmetric and normalized Box action" not in str(w.message)] == []
    return assert_passes

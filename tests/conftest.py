import contextlib
import io

import pytest
import torch

torch.set_num_threads(1)

TINY = ["--set", "agent.num_envs=16", "--set", "agent.hidden_size=16", "--set", "agent.checkpoint_every=1",
        "--quiet", "--device", "cpu"]


@pytest.fixture
def cli():
    """Run `metarl ARGS` in-process; returns (exit code, stdout, stderr)."""
    from metarl.cli import main

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

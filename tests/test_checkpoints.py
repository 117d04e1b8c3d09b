"""Long runs: a checkpoint write killed midway never costs the previous checkpoint."""
import signal
import subprocess
import sys
import time

import torch

from metarl.run import CHECKPOINT, RunDir, load_checkpoint

WRITER = """
import sys, torch
from metarl.run import RunDir
run = RunDir(sys.argv[1], resume=True, tensorboard=False)
print("writing", flush=True)
run.save_checkpoint({"iteration": 2, "big": torch.zeros(200_000_000, dtype=torch.uint8)})
"""


def test_kill_during_checkpoint_write_keeps_the_previous(tmp_path):
    run = RunDir(tmp_path / "run", tensorboard=False)
    run.save_checkpoint({"iteration": 1, "w": torch.arange(5)})
    tmp = (tmp_path / "run" / CHECKPOINT).with_suffix(".tmp")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "run")], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp.exists() and tmp.stat().st_size > 0) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        assert proc.poll() is None, "the writer finished before it could be killed; make its checkpoint bigger"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    ck = load_checkpoint(tmp_path / "run")
    assert ck["iteration"] == 1 and torch.equal(ck["w"], torch.arange(5))
    # the next save replaces the torn temporary file and succeeds
    run.save_checkpoint({"iteration": 3})
    assert load_checkpoint(tmp_path / "run")["iteration"] == 3

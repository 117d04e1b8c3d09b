"""Long runs: a checkpoint write killed midway never costs the previous checkpoint."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from metarl.rundir import CHECKPOINT, RunDir, load_checkpoint, read_jsonl

WRITER = """
import sys, torch
from metarl.rundir import RunDir
run = RunDir(sys.argv[1], resume=True, tensorboard=False)
print("writing", flush=True)
run.save_checkpoint({"iteration": 2, "big": torch.zeros(200_000_000, dtype=torch.uint8)})
"""


@pytest.mark.slow
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


class _ScoreTrainer:
    """Scores its parameter, then changes it: iteration it reports the value it started from."""
    steps_per_iteration = 1

    def __init__(self, values):
        self.w, self.values = torch.zeros(1), values

    def train_iteration(self, it):
        score = float(self.w)
        self.w.copy_(torch.tensor([self.values[it]]))  # in place, as an optimiser step is
        return {"score": score}

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, d):
        self.w.copy_(d["w"])


def test_best_checkpoint_keeps_the_parameters_that_earned_the_metric(tmp_path):
    from metarl.training import train_loop
    run = RunDir(tmp_path / "run", tensorboard=False)
    # scores: it0 sees w=0, it1 sees 5, it2 sees -1, it3 sees 2 -> best is iteration 1 with w=5
    train_loop(_ScoreTrainer([5.0, -1.0, 2.0, 0.5]), run, 4, {}, quiet=True, select="score")
    best = load_checkpoint(tmp_path / "run", which="best")
    assert best["select_value"] == 5.0 and best["iteration"] == 1
    assert float(best["trainer"]["w"]) == 5.0  # not the value after iteration 1's update (-1)
    assert float(load_checkpoint(tmp_path / "run")["trainer"]["w"]) == 0.5


def test_best_checkpoint_by_a_monitor_metric_keeps_the_updated_parameters(tmp_path):
    """A metric of the monitor (held-out success while training) measures the parameters after the
    iteration's update: best.pt is that state, labelled with the next iteration. A best.pt kept for
    another selection metric does not compete on resume."""
    from metarl.training import train_loop
    run = RunDir(tmp_path / "run", tensorboard=False)
    trainer = _ScoreTrainer([3.0, 7.0, 1.0, 4.0, 9.0, 2.0])
    monitor = (2, lambda state: {"held": float(state["w"])})  # after iterations 1, 3, 5: w = 7, 4, 2
    run.save_checkpoint({"iteration": 0, "select": "score", "select_value": 100.0, "trainer": {"w": torch.zeros(1)}},
                        "best")
    run.save_checkpoint({"iteration": 0, "trainer": trainer.state_dict()})
    train_loop(trainer, run, 6, {}, quiet=True, select="held", monitor=monitor, start_iteration=1)
    best = load_checkpoint(tmp_path / "run", which="best")
    assert best["select"] == "held" and best["select_value"] == 7.0 and best["iteration"] == 2
    assert best["select_from"] == 1  # resumed at 1 with a best.pt of another metric: chosen from 1 on
    assert float(best["trainer"]["w"]) == 7.0
    # resuming with the same metric keeps the saved best unless beaten
    run2 = RunDir(tmp_path / "run", resume=True, tensorboard=False)
    train_loop(_ScoreTrainer([0.0] * 6 + [5.0, 0.0]), run2, 8, {}, quiet=True, select="held", monitor=monitor,
               start_iteration=6)
    assert load_checkpoint(tmp_path / "run", which="best")["select_value"] == 7.0
    assert load_checkpoint(tmp_path / "run", which="best")["select_from"] == 1


def test_resumed_run_counts_wall_clock_on(tmp_path):
    """timing.jsonl's wall_clock_s is the run's training time: a resumed run starts from the time
    logged before its checkpoint, not from zero (compare's train time and wall-clock plot read it)."""
    from metarl.training import train_loop

    class Slow(_ScoreTrainer):
        def train_iteration(self, it):
            time.sleep(0.02)
            return super().train_iteration(it)
    run = RunDir(tmp_path / "run", tensorboard=False)
    train_loop(Slow([0.0] * 6), run, 3, {}, quiet=True)
    before = run.trained_s()
    assert before >= 0.06
    run.truncate_metrics(2)  # as `metarl train --resume` does at a checkpoint of iteration 2
    kept = run.trained_s()
    assert 0.04 <= kept < before
    train_loop(Slow([0.0] * 6), RunDir(tmp_path / "run", resume=True, tensorboard=False), 6, {}, quiet=True,
               start_iteration=2)
    clock = [row["wall_clock_s"] for row in read_jsonl(tmp_path / "run" / "timing.jsonl")]
    assert [row["iteration"] for row in read_jsonl(tmp_path / "run" / "timing.jsonl")] == list(range(6))
    assert clock == sorted(clock) and clock[2] >= kept + 0.02 and clock[-1] >= 0.12

"""A run directory: resolved config, metrics.jsonl, TensorBoard events, checkpoints.

    RUN_DIR/config.toml       the full resolved config ([run], [env], [agent])
    RUN_DIR/metrics.jsonl     one JSON object per iteration; deterministic for a seed on CPU
    RUN_DIR/timing.jsonl      wall-clock figures (kept out of metrics.jsonl so it stays exact)
    RUN_DIR/tb/               TensorBoard events
    RUN_DIR/checkpoints/latest.pt   written atomically (tmp file + rename)
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from metarl.config import dump_toml
from metarl.errors import UserError

CHECKPOINT = "checkpoints/latest.pt"
BEST = "checkpoints/best.pt"  # the iteration with the best selection metric (MAML paper protocol)
CHECKPOINTS = {"latest": CHECKPOINT, "best": BEST}


def default_run_name(env: str, agent: str, seed: int) -> str:
    return f"{env}__{agent}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """Owns the files of one run. Never overwrites a run unless asked to."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False,
                 tensorboard: bool = True):
        self.path = Path(path)
        self.resume = resume
        exists = self.path.exists() and any(self.path.iterdir())
        if exists and not (resume or overwrite):
            raise UserError(f"run directory {self.path} already exists; pass --resume to continue it, "
                            f"--overwrite to start it again, or --run-dir NEW_DIR")
        if resume and not (self.path / CHECKPOINT).exists():
            raise UserError(f"cannot resume: no checkpoint at {self.path / CHECKPOINT}; "
                            f"drop --resume to start a new run")
        if overwrite and exists and not resume:
            for name in ("metrics.jsonl", "timing.jsonl", "eval.json", "eval_train.json", "eval_best.json",
                         "eval_train_best.json", CHECKPOINT, BEST):
                (self.path / name).unlink(missing_ok=True)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._tb_enabled = tensorboard

    # ---- config -------------------------------------------------------------------------
    def save_config(self, data: dict[str, dict[str, Any]]) -> None:
        self._atomic_write_text("config.toml", dump_toml(data))

    # ---- metrics ------------------------------------------------------------------------
    def truncate_metrics(self, iteration: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be produced again)."""
        for name in ("metrics.jsonl", "timing.jsonl"):
            p = self.path / name
            if not p.exists():
                continue
            keep = [row for row in read_jsonl(p) if row["iteration"] < iteration]
            self._atomic_write_text(name, "".join(json.dumps(row) + "\n" for row in keep))

    def trained_s(self) -> float:
        """Training wall-clock logged so far (the last timing row's wall_clock_s; 0 without one): a
        resumed run counts on from it, so wall_clock_s is the run's, not the session's (logs from
        before this restarted at 0 on resume; metarl compare's Run.clock stitches them)."""
        rows = read_jsonl(self.path / "timing.jsonl")
        return float(rows[-1].get("wall_clock_s", 0.0)) if rows else 0.0

    def log(self, metrics: dict[str, Any], timing: dict[str, Any] | None = None) -> None:
        """Append one iteration's metrics (and wall-clock figures to timing.jsonl)."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if timing is not None:
            with open(self.path / "timing.jsonl", "a") as f:
                f.write(json.dumps({"iteration": metrics["iteration"], **timing}) + "\n")
        tb = self._writer()
        if tb is not None:
            step = metrics.get("env_steps", metrics["iteration"])
            for k, v in {**metrics, **(timing or {})}.items():
                if isinstance(v, (int, float)) and k not in ("iteration", "env_steps"):
                    tb.add_scalar(k, v, step)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def _writer(self):
        if self._tb is None and self._tb_enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.path / "tb"))
            except ImportError:  # tensorboard missing: metrics.jsonl still has everything
                self._tb_enabled = False
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ---- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], which: str = "latest") -> Path:
        """Write to a temporary file, flush it to disk, then rename over the previous checkpoint:
        a kill (or power loss) at any moment leaves either the old or the new file, whole."""
        target = self.path / CHECKPOINTS[which]
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def load_checkpoint(self, map_location="cpu", which: str = "latest") -> dict[str, Any]:
        return load_checkpoint(self.path, map_location, which)

    def _atomic_write_text(self, name: str, text: str) -> None:
        target = self.path / name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def load_checkpoint(run_dir: str | Path, map_location="cpu", which: str = "latest") -> dict[str, Any]:
    if which not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    p = Path(run_dir) / CHECKPOINTS[which]
    if which == "best" and not p.exists() and (Path(run_dir) / CHECKPOINT).exists():
        raise UserError(f"no best checkpoint in {run_dir}: this run logged no selection metric (MAML agents "
                        f"keep one, and any agent trained with agent.eval_every); use --checkpoint latest")
    if not p.exists():
        raise UserError(f"no checkpoint at {p}; train first (metarl train ...) or check the run directory")
    try:  # weights_only: tensors and plain values, so loading a received run can't run its code
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbled files
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise UserError(f"checkpoint {p} holds objects other than tensors and plain values; metarl does not "
                            f"unpickle it, since that could run code from the file") from None
        raise UserError(f"checkpoint {p} is corrupt or unreadable ({type(e).__name__}); "
                        f"retrain, or restore the file from a backup") from None


def open_existing(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.is_dir():
        raise UserError(f"run directory {p} does not exist; give the path printed by metarl train")
    if not (p / "config.toml").exists():
        raise UserError(f"{p} is not a metarl run directory (no config.toml); give the path printed by metarl train")
    return p

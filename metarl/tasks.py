"""Task distributions with seeded sampling and disjoint train/test streams.

A task batch is a dict of tensors whose first dim is the number of tasks, e.g. a
5-armed bandit batch is {"means": [n, 5]}. Sampling always goes through an explicit
torch.Generator: there is no global RNG anywhere in metarl.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from metarl.seeding import make_generator

Tasks = dict[str, torch.Tensor]

SPLITS = ("train", "test")


def split_generator(seed: int, split: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one split. Train and test streams of the same seed never coincide,
    so held-out tasks are not the tasks trained on (for continuous parameters the overlap
    has probability 0), and every method evaluated with the same seed sees the same tasks."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return make_generator(seed, f"tasks-{split}", device)


def tasks_slice(tasks: Tasks, index) -> Tasks:
    return {k: v[index] for k, v in tasks.items()}


CLASS_METRIC = "success/"  # training metrics "success/CLASS": one class's success in the meta-batch


def class_success(dist, tasks: Tasks, success: torch.Tensor) -> dict[str, float]:
    """Training success per task class, for distributions that name their tasks' classes
    (Meta-World: `task_names`): success [B] of each task -> {"success/CLASS": mean over that
    class's tasks}; {} for other distributions."""
    if not hasattr(dist, "task_names"):
        return {}
    names = dist.task_names(tasks)
    x = success.detach().float().cpu()
    return {CLASS_METRIC + c: x[[i for i, n in enumerate(names) if n == c]].mean().item() for c in dict.fromkeys(names)}


class TaskDistribution(ABC):
    """A distribution over tasks. Subclasses implement `sample`."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        """Draw `n` tasks of `split` on the generator's device; returns tensors of shape [n, ...].

        Parametric families ignore `split`: their splits are the disjoint generator streams of
        `split_generator`. Families with a fixed task set (Meta-World) draw from that split's set."""

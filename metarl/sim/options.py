"""The simulation options every CPU-simulated env family shares (MuJoCo, Meta-World): where its
sub-envs step. They change how tasks are simulated, never which tasks or which samples, so a
resumed run may change them and `metarl compare` ignores them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from metarl.config import option


@dataclass
class SimulationOptions:
    """Base of an env config whose sub-envs run in a ParallelEnv (env.workers, env.backend, ...)."""
    workers: int = option(0, "simulation worker processes; 0 = one per CPU core", ge=0)
    backend: str = option("local", "where the sub-envs simulate: local = in env.workers worker processes; inline = "
                          "in this process, no workers (what gym.make uses); ray = in Ray actors on the cluster of "
                          "env.ray_address (pip install -e \".[ray]\")", choices=("local", "inline", "ray"))
    ray_address: str = option("", "env.backend=ray: the Ray cluster ('' starts a local Ray instance; auto joins the "
                              "cluster `ray start` made; HOST:PORT a remote head); set by --ray-address")
    max_restarts: int = option(3, "env.backend=ray: Ray actors (or nodes) that may die and be replaced, the "
                               "samples unchanged, before the run stops", ge=0)
    timeout: float = option(60.0, "seconds a worker may take to answer before it counts as hung", gt=0.0)

    def pool_options(self) -> dict:
        """These options as ParallelEnv's keyword arguments."""
        return {f: getattr(self, f) for f in SIMULATION_FIELDS}


SIMULATION_FIELDS = tuple(f.name for f in dataclasses.fields(SimulationOptions))

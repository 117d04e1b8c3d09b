"""metarl: meta-reinforcement learning on batched tensors.

The meta-core lives here; task distributions in metarl.envs, agents in metarl.agents.
"""
__version__ = "0.1.0"

"""Agents (metarl.agents): RL², classical bandit and MDP baselines."""

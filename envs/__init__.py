"""Task distributions (metarl.envs). Importing this registers the Gymnasium ids:

    metarl/BernoulliBandit-v0, metarl/GaussianBandit-v0, metarl/TabularMDP-v0, metarl/Navigation2D-v0,
    metarl/HalfCheetahVel-v0, metarl/HalfCheetahDir-v0, metarl/AntDir-v0, metarl/AntGoal-v0 (mujoco extra)
"""
from metarl.envs.gym_adapter import register_gym_envs

register_gym_envs()

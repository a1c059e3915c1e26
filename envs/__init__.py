"""Gymnasium environments: the real games worldsim learns from and the learned simulator.

Registered ids (string entry points, nothing heavy imported here):
    worldsim/Crafter-v0       the real Crafter game (envs.crafter:CrafterEnv)
    worldsim/Dream-v0         the learned simulator of any checkpoint (envs.world_model_env)
    worldsim/CrafterDream-v0  the bundled default Crafter world model
"""

from gymnasium.envs.registration import register, registry


def _register(id: str, **kwargs) -> None:
    if id not in registry:
        register(id=id, **kwargs)


_register("worldsim/Crafter-v0", entry_point="envs.crafter:CrafterEnv", max_episode_steps=10000,
          disable_env_checker=False)
_register("worldsim/Dream-v0", entry_point="envs.world_model_env:WorldModelEnv",
          vector_entry_point="envs.world_model_env:WorldModelVectorEnv")
_register("worldsim/CrafterDream-v0", entry_point="envs.world_model_env:make_crafter_dream",
          vector_entry_point="envs.world_model_env:make_crafter_dream_vector")

"""Agents that act in real and learned environments: a random agent and an actor-critic that
trains in imagination (WorldModelVectorEnv)."""

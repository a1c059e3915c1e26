"""Agents that act in real and learned environments: a random agent and an actor-critic that
trains in imagination (WorldModelVectorEnv)."""


def load_agent(path, action_space=None, **kwargs):
    """A saved actor-critic ready to play one env (`reset()`, `act(observation)`); see
    agents.actor_critic.load_agent. Imported lazily so `import agents` stays cheap."""
    from agents.actor_critic import load_agent as _load_agent

    return _load_agent(path, action_space, **kwargs)

"""worldsim: a learned world simulator you step like any Gymnasium environment.

frames --VAE--> latents --action-conditioned spacetime DiT--> next latent --VAE--> frame

`worldsim.load(path)` returns a `WorldModel` (see worldsim/world_model.py) built from a
checkpoint bundle. Importing this package has no side effects and does not import torch.
"""

__version__ = "0.1.0"


def load(path, device=None):
    """Load a checkpoint bundle (a directory) as a `worldsim.world_model.WorldModel`."""
    from worldsim.world_model import WorldModel

    return WorldModel.load(path, device=device)

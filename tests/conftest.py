import os

# Headless pygame and single-threaded torch keep the suite fast and deterministic on 2 cores.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A checkpoint bundle trained in this test run from real Crafter play (see
    tests/tiny_bundle.py). Session-scoped: built once, shared read-only."""
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def labelled(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle's dataset (real Crafter play) with achievement labels."""
    from tiny_bundle import make_labelled_dataset

    return make_labelled_dataset(tiny_bundle, tmp_path_factory.mktemp("labelled") / "data")

"""The pygame window behind `render_mode="human"` of every env in this package."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class HumanWindow:
    """A window of (height, width) pixels, opened on the first `show`; frames of another size
    are scaled to fill it, and `show` paces to `fps`."""

    def __init__(self, title: str, size: tuple[int, int], fps: float):
        try:
            import pygame
        except ImportError as e:  # pragma: no cover - pygame-ce is a core dependency
            raise gym.error.DependencyNotInstalled(
                "render_mode='human' needs pygame: pip install pygame-ce") from e
        self._pygame, self.fps = pygame, fps
        self.height, self.width = size
        pygame.init()
        pygame.display.init()
        pygame.display.set_caption(title)
        self._screen = pygame.display.set_mode((self.width, self.height))
        self._clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        """Draw uint8 (H, W, 3) and flip."""
        pygame = self._pygame
        surface = pygame.surfarray.make_surface(frame.transpose(1, 0, 2))
        if surface.get_size() != (self.width, self.height):
            surface = pygame.transform.scale(surface, (self.width, self.height))
        self._screen.blit(surface, (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        self._pygame.display.quit()
        self._pygame.quit()

"""`worldsim score`: the Crafter score formula, success rates, playing real episodes with the
random agent and a saved agent, and the command's outputs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces
from PIL import Image

from agents.actor_critic import PRESETS, ActorCritic, save_agent
from agents.score import (
    EpisodeResult,
    ScoreConfig,
    ScoreResult,
    crafter_score,
    score_agent,
    success_rates,
    write_outputs,
)

CRAFTER_ACHIEVEMENTS = 22


def test_crafter_score_hand_computed():
    assert crafter_score([0.0] * 22) == pytest.approx(0.0)
    assert crafter_score([100.0] * 22) == pytest.approx(100.0)
    assert crafter_score([50.0] * 22) == pytest.approx(50.0)  # equal rates: the rate itself
    # two achievements, 100 % and 0 %: exp((ln 101 + ln 1) / 2) - 1 = sqrt(101) - 1
    assert crafter_score([100.0, 0.0]) == pytest.approx(math.sqrt(101) - 1)  # 9.0499
    # the geometric mean rewards breadth: 3 rates of 10 % beat one of 30 %
    assert crafter_score([10, 10, 10]) == pytest.approx(10.0)
    assert crafter_score([30, 0, 0]) == pytest.approx(31 ** (1 / 3) - 1)  # 2.1414
    # a random-agent-like profile over 22 achievements, computed by hand:
    # ln(1+s): 90 -> 4.51086, 60 -> 4.11087, 50 -> 3.93183, 5 -> 1.79176, 18 zeros -> 0;
    # sum 14.34532, / 22 = 0.652060, exp -> 1.91949, minus 1 -> 0.91949
    rates = [90, 60, 50, 5] + [0] * 18
    expected = math.exp((math.log(91) + math.log(61) + math.log(51) + math.log(6)) / 22) - 1
    assert expected == pytest.approx(0.91949, abs=1e-5)
    assert crafter_score(rates) == pytest.approx(expected)


def test_crafter_score_rejects_bad_rates():
    with pytest.raises(ValueError, match="percentages"):
        crafter_score([0.5, 120.0])
    with pytest.raises(ValueError, match="at least one"):
        crafter_score([])


def test_success_rates_count_episodes_with_an_unlock():
    episodes = [{"collect_wood": 3, "place_table": 0}, {"collect_wood": 0, "place_table": 1},
                {"collect_wood": 1}, {"collect_wood": 2, "place_table": 0}]
    rates = success_rates(episodes, ["collect_wood", "place_table", "collect_diamond"])
    assert rates == {"collect_wood": 75.0, "place_table": 25.0, "collect_diamond": 0.0}


def test_score_result_summary():
    names = ["a", "b"]
    eps = [EpisodeResult(0, 1.0, 10, True, {"a": 1, "b": 0}),
           EpisodeResult(1, 3.0, 30, False, {"a": 1, "b": 2})]
    result = ScoreResult("random", "env", eps, names)
    s = result.summary()
    assert s["success_rates"] == {"a": 100.0, "b": 50.0}
    assert s["score"] == pytest.approx(math.exp((math.log(101) + math.log(51)) / 2) - 1)
    assert s["return_mean"] == 2.0 and s["return_std"] == 1.0
    assert s["length_mean"] == 20.0 and len(s["per_episode"]) == 2
    assert s["action_shares"] == {}  # no action counts recorded
    eps[0].action_counts, eps[1].action_counts = [9, 1], [21, 9]
    shares = ScoreResult("random", "env", eps, names, ["noop", "do"]).summary()["action_shares"]
    assert shares == pytest.approx({"noop": 75.0, "do": 25.0})


def test_random_agent_on_short_crafter_episodes(tmp_path):
    cfg = ScoreConfig(agent="random", episodes=2, seed=5, max_episode_steps=25, progress=False)
    result = score_agent(cfg)
    assert len(result.episodes) == 2 and result.achievement_names[0] == "collect_coal"
    assert len(result.achievement_names) == CRAFTER_ACHIEVEMENTS
    for ep in result.episodes:
        assert 1 <= ep.length <= 25
        assert set(ep.achievements) == set(result.achievement_names)
        assert len(ep.action_counts) == 17 and sum(ep.action_counts) == ep.length
    assert result.action_names[5] == "do" and sum(result.action_shares.values()) == pytest.approx(100)
    # the reported score is the formula applied to the episodes' own unlocks
    unlocked = [{k: v for k, v in ep.achievements.items()} for ep in result.episodes]
    rates = [100.0 * np.mean([u[name] > 0 for u in unlocked]) for name in result.achievement_names]
    assert result.score == pytest.approx(crafter_score(rates))
    # reproducible given the seed
    again = score_agent(cfg)
    assert [e.episode_return for e in again.episodes] == [e.episode_return for e in result.episodes]
    assert [e.length for e in again.episodes] == [e.length for e in result.episodes]
    write_outputs(result, tmp_path)
    data = json.loads((tmp_path / "score.json").read_text())
    assert data["score"] == pytest.approx(result.score)
    with Image.open(tmp_path / "achievements.png") as image:
        assert image.format == "PNG" and image.height > CRAFTER_ACHIEVEMENTS * 10


@pytest.mark.parametrize("size", [64, 72])
def test_saved_agent_plays_crafter(tmp_path, size):
    """An agent that sees frames of another size (one trained in a dream of Crafter drawn at
    72x72) plays the real game drawn at its size."""
    torch.manual_seed(0)
    model = ActorCritic(PRESETS["tiny"](), spaces.Box(0, 255, (size, size, 3), np.uint8),
                        spaces.Discrete(17))
    save_agent(tmp_path / "agent", model)
    cfg = ScoreConfig(agent=str(tmp_path / "agent"), episodes=1, max_episode_steps=10,
                      progress=False, device="cpu")
    result = score_agent(cfg)
    assert result.episodes[0].length == 10 and result.score is not None


def test_agent_for_another_env_is_refused(tmp_path):
    model = ActorCritic(PRESETS["tiny"](), spaces.Box(-1, 1, (4,), np.float32),
                        spaces.Discrete(17))
    save_agent(tmp_path / "agent", model)
    cfg = ScoreConfig(agent=str(tmp_path / "agent"), episodes=1, max_episode_steps=5,
                      progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"Box\(.*\(64, 64, 3\)"):
        score_agent(cfg)
    with pytest.raises(ValueError, match="neither 'random' nor a saved agent"):
        score_agent(ScoreConfig(agent=str(tmp_path / "nothing"), progress=False))


def test_score_command(tmp_path):
    env = {**os.environ, "WORLDSIM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "worldsim.cli", "score", "--agent", "random", "--episodes", "2",
         "--max-episode-steps", "20", "--seed", "1", "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Crafter score" in proc.stdout and "collect_wood" in proc.stdout
    data = json.loads((tmp_path / "score.json").read_text())
    assert data["episodes"] == 2 and len(data["success_rates"]) == CRAFTER_ACHIEVEMENTS
    assert all(ep["length"] <= 20 for ep in data["per_episode"])
    assert (tmp_path / "achievements.png").exists()

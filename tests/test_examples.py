"""Every example runs as documented: each Python example's `main` on the tiny bundle and its real
Crafter play, with tiny settings and its command line patched (in-process, so the suite pays
for no extra interpreter and torch import), and every shell example parses (`bash -n`).
The examples built on tyro (play_crafter, sb3_ppo_dream, cleanrl_style_dream) run through
`subprocess` in test_play, test_sb3 and test_vector_env."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args, monkeypatch, capsys) -> str:
    """Run examples/NAME.py's main() with `args` as its command line; returns what it printed.
    The module is loaded under another name than __main__, so only main() runs."""
    main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
    capsys.readouterr()
    main()
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def data(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of the tiny bundle's dataset: some examples encode it with the bundle's VAE."""
    return Path(shutil.copytree(tiny_bundle.parent.parent / "data",
                                tmp_path_factory.mktemp("examples") / "data"))


@pytest.fixture(scope="module")
def pay_once_bundle(tiny_bundle, labelled, tmp_path_factory) -> Path:
    from tiny_bundle import make_pay_once_bundle

    return make_pay_once_bundle(tiny_bundle, labelled, tmp_path_factory.mktemp("pay-once"))[0]


def test_every_example_is_covered():
    """A new example needs a test here (or in the test file named in the module docstring)."""
    tested_elsewhere = {"play_crafter", "sb3_ppo_dream", "cleanrl_style_dream"}
    here = Path(__file__).read_text()
    missing = [p.stem for p in EXAMPLES.glob("*.py")
               if p.stem not in tested_elsewhere and f'"{p.stem}"' not in here]
    assert not missing, f"examples without a test: {missing}"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_shell_examples_parse(script):
    result = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def dit_training_argv(call: str) -> list[str]:
    """The `worldsim` command line a function of examples/dit_training.sh builds for `call`."""
    script = (f'worldsim() {{ printf "%s\\n" "$@"; }}; runs=RUNS; '
              f'source "{EXAMPLES / "dit_training.sh"}"; {call}')
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.parametrize("call, steps, minutes, lr_schedule, noise_shift, dropout", [
    ("train_dit DATA OUT 2900steps cosine --action-dropout 0.1 --noise-shift 1.5",
     2900, 600, "cosine", 1.5, 0.1),
    ("train_dit DATA OUT 90 constant", 100000, 90, "constant", 0.0, 0.0),
    ("fine_tune_dynamics DATA OUT INIT 1500steps 1 --noise-shift -1.5",
     1500, 600, "constant", -1.5, 0.1),
    ("fine_tune_dynamics DATA OUT INIT 35 2", 100000, 35, "constant", 0.0, 0.1),
])
def test_dit_training_builds_commands_the_cli_accepts(call, steps, minutes, lr_schedule,
                                                      noise_shift, dropout):
    """The shared DiT training functions of the reproduce scripts: a budget of `Nsteps` is a
    step count (the same weights on any machine), a plain number is minutes, and every option
    they pass is one `worldsim train dynamics` parses."""
    import tyro

    from worldsim.training.train_dynamics import TrainDynamicsConfig

    argv = dit_training_argv(call)
    assert argv[:2] == ["train", "dynamics"]
    cfg = tyro.cli(TrainDynamicsConfig, args=argv[2:])
    assert (cfg.train.steps, cfg.train.time_limit_min) == (steps, minutes)
    assert cfg.train.lr_schedule == lr_schedule and cfg.noise_shift == noise_shift
    assert cfg.action_dropout == dropout and cfg.vae == Path("RUNS/vae-f4")
    assert (cfg.init_from == Path("INIT")) == call.startswith("fine_tune_dynamics")


def test_action_gain(tiny_bundle, data, monkeypatch, capsys):
    out = json.loads(run_example("action_gain", "--checkpoint", tiny_bundle, "--data", data,
                                 "--windows", 4, "--seeds", 1, "--threads", 1,
                                 monkeypatch=monkeypatch, capsys=capsys))
    assert out["windows"] >= 2 and math.isfinite(out["action_gain"])


def test_agent_through_world_model(tiny_bundle, monkeypatch, capsys):
    out = json.loads(run_example("agent_through_world_model", "--checkpoint", tiny_bundle,
                                 "--agent", "random", "--episodes", 1,
                                 monkeypatch=monkeypatch, capsys=capsys))
    for run in ("real_frames", "through_world_model"):
        assert 0 <= out[run]["score"] <= 100


def test_compare_scores(tmp_path, monkeypatch, capsys):
    from agents.score import main as score

    for name in ("a-s0", "a-s1", "b-s0"):
        score(["--agent", "random", "--episodes", "1", "--seed", name[-1],
               "--out", str(tmp_path / name)])
    summary = tmp_path / "summary.json"
    out = run_example("compare_scores", f"a={tmp_path}/a-s*", f"b={tmp_path}/b-s*",
                      "--json", summary, monkeypatch=monkeypatch, capsys=capsys)
    written = json.loads(summary.read_text())
    assert written["a"]["seeds"] == 2 and written["b"]["seeds"] == 1
    assert "| a | 2 | 2 |" in out
    pooled = run_example("compare_scores", "--pool", f"a={tmp_path}/a-s*",
                         monkeypatch=monkeypatch, capsys=capsys)
    assert "| a | 2 | 2 |" in pooled  # two agent seeds, one directory each
    with pytest.raises(SystemExit, match="LABEL=GLOB"):
        run_example("compare_scores", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)


def test_day_night(tiny_bundle, data, monkeypatch, capsys):
    out = json.loads(run_example("day_night", "--checkpoint", tiny_bundle, "--data", data,
                                 "--steps", 4, "--dreams", 1, "--window", 2, "--threads", 1,
                                 monkeypatch=monkeypatch, capsys=capsys))
    assert out["dreams"] == 1 and len(out["rows"]) == 2
    assert all(0 <= row["dream_grey"] <= 255 for row in out["rows"])


def test_dream_payments(pay_once_bundle, labelled, tiny_bundle, monkeypatch, capsys):
    out = json.loads(run_example("dream_payments", "--checkpoint", pay_once_bundle,
                                 "--steps", 6, "--num-envs", 2, "--bucket", 3, "--threads", 1,
                                 "--fp32", "--data", labelled,
                                 monkeypatch=monkeypatch, capsys=capsys))
    dream, real = out["dream"], out["real"]
    assert len(dream["reward_per_step"]["achievements"]) == 2  # 6 steps in buckets of 3
    assert dream["episodes"] == 2 and 0 <= dream["terminations"] <= 2
    assert all(v >= 0 for v in dream["new_unlocks"].values())
    assert sum(dream["actions"].values()) <= 1 + 1e-9
    assert len(real["health_reward_per_step"]) == 2 and real["episodes"] >= 1
    with pytest.raises(SystemExit, match="does not pay achievements once"):
        run_example("dream_payments", "--checkpoint", tiny_bundle, "--steps", 2,
                    "--num-envs", 1, "--threads", 1, monkeypatch=monkeypatch, capsys=capsys)


def test_dream_reward_by_action(tiny_bundle, monkeypatch, capsys):
    import envs  # noqa: F401  (registers worldsim/*)
    from worldsim.world_model import WorldModel

    out = json.loads(run_example("dream_reward_by_action", "--checkpoint", tiny_bundle,
                                 "--num-envs", 2, "--horizon", 2,
                                 monkeypatch=monkeypatch, capsys=capsys))
    names = WorldModel.load(tiny_bundle).action_names
    assert set(out) == {*names, "random"} and all(math.isfinite(v) for v in out.values())


def test_event_drawing(tiny_bundle, data, tmp_path, monkeypatch, capsys):
    from worldsim.data.store import EpisodeStore

    store = EpisodeStore(data)
    earned = sum(int((np.asarray(store.load(n).rewards) > 0.5).sum()) for n in store.split("val"))
    args = ("--checkpoint", tiny_bundle, "--data", data, "--steps", 1, "--max-transitions", 4,
            "--strip", tmp_path / "strip.png")
    if not earned:  # the tiny play may hold no achievement in its held-out episodes
        with pytest.raises(SystemExit, match="no held-out transition earned an achievement"):
            run_example("event_drawing", *args, monkeypatch=monkeypatch, capsys=capsys)
        return
    out = json.loads(run_example("event_drawing", *args, monkeypatch=monkeypatch, capsys=capsys))
    assert out["transitions"] == min(earned, 4) and (tmp_path / "strip.png").exists()
    assert out["bar_change_real"] >= 0 and "1" in out["bar_change_dream"]


def test_latent_scroll(tiny_bundle, data, monkeypatch, capsys):
    out = run_example("latent_scroll", "--checkpoint", tiny_bundle, "--data", data,
                      "--scrolls", 4, "--threads", 1, monkeypatch=monkeypatch, capsys=capsys)
    # one line of counts, then the error for each slide of 0, 1 and 2 latent cells
    lines = out.strip().splitlines()
    assert "one-tile scrolls" in lines[0] and len(lines) == 4
    assert [line.split("slid by ")[1][0] for line in lines[1:]] == ["0", "1", "2"]


def test_loss_by_noise_level(tiny_bundle, data, monkeypatch, capsys):
    out = json.loads(run_example("loss_by_noise_level", "--checkpoints", tiny_bundle,
                                 "--data", data, "--levels", 0.1, 1.0, "--windows", 4,
                                 "--seeds", 1, "--threads", 1,
                                 monkeypatch=monkeypatch, capsys=capsys))
    levels = out["models"][str(tiny_bundle)]["levels"]
    assert set(levels) == {"0.1", "1.0"} and all(math.isfinite(v["loss"]) for v in levels.values())
    assert levels["0.1"]["train_share_at_or_below"] < levels["1.0"]["train_share_at_or_below"]


def test_out_and_back_tiles(tiny_bundle, data, monkeypatch, capsys):
    try:
        out = run_example("out_and_back_tiles", "--checkpoint", tiny_bundle, "--data", data,
                          "--starts", 4, "--ks", 1, "--context", 2, "--threads", 1,
                          monkeypatch=monkeypatch, capsys=capsys)
    except SystemExit as refused:  # too few clean walks in the tiny play: the reason is named
        assert "cannot run the out-and-back walks" in str(refused)
        return
    # per clean walk direction: one line per rollout kind, one error per tile line
    blocks = out.split("k=1 ")[1:]
    assert blocks, out  # the tiny play (seeded) holds clean walks
    for block in blocks:
        rows = block.strip().splitlines()[1:]
        assert [r.split()[0] for r in rows] == ["dream", "forgetful", "real"]
        assert all(len(r.split()[-9:]) == 9 for r in rows)


def test_unlock_prerequisites(pay_once_bundle, labelled, tiny_bundle, monkeypatch, capsys):
    out = json.loads(run_example("unlock_prerequisites", "--checkpoint", pay_once_bundle,
                                 "--data", labelled, "--threads", 1,
                                 monkeypatch=monkeypatch, capsys=capsys))
    cases = {k: v for k, v in out.items() if isinstance(v, dict)}
    assert len(cases) == 8 and all(set(c) == {"needs", "prerequisite_taken",
                                              "prerequisite_not_taken"} for c in cases.values())
    for case in (c[k] for c in cases.values() for k in ("prerequisite_taken",
                                                          "prerequisite_not_taken")):
        if case["presses"]:
            assert all(0 <= case[k] <= 1 for k in ("real_unlock_rate", "mean_probability",
                                                   "share_above_0.05"))
    with pytest.raises(SystemExit, match="does not pay achievements once"):
        run_example("unlock_prerequisites", "--checkpoint", tiny_bundle, "--data", labelled,
                    "--threads", 1, monkeypatch=monkeypatch, capsys=capsys)


def test_vae_round_trips(tiny_bundle, data, tmp_path, monkeypatch, capsys):
    png = tmp_path / "trips.png"
    out = json.loads(run_example("vae_round_trips", "--vae", tiny_bundle / "vae",
                                 "--data", data, "--frames", 4, "--trips", 1, 2,
                                 "--labels", "tiny", "--out", png,
                                 monkeypatch=monkeypatch, capsys=capsys))
    trips = out["round_trips"]["tiny"]
    assert out["frames"] == 4 and set(trips) == {"1", "2"} and png.exists()
    assert all(0 <= t["mae"] <= 255 for t in trips.values())

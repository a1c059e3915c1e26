"""The `worldsim` command: its usage, its refusal of unknown commands, and the commands whose
other tests build their parts from config objects (`train reward`, `train refiner`,
`data label-achievements`), run here through the dispatcher with their own argument parsing
on the tiny bundle, in-process. The other commands run through `python -m worldsim.cli` in
the test file of the module that does their work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from worldsim.cli import COMMANDS, main

# train options that keep a run tiny and quiet
TINY_TRAIN = ["--train.eval-every", "0", "--train.checkpoint-every", "0", "--train.threads", "1",
              "--train.no-progress", "--train.no-bf16"]


def test_usage_lists_every_command(capsys):
    main([])
    usage = capsys.readouterr().out
    assert all(f"  {name}  " in usage for name in COMMANDS)


def test_an_unknown_command_names_itself_and_the_usage():
    with pytest.raises(SystemExit, match="unknown command 'train policy'") as refused:
        main(["train", "policy"])
    assert "train dynamics" in str(refused.value)


def test_data_label_achievements(tiny_bundle, tmp_path, capsys):
    from worldsim.data.achievements import load_labels
    from worldsim.data.store import EpisodeStore

    data = Path(shutil.copytree(tiny_bundle.parent.parent / "data", tmp_path / "data"))
    main(["data", "label-achievements", str(data), "--no-progress"])
    store = EpisodeStore(data)
    labels = [load_labels(store, name) for name in store.names]
    assert len(labels) == len(store.names) and all(len(x) for x in labels)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["labelled"] == len(labels)
    main(["data", "label-achievements", str(data), "--no-progress"])  # resumable: all skipped
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == len(labels)


def test_train_reward_then_bundle(tiny_bundle, tmp_path):
    from worldsim.world_model import WorldModel

    root = tiny_bundle.parent.parent
    main(["train", "reward", "--data", str(root / "data"), "--vae", str(root / "run-vae"),
          "--out", str(tmp_path / "reward"), "--width", "8", "--eval-plain", "16",
          "--train.steps", "3", "--train.batch-size", "8", *TINY_TRAIN])
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "reward" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3
    main(["bundle", "--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
          "--data", str(root / "data"), "--reward", str(tmp_path / "reward"),
          "--num-contexts", "4", "--context-frames", "2", "--out", str(tmp_path / "bundle")])
    assert WorldModel.load(tmp_path / "bundle").reward_model is not None


def test_train_refiner(tiny_bundle, tmp_path):
    from worldsim.world_model import WorldModel

    root = tiny_bundle.parent.parent
    main(["train", "refiner", "--data", str(root / "data"), "--checkpoint", str(tiny_bundle),
          "--out", str(tmp_path / "refiner"), "--pool", "8", "--val-pool", "4", "--width", "8",
          "--blocks", "1", "--train.steps", "2", "--train.batch-size", "4", *TINY_TRAIN])
    main(["bundle", "--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
          "--data", str(root / "data"), "--refiner", str(tmp_path / "refiner"),
          "--num-contexts", "4", "--context-frames", "2", "--out", str(tmp_path / "bundle")])
    assert WorldModel.load(tmp_path / "bundle").refiner is not None

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from worldsim.models.vae import VAE, VAEConfig
from worldsim.training.checkpoint import (
    CheckpointError,
    dataclass_from_dict,
    flatten_optimizer_state,
    load_checkpoint,
    load_state_dict_strict,
    recorded_path,
    save_checkpoint,
    tensors_fingerprint,
    unflatten_optimizer_state,
)

TINY = VAEConfig(factor=4, latent_channels=3, channels=(8, 16), groups=4)


def _edit_config(directory, change):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_round_trip_and_atomic_overwrite(tmp_path):
    d = tmp_path / "ckpt"
    tensors = {"model": {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)},
               "extra": {"step": torch.tensor(7)}}
    save_checkpoint(d, {"name": "x", "nested": {"a": [1, 2]}}, tensors)
    config, loaded = load_checkpoint(d)
    assert config == {"name": "x", "nested": {"a": [1, 2]}}
    assert set(loaded) == {"model", "extra"}
    assert torch.equal(loaded["model"]["w"], tensors["model"]["w"])
    assert loaded["model"]["b"].dtype == torch.bfloat16
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "extra.safetensors",
                                                   "model.safetensors"]
    # overwrite: the new content replaces the old, no temporary directory is left behind
    save_checkpoint(d, {"name": "y"}, {"model": {"w": torch.zeros(1)}})
    config, loaded = load_checkpoint(d)
    assert config["name"] == "y" and set(loaded) == {"model"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    save_checkpoint(tmp_path / "c", {}, {"g": {"a": base, "b": base, "t": base.t()}})
    _, loaded = load_checkpoint(tmp_path / "c")
    assert torch.equal(loaded["g"]["b"], base) and torch.equal(loaded["g"]["t"], base.t())


def test_damaged_or_foreign_files_are_named(tmp_path):
    d = tmp_path / "c"
    save_checkpoint(d, {}, {"model": {"w": torch.ones(3)}})
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the SHA-256"):
        load_checkpoint(d)

    save_checkpoint(d, {}, {"model": {"w": torch.ones(3)}})
    (d / "stray.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="stray.safetensors"):
        load_checkpoint(d)

    (d / "stray.safetensors").unlink()
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_strict_state_dict_names_each_mismatch():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    good = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "1.bias"}
    with pytest.raises(CheckpointError, match=r"missing key '1\.bias'"):
        load_state_dict_strict(model, missing, "file.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra'"):
        load_state_dict_strict(model, {**good, "extra": torch.zeros(1)}, "file.safetensors")
    wrong = {**good, "0.weight": torch.zeros(4, 2)}
    with pytest.raises(CheckpointError, match=r"file\.safetensors.*shape mismatch for "
                                              r"'0\.weight': checkpoint \(4, 2\), model \(3, 2\)"):
        load_state_dict_strict(model, wrong, "file.safetensors")


def test_vae_checkpoint_round_trip_and_strict_loading(tmp_path):
    torch.manual_seed(0)
    vae = VAE(TINY)
    vae.latent_scale.fill_(2.0)
    vae.save(tmp_path / "vae", metrics={"psnr": 1.0})
    loaded = VAE.from_checkpoint(tmp_path / "vae")
    assert loaded.cfg == TINY and loaded.fingerprint() == vae.fingerprint()
    z = torch.randn(1, 3, 4, 4)
    assert torch.equal(loaded.decode_frames(z), vae.eval().decode_frames(z))

    # wrong config: a field this code does not know
    _edit_config(tmp_path / "vae", lambda c: c["vae"].update(dropout=0.1))
    with pytest.raises(CheckpointError, match="unknown field.*dropout"):
        VAE.from_checkpoint(tmp_path / "vae")
    # wrong config: a mistyped field
    vae.save(tmp_path / "vae")
    _edit_config(tmp_path / "vae", lambda c: c["vae"].update(factor="4"))
    with pytest.raises(CheckpointError, match=r"VAEConfig\.factor: expected int"):
        VAE.from_checkpoint(tmp_path / "vae")
    # wrong config: a config that disagrees with the weights (more latent channels)
    vae.save(tmp_path / "vae")
    _edit_config(tmp_path / "vae", lambda c: c["vae"].update(latent_channels=4))
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'encoder\.out\.weight'"):
        VAE.from_checkpoint(tmp_path / "vae")
    # a checkpoint of something else
    save_checkpoint(tmp_path / "other", {"kind": "dynamics"}, {"model": {}})
    with pytest.raises(CheckpointError, match="does not describe a VAE"):
        VAE.from_checkpoint(tmp_path / "other")


def test_dataclass_from_dict_missing_field():
    with pytest.raises(CheckpointError, match="missing field.*latent_channels"):
        dataclass_from_dict(VAEConfig, {"factor": 4, "channels": [8, 16], "encoder_blocks": 1,
                                        "decoder_blocks": 1, "groups": 4, "stem_factor": 2},
                            "test")
    cfg = dataclass_from_dict(VAEConfig, json.loads(json.dumps(TINY.__dict__)), "test")
    assert cfg == TINY and isinstance(cfg.channels, tuple)


def test_optimizer_state_survives_flattening():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    rest = json.loads(json.dumps(rest))  # it must survive JSON
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from a file
    copy = nn.Linear(4, 2)
    copy.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(copy.parameters(), lr=1e-2)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, rest))
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (copy, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert tensors_fingerprint(model.state_dict()) == tensors_fingerprint(copy.state_dict())


def test_recorded_paths_name_no_machine_directory_inside_the_checkout(tmp_path, monkeypatch):
    inside = tmp_path / "work"
    (inside / "runs" / "vae").mkdir(parents=True)
    monkeypatch.chdir(inside)
    assert recorded_path("runs/vae") == str(Path("runs/vae"))
    assert recorded_path(inside / "runs" / "vae") == str(Path("runs/vae"))
    assert recorded_path("runs/../runs/vae") == str(Path("runs/vae"))
    outside = tmp_path / "elsewhere"
    assert recorded_path(outside) == str(outside.resolve())

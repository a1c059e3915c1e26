"""The frame refiner: its blend, its training run, and a bundle that carries it through the
world model, the envs and the evaluation."""

import json

import numpy as np
import pytest
import torch

from worldsim.models.refiner import FrameRefiner, RefinerConfig
from worldsim.models.vae import frames_to_images, images_to_frames
from worldsim.training.checkpoint import CheckpointError


def _frames(seed: int, n: int = 3, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def test_fresh_refiner_shows_nearly_the_plain_decode():
    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4)).eval()
    decoded, previous, previous_decoded = _frames(0), _frames(1), _frames(2)
    out = refiner.refine(decoded, previous, previous_decoded)
    assert out.shape == decoded.shape and out.dtype == torch.uint8
    # mask starts at sigmoid(-4) = 0.018: at most 0.018 * 255 = 4.6 levels from the decode
    assert (out.int() - decoded.int()).abs().max() <= 5


def test_a_full_copy_mask_returns_the_previous_frame_exactly():
    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4)).eval()
    with torch.no_grad():
        refiner.out.bias.view(4, -1)[0] = 40.0  # mask logit: sigmoid = 1 in float32
    previous = _frames(1)
    assert torch.equal(refiner.refine(_frames(0), previous, _frames(2)), previous)


def test_the_refiner_reads_its_inputs_in_the_shipped_order():
    """A refiner without copy_shift is the network the shipped checkpoints were trained as:
    inputs (decoded_next, previous_frame, previous_decoded), a sigmoid copy mask and a
    residual."""
    import torch.nn.functional as F
    from einops import rearrange

    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4)).eval()
    with torch.no_grad():
        for param in refiner.parameters():
            param.normal_(std=0.1)
    a, b, c = (frames_to_images(f) for f in (_frames(0), _frames(1), _frames(2)))
    with torch.no_grad():
        x = rearrange(torch.cat([a, b, c], 1), "b k (h p) (w q) -> b (k p q) h w", p=2, q=2)
        h = refiner.out(F.silu(refiner.body(refiner.inp(x))))
        h = rearrange(h, "b (k p q) h w -> b k (h p) (w q)", p=2, q=2)
        mask = torch.sigmoid(h[:, :1])
        expected = mask * b + (1 - mask) * (a + h[:, 1:])
        torch.testing.assert_close(refiner(a, b, c), expected)


def test_the_drawn_frame_keeps_learning_when_the_blend_copies_everywhere():
    """A blend saturated on the copy passes no gradient to the residual; the drawn frame's own
    loss term (TrainRefinerConfig.drawn_weight) still does."""
    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4))
    with torch.no_grad():
        refiner.out.bias.view(4, -1)[0] = 40.0  # copy mask saturated at 1
    frames = [frames_to_images(_frames(seed)) for seed in range(4)]
    shown, drawn, _, _ = refiner(*frames[:3], with_parts=True)
    torch.testing.assert_close(shown, frames[1])  # an exact copy of the previous frame
    (shown - frames[3]).pow(2).mean().backward(retain_graph=True)
    through_blend = refiner.out.bias.grad.view(4, -1)[1:].abs().max()  # the residual's bias
    refiner.zero_grad()
    (drawn - frames[3]).pow(2).mean().backward()
    own_term = refiner.out.bias.grad.view(4, -1)[1:].abs().max()
    assert through_blend < 1e-15 < 1e-3 < own_term


def test_the_gate_loss_moves_a_saturated_blend_towards_the_right_copy():
    """A blend saturated on the undisplaced copy, where the real next frame is the previous
    one scrolled by a tile: the blended frame's loss gives the displaced copy no gradient,
    the gate's cross-entropy does, and it raises that copy's logit."""
    from worldsim.training.train_refiner import RefinerTask

    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4, copy_shift=7))
    with torch.no_grad():
        refiner.out.bias.view(8, -1)[0] = 40.0  # the undisplaced copy wins everywhere
    frames = [frames_to_images(_frames(seed, n=2, size=28)) for seed in range(3)]
    scrolled = torch.roll(frames[1], shifts=7, dims=-1)  # content moved right by one tile
    parts = refiner(frames[0], frames[1], frames[2], with_parts=True)
    (parts.shown - scrolled).pow(2).mean().backward(retain_graph=True)
    assert refiner.out.bias.grad.view(8, -1)[2].abs().max() < 1e-15  # source 2: moved right
    refiner.zero_grad()
    RefinerTask.gate_loss(parts, scrolled).backward()
    assert (refiner.out.bias.grad.view(8, -1)[2] < -1e-3).all()  # descent raises its logit


def test_a_hard_blend_takes_every_pixel_from_one_source():
    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4, copy_shift=7)).eval()
    with torch.no_grad():  # random logits, so the sources' weights differ from pixel to pixel
        torch.nn.init.normal_(refiner.out.weight, std=0.5)
    frames = [frames_to_images(_frames(seed, n=2, size=28)) for seed in range(3)]
    with torch.no_grad():
        soft = refiner(*frames)
        parts = refiner(*frames, with_parts=True)
        refiner.hard_blend = True
        hard = refiner(*frames)
    torch.testing.assert_close(soft, parts.shown)
    sources = torch.cat([parts.copies, parts.drawn[:, None]], 1)  # (B, S + 1, 3, H, W)
    pick = parts.logits.argmax(1)                                  # (B, H, W)
    expected = sources.gather(1, pick[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
    torch.testing.assert_close(hard, expected)
    assert len(pick.unique()) > 1 and not torch.allclose(hard, soft)


def test_displaced_moves_the_content_and_fills_the_uncovered_band():
    from worldsim.models.refiner import displaced, shifts

    frame = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    fill = torch.full_like(frame, -1.0)
    right = displaced(frame, 0, 3, fill)
    assert torch.equal(right[..., 3:], frame[..., :5]) and (right[..., :3] == -1).all()
    up = displaced(frame, -2, 0, fill)
    assert torch.equal(up[..., :6, :], frame[..., 2:, :]) and (up[..., 6:, :] == -1).all()
    assert set(shifts(7)) == {(0, -7), (0, 7), (-7, 0), (7, 0)}


def test_a_copy_shift_refiner_can_copy_the_previous_frame_scrolled_by_one_tile():
    """With copy_shift, a mask on one displaced source returns the previous frame scrolled
    by exactly that many pixels (the uncovered band from the decode): what a Crafter move
    does to the map. A fresh one still shows nearly the plain decode."""
    from worldsim.models.refiner import displaced

    cfg = RefinerConfig(width=16, blocks=1, groups=4, copy_shift=4)
    assert cfg.copy_sources == 5
    refiner = FrameRefiner(cfg).eval()
    decoded, previous, previous_decoded = _frames(0), _frames(1), _frames(2)
    fresh = refiner.refine(decoded, previous, previous_decoded)
    # five copy logits at -4: together 5 e^-4 / (1 + 5 e^-4) = 8% of the blend
    assert (fresh.int() - decoded.int()).abs().float().mean() < 0.1 * 255
    with torch.no_grad():
        refiner.out.bias.view(cfg.copy_sources + 3, -1)[2] = 40.0  # the source moved right
    out = refiner.refine(decoded, previous, previous_decoded)
    expected = displaced(previous.permute(0, 3, 1, 2), 0, 4, decoded.permute(0, 3, 1, 2))
    assert torch.equal(out, expected.permute(0, 2, 3, 1))


def test_refiner_configs_from_before_copy_shift_load_without_it():
    from worldsim.training.checkpoint import dataclass_from_dict

    old = {"width": 64, "blocks": 4, "patch": 2, "groups": 8}
    assert dataclass_from_dict(RefinerConfig, old, "refiner config").copy_shift == 0


def test_frames_round_trip_between_uint8_and_float():
    frames = _frames(3)
    x = frames_to_images(frames)
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(images_to_frames(x), frames)


def test_odd_frame_sizes_are_refused_with_the_patch_named():
    refiner = FrameRefiner(RefinerConfig(width=16, blocks=1, groups=4))
    x = torch.zeros(1, 3, 15, 16)
    with pytest.raises(ValueError, match="patch 2"):
        refiner(x, x, x)


def test_train_refiner_then_bundle_uses_it(tiny_bundle, tmp_path):
    from tiny_bundle import tiny_train

    from envs.world_model_env import WorldModelEnv
    from worldsim.models.refiner import load_refiner
    from worldsim.training.loop import setup, train
    from worldsim.training.train_refiner import RefinerTask, TrainRefinerConfig
    from worldsim.world_model import WorldModel, build_bundle
    from worldsim.world_model import main as bundle_main

    root = tiny_bundle.parent.parent  # root/run-dyn/bundle
    cfg = TrainRefinerConfig(data=root / "data", checkpoint=tiny_bundle,
                             out=tmp_path / "run-refiner", context=2, pool=48, val_pool=16,
                             width=16, blocks=1, train=tiny_train(40, 8))
    cfg.train.eval_every = 40
    ctx = setup(cfg.train)
    task = RefinerTask(cfg, ctx.device)
    batch = task.sample_batch(np.random.default_rng(0), 16)
    with torch.no_grad():
        before = float(task.loss(task.model, batch)[0])
    result = train(task, cfg.train, cfg.out, ctx)
    with torch.no_grad():
        after = float(task.loss(load_refiner(cfg.out)[0], batch)[0])
    assert after < before
    assert {"step1_psnr_changed_refined", "step1_psnr_changed_decoded",
            "step2_psnr_changed_copy_last"} <= set(result.metrics)
    assert (cfg.out / "pool" / "config.json").exists()  # sampled once, kept for a resume

    # a pool sampled with other settings is not silently reused
    other = TrainRefinerConfig(data=cfg.data, checkpoint=cfg.checkpoint, out=cfg.out,
                               context=2, pool=40, val_pool=16, width=16, blocks=1,
                               train=cfg.train)
    with pytest.raises(CheckpointError, match="other settings"):
        RefinerTask(other, ctx.device)._pool("train")

    bundle_main(["--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
                 "--data", str(root / "data"), "--refiner", str(cfg.out), "--num-contexts", "2",
                 "--context-frames", "2", "--out", str(tmp_path / "bundle")])
    wm = WorldModel.load(tmp_path / "bundle")
    assert wm.refiner is not None

    # a reset shows the real start frame; a step shows the refiner's frame
    env = WorldModelEnv(wm)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, wm.start_frames[info["context_index"], -1])
    obs, *_ = env.step(1)
    latents = env._sim.state.last_latents
    decoded = wm.decode(latents)[0].cpu().numpy()
    assert obs.shape == decoded.shape and not np.array_equal(obs, decoded)
    # snapshots keep what is shown, so a restored env replays the same frames
    snap = env.get_state()
    first, *_ = env.step(2)
    env.set_state(snap)
    again, *_ = env.step(2)
    np.testing.assert_array_equal(first, again)

    # with feedback the rollout continues from the encoding of the frame it shows
    bundle_main(["--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
                 "--data", str(root / "data"), "--refiner", str(cfg.out), "--num-contexts", "2",
                 "--context-frames", "2", "--feedback", "--out", str(tmp_path / "bundle-fb")])
    fed = WorldModel.load(tmp_path / "bundle-fb")
    assert fed.feedback and not wm.feedback
    frames = torch.as_tensor(fed.start_frames[:, :2])
    latents = fed.encode(frames)
    actions = {k: v[:, :1] for k, v in fed.start_actions.items()}
    step_actions = {"action": np.array([1, 3])}
    outs = {}
    for name, model in (("plain", wm), ("feedback", fed)):
        shown = model.render_start(frames[:, -1], latents[:, -1])
        state = model.start(latents, actions, torch.Generator().manual_seed(0))
        outs[name] = model.step(state, step_actions, torch.Generator().manual_seed(1),
                                shown=shown)
    plain, fb = outs["plain"], outs["feedback"]
    # the same sample, shown the same way (the refiner's frame)...
    torch.testing.assert_close(fb.decoded, plain.decoded)
    torch.testing.assert_close(fb.shown.frames, plain.shown.frames)
    torch.testing.assert_close(plain.shown.frames,
                               wm.render(plain.latents, shown, plain.decoded).frames)
    # ...but the feedback rollout continues from the shown frame, the plain one from the decode
    torch.testing.assert_close(fb.latents, fed.encode(fb.shown.frames))
    torch.testing.assert_close(plain.latents, wm.encode(plain.decoded))
    assert not torch.allclose(fb.latents, plain.latents)
    bundle_main(["--vae", str(root / "run-vae"), "--dynamics", str(root / "run-dyn"),
                 "--data", str(root / "data"), "--refiner", str(cfg.out), "--num-contexts", "2",
                 "--context-frames", "2", "--refiner-blend", "hard",
                 "--out", str(tmp_path / "bundle-hard")])
    assert WorldModel.load(tmp_path / "bundle-hard").refiner.hard_blend
    assert not wm.refiner.hard_blend
    with pytest.raises(ValueError, match="needs a refiner"):
        build_bundle(tmp_path / "bundle4", vae_checkpoint=root / "run-vae",
                     dynamics_checkpoint=tiny_bundle / "dynamics", data=root / "data",
                     num_contexts=2, context_frames=2, refiner_blend="hard")
    with pytest.raises(ValueError, match="needs a refiner"):
        build_bundle(tmp_path / "bundle3", vae_checkpoint=root / "run-vae",
                     dynamics_checkpoint=tiny_bundle / "dynamics", data=root / "data",
                     num_contexts=2, context_frames=2, feedback=True)

    # the evaluation reports the dream with and without the refiner
    from worldsim.evaluation import report

    report.main(["--checkpoint", str(tmp_path / "bundle"), "--data", str(root / "data"),
                 "--parts", "teacher_forced", "open_loop", "--quick", "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "dream_decoded" in metrics["teacher_forced"]
    assert "no frame refiner" in (tmp_path / "eval" / "report.md").read_text()

    # a refiner trained on another VAE's decodes does not go into this bundle
    from worldsim.training.checkpoint import save_checkpoint

    refiner = FrameRefiner(RefinerConfig(width=8, blocks=1, groups=4))
    save_checkpoint(tmp_path / "other", {"kind": "refiner", "refiner": refiner.cfg.to_dict(),
                                         "vae_fingerprint": "0" * 16},
                    {"model": refiner.state_dict()})
    with pytest.raises(CheckpointError, match="latents of VAE"):
        build_bundle(tmp_path / "bundle2", vae_checkpoint=root / "run-vae",
                     dynamics_checkpoint=tiny_bundle / "dynamics", data=root / "data",
                     num_contexts=2, context_frames=2, refiner_checkpoint=tmp_path / "other")

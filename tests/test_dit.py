import pytest
import torch

from worldsim.models.dit import DIT_PRESETS, Conditioning, DiT, DiTConfig, dit_tiny
from worldsim.models.transformer import (
    MaskedAttention,
    SpacetimeRotary,
    TeacherForcingAttention,
    apply_rotary,
    block_causal_mask,
    teacher_forcing_frame_mask,
    token_mask,
)


def randomized(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def run(net, x, seed=0):
    B, T = x.shape[:2]
    g = torch.Generator().manual_seed(seed)
    c_noise = torch.randn(B, T, generator=g)
    emb = torch.randn(B, T, net.config.width, generator=g)
    previous = torch.randn(x.shape, generator=g)
    return net(x, c_noise, Conditioning(emb, previous=previous))


@pytest.mark.parametrize("channels,h,w,p", [(4, 16, 16, 2), (4, 8, 12, 2), (8, 16, 8, 4),
                                            (3, 6, 10, 1), (4, 32, 32, 2)])
def test_patchify_round_trip(channels, h, w, p):
    net = DiT(dit_tiny(in_channels=channels, patch_size=p))
    x = torch.randn(2, 3, channels, h, w)
    tokens = net.patchify(x)
    assert tokens.shape == (2, 3, (h // p) * (w // p), channels * p * p)
    assert torch.equal(net.unpatchify(tokens, h, w), x)
    # A token holds one p x p patch: token 1 is the patch right of the top-left one.
    assert torch.equal(tokens[0, 0, 1], x[0, 0, :, :p, p:2 * p].reshape(-1))


def test_patchify_rejects_bad_shapes():
    net = DiT(dit_tiny())
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        net.patchify(torch.zeros(1, 1, 4, 7, 8))
    with pytest.raises(ValueError, match="expects 4 latent channels, got 3"):
        net.patchify(torch.zeros(1, 1, 3, 8, 8))


@pytest.mark.parametrize("preset", sorted(DIT_PRESETS))
def test_fresh_dit_outputs_zeros(preset):
    net = DiT(DIT_PRESETS[preset]())
    out = run(net, torch.randn(2, 3, 4, 8, 8))
    assert out.shape == (2, 3, 4, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))


def test_initialize_weights_restores_zero_output():
    net = randomized(DiT(dit_tiny()))
    x = torch.randn(1, 2, 4, 8, 8)
    assert run(net, x).abs().max() > 0
    net.initialize_weights()
    assert torch.equal(run(net, x), torch.zeros(1, 2, 4, 8, 8))


def test_presets_grow():
    sizes = {k: sum(p.numel() for p in DiT(f()).parameters()) for k, f in DIT_PRESETS.items()}
    assert sizes["tiny"] < sizes["XS"] < sizes["S"] < sizes["M"]
    assert 3e6 < sizes["S"] < 8e6 and 10e6 < sizes["M"] < 25e6
    assert DiTConfig().width == DIT_PRESETS["S"]().width  # the default is "S"


def test_block_causal_in_time_and_banded_by_the_window():
    """One layer: perturbing frame 3 changes frames 3 .. 3+W-1 and nothing else."""
    net = randomized(DiT(dit_tiny(depth=1, window=3)))
    x = torch.randn(1, 8, 4, 8, 8)
    base = run(net, x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    changed = (run(net, x2) - base).abs().flatten(2).amax(-1)[0] > 1e-6
    assert changed.tolist() == [False, False, False, True, True, True, False, False]


def test_mask_layout():
    mask = block_causal_mask(3, 2, window=2)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 1],
                             [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert block_causal_mask(1, 4, window=2) is None


def test_actions_and_noise_levels_condition_each_frame():
    net = randomized(DiT(dit_tiny()))
    x, previous = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 4, 8, 8)
    c_noise, emb = torch.randn(1, 3), torch.randn(1, 3, 64)
    base = net(x, c_noise, Conditioning(emb, previous=previous))
    emb2 = emb.clone()
    emb2[:, 2] += 1
    out = net(x, c_noise, Conditioning(emb2, previous=previous))
    assert torch.equal(out[:, :2], base[:, :2]) and not torch.allclose(out[:, 2], base[:, 2])
    c2 = c_noise.clone()
    c2[:, 1] += 1
    out = net(x, c2, Conditioning(emb, previous=previous))
    assert torch.equal(out[:, :1], base[:, :1]) and not torch.allclose(out[:, 1], base[:, 1])
    # each frame reads the frame before it through its own patches
    previous2 = previous.clone()
    previous2[:, 1] += 1
    out = net(x, c_noise, Conditioning(emb, previous=previous2))
    assert torch.equal(out[:, :1], base[:, :1]) and not torch.allclose(out[:, 1], base[:, 1])
    with pytest.raises(ValueError, match="previous frame"):
        net(x, c_noise, Conditioning(emb))


@pytest.mark.parametrize("frames,h,w", [(1, 8, 8), (3, 8, 12), (9, 16, 16), (2, 4, 20)])
def test_same_weights_at_other_sizes_and_lengths(frames, h, w):
    net = randomized(DiT(dit_tiny(window=4)))
    out = run(net, torch.randn(2, frames, 4, h, w))
    assert out.shape == (2, frames, 4, h, w) and torch.isfinite(out).all()


def test_translation_in_time_does_not_change_outputs():
    """Rotary time positions are relative: with one layer and a window of 2, frame 3 sees
    frames 2 and 3 whether the sequence starts at frame 0 or at frame 1 (where frame 3 sits at
    position 2), so its output is the same."""
    net = randomized(DiT(dit_tiny(depth=1, window=2)))
    g = torch.Generator().manual_seed(0)
    x, c_noise = torch.randn(1, 5, 4, 8, 8, generator=g), torch.randn(1, 5, generator=g)
    emb, previous = torch.randn(1, 5, 64, generator=g), torch.randn(1, 5, 4, 8, 8, generator=g)
    a = net(x, c_noise, Conditioning(emb, previous=previous))
    b = net(x[:, 1:], c_noise[:, 1:], Conditioning(emb[:, 1:], previous=previous[:, 1:]))
    torch.testing.assert_close(a[:, 3], b[:, 2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 1], b[:, 0])  # frame 1 sees frame 0 only in the first


def test_rotary_angles_depend_on_position_differences_only():
    rope = SpacetimeRotary(head_dim=32, theta_time=1000.0, theta_space=100.0)
    q, k = torch.randn(1, 1, 4, 32), torch.randn(1, 1, 4, 32)
    def logit(tq, tk):
        cq, sq = rope(torch.tensor([[tq]]), 2, 2, "cpu")
        ck, sk = rope(torch.tensor([[tk]]), 2, 2, "cpu")
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum(-1)

    torch.testing.assert_close(logit(5, 2), logit(1_000_005, 1_000_002), atol=1e-5, rtol=0)
    assert not torch.allclose(logit(5, 2), logit(5, 3))
    with pytest.raises(ValueError, match="even head dim"):
        SpacetimeRotary(head_dim=6, theta_time=1000.0, theta_space=100.0)


def test_bf16_autocast_close_to_fp32():
    net = randomized(DiT(dit_tiny()), std=0.05)
    x = torch.randn(2, 3, 4, 8, 8)
    ref = run(net, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(net, x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_shape_mismatch_is_named():
    net = DiT(dit_tiny())
    with pytest.raises(ValueError, match="c_noise and action embeddings"):
        net(torch.zeros(1, 3, 4, 8, 8), torch.zeros(1, 2), Conditioning(torch.zeros(1, 3, 64)))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        DiT(dit_tiny(heads=3))


@pytest.mark.parametrize("frames,window", [(5, 3), (4, 4), (6, 1), (3, 8)])
def test_teacher_forcing_attention_equals_its_dense_mask(frames, window):
    """The two-call teacher-forcing attention equals dense attention under the layout's mask,
    in both of its forms."""
    N, H, E = 4, 2, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, 2 * frames * N, E, generator=g) for _ in range(3))
    dense_mask = token_mask(teacher_forcing_frame_mask(frames, window), N)
    expected = MaskedAttention(dense_mask)(q, k, v, 0)
    for explicit in (True, False):  # both forms of the noisy frames' attention
        got = TeacherForcingAttention(frames, N, window, explicit=explicit)(q, k, v, 0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_teacher_forcing_attention_forms_agree_in_gradient_and_in_bf16():
    """Training differentiates through the attention: both forms give the dense mask's
    gradients, and under bf16 they stay within bf16 rounding of it."""
    frames, window, N, H, E = 4, 4, 4, 2, 8
    dense_mask = token_mask(teacher_forcing_frame_mask(frames, window), N)
    g = torch.Generator().manual_seed(1)
    qkv = [torch.randn(2, H, 2 * frames * N, E, generator=g) for _ in range(3)]
    weights = torch.randn(2, H, 2 * frames * N, E, generator=g)

    def grads(attend, dtype=torch.float32):
        leaves = [t.clone().to(dtype).requires_grad_() for t in qkv]
        out = attend(*leaves, 0)
        (out.float() * weights).sum().backward()
        return out.float(), [t.grad.float() for t in leaves]

    expected, expected_grads = grads(MaskedAttention(dense_mask))
    for explicit in (True, False):
        attend = TeacherForcingAttention(frames, N, window, explicit=explicit)
        out, got = grads(attend)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        for a, b in zip(got, expected_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        out, got = grads(attend, torch.bfloat16)
        torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)
        for a, b in zip(got, expected_grads, strict=True):
            torch.testing.assert_close(a, b, atol=0.1, rtol=0.05)


def test_teacher_forcing_frame_mask_layout():
    mask = teacher_forcing_frame_mask(3, window=2).int()
    assert mask.tolist() == [[1, 0, 0, 0, 0, 0],   # context frames: block-causal band
                             [1, 1, 0, 0, 0, 0],
                             [0, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],   # noisy frame 0: itself only
                             [1, 0, 0, 0, 1, 0],   # noisy frame 1: context 0 and itself
                             [0, 1, 0, 0, 0, 1]]   # noisy frame 2: context 1 (window 2)

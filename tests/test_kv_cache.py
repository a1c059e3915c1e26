"""The KV-cached rollout equals recomputing everything from scratch.

Tolerance: fp32 throughout; |cached - full| <= 1e-4 + 1e-4 |full| elementwise (the two differ
only in the order of floating-point sums: attention over a ring buffer vs one sequence);
measured differences are ~1e-6 on outputs of order 1-10. Rolled-out frames are compared
against the scale of the whole frame, |cached - full| <= 1e-4 (1 + max |full|): each frame adds
its predicted change to the last one, so rounding differences accumulate over the rollout, and
a randomly perturbed model's frames grow to ~50 under Heun (measured: 2e-3 at most there,
4e-6 under Euler).
"""

import pytest
import torch
from gymnasium import spaces

from worldsim.diffusion.edm import Denoiser, add_noise, append_dims, get_scalings
from worldsim.diffusion.sampling import get_sampler
from worldsim.diffusion.schedules import karras_sigmas
from worldsim.models.dit import Conditioning, DiT, dit_tiny
from worldsim.models.dynamics import DynamicsConfig, DynamicsModel
from worldsim.models.kv_cache import KVCache

ATOL = RTOL = 1e-4
C, H, W = 4, 8, 8


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (a fresh DiT outputs zeros, which would make every test pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_model(window: int = 4) -> DynamicsModel:
    torch.manual_seed(0)
    model = DynamicsModel(DynamicsConfig(dit=dit_tiny(window=window)), spaces.Discrete(5))
    return randomized(model).eval()


def test_incremental_network_passes_equal_one_full_pass():
    """Prefill K frames, then one frame at a time, past the window's length: each frame's output
    equals the same frame's output in one block-causal pass over the whole sequence."""
    net = randomized(DiT(dit_tiny(window=4, previous_frame=False)), std=0.1).eval()
    B, T, K = 2, 13, 3
    g = torch.Generator().manual_seed(1)
    x, c_noise = torch.randn(B, T, C, H, W, generator=g), torch.randn(B, T, generator=g)
    a = torch.randn(B, T, 64, generator=g)
    with torch.no_grad():
        full = net(x, c_noise, Conditioning(a))
        cache = KVCache.empty(B, 4, net.config.depth)
        outs = [net(x[:, :K], c_noise[:, :K], Conditioning(a[:, :K], cache))]
        cache.commit(K)
        for t in range(K, T):
            outs.append(net(x[:, t:t + 1], c_noise[:, t:t + 1], Conditioning(a[:, t:t + 1], cache)))
            cache.commit(1)
    assert full.abs().max() > 1  # a non-trivial network
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=RTOL)


def test_prefill_longer_than_the_window():
    net = randomized(DiT(dit_tiny(window=3, previous_frame=False)), std=0.1).eval()
    B, T = 1, 9
    x, c_noise, a = torch.randn(B, T, C, H, W), torch.randn(B, T), torch.randn(B, T, 64)
    with torch.no_grad():
        full = net(x, c_noise, Conditioning(a))
        cache = KVCache.empty(B, 3, net.config.depth)
        net(x[:, :7], c_noise[:, :7], Conditioning(a[:, :7], cache))
        cache.commit(7)
        assert cache.valid.all() and cache.next_position.tolist() == [7]
        for t in (7, 8):
            out = net(x[:, t:t + 1], c_noise[:, t:t + 1], Conditioning(a[:, t:t + 1], cache))
            cache.commit(1)
            torch.testing.assert_close(out[:, 0], full[:, t], atol=ATOL, rtol=RTOL)


def shifted(frames: torch.Tensor) -> torch.Tensor:
    """The frame before each frame of a sequence (the first is its own predecessor)."""
    return torch.cat([frames[:, :1], frames[:, :-1]], 1)


def reference_rollout(model, context, context_actions, step_actions, seed, num_steps, sampler):
    """Rollout without a cache: every network evaluation recomputes the whole sequence so far
    (context frames at the context noise level, the new frame at the sampler's level), drawing
    random numbers in the order `DynamicsModel.start/step` document. Each frame's change from
    the clean frame before it is what is diffused; the network also reads the frame before it
    as it saw it in context."""
    dcfg = model.config.diffusion
    assert model.config.residual and model.config.dit.previous_frame
    g = torch.Generator().manual_seed(seed)
    B, K = context.shape[:2]
    frames = [context]
    noises = [torch.randn(context.shape, generator=g)]
    actions = context_actions["action"]
    sigmas = karras_sigmas(num_steps, dcfg.sample_sigma_min, dcfg.sample_sigma_max, dcfg.rho)
    denoiser = Denoiser(model.dit, dcfg.sigma_data)
    results = []
    for a in step_actions:
        actions = torch.cat([actions, a[:, None]], 1)
        clean = torch.cat(frames, 1)
        n = clean.shape[1]
        ctx_sigma = torch.full((B, n), dcfg.context_sigma)
        context_noisy = add_noise(clean, ctx_sigma, torch.cat(noises, 1))
        previous_clean = torch.cat([shifted(clean), clean[:, -1:]], 1)  # (B, n + 1, ...)
        previous_seen = torch.cat([shifted(context_noisy), context_noisy[:, -1:]], 1)
        emb = model.embed_actions({"action": actions}, n + 1)

        def full_denoiser(x, sigma, cond, context_noisy=context_noisy, ctx_sigma=ctx_sigma,
                          emb=emb, previous_clean=previous_clean, previous_seen=previous_seen,
                          n=n):
            changes = torch.cat([context_noisy, x], 1) - previous_clean
            d = denoiser(changes, torch.cat([ctx_sigma, sigma[:, None]], 1),
                         Conditioning(emb, previous=previous_seen))
            return d[:, -1:] + previous_clean[:, n:]

        x = previous_clean[:, n:] + torch.randn((B, 1, C, H, W), generator=g) * sigmas[0]
        new = get_sampler(sampler)(full_denoiser, x, sigmas, None)
        frames.append(new)
        noises.append(torch.randn(new.shape, generator=g))
        # Heads: one pass with the new frame at the context level too.
        all_frames = torch.cat(frames, 1)
        s_all = torch.full(all_frames.shape[:2], dcfg.context_sigma)
        x_all = add_noise(all_frames, s_all, torch.cat(noises, 1))
        sc = get_scalings(s_all, dcfg.sigma_data)
        tokens, _ = model.dit.features(append_dims(sc.c_in, 5) * (x_all - shifted(all_frames)),
                                       sc.c_noise, Conditioning(emb, previous=shifted(x_all)))
        reward_logits, term_logits = model.heads(tokens[:, -1:])
        results.append((new[:, 0], reward_logits[:, 0].softmax(-1), term_logits[:, 0].sigmoid()))
    return results


@pytest.mark.parametrize("sampler,num_steps", [("euler", 3), ("heun", 2)])
def test_cached_rollout_equals_full_recomputation(sampler, num_steps):
    """3 context frames, window 4, 9 generated frames: the window rolls over several times."""
    model = tiny_model(window=4)
    B, K, steps = 2, 3, 9
    g = torch.Generator().manual_seed(5)
    context = torch.randn(B, K, C, H, W, generator=g)
    context_actions = {"action": torch.randint(0, 5, (B, K - 1), generator=g)}
    step_actions = [torch.randint(0, 5, (B,), generator=g) for _ in range(steps)]
    with torch.no_grad():
        expected = reference_rollout(model, context, context_actions, step_actions, 11,
                                     num_steps, sampler)
    gen = torch.Generator().manual_seed(11)
    state = model.start(context, context_actions, gen)
    for i, a in enumerate(step_actions):
        latents, reward, term, state = model.step(state, {"action": a}, gen, num_steps=num_steps,
                                                  sampler=sampler)
        ref_latents, ref_probs, ref_term = expected[i]
        scale = 1 + ref_latents.abs().max().item()
        torch.testing.assert_close(latents, ref_latents, atol=ATOL * scale, rtol=0)
        torch.testing.assert_close(state.reward_probs, ref_probs, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(term, ref_term, atol=ATOL, rtol=RTOL)
        assert reward.shape == (B,) and term.shape == (B,)
    assert state.position.tolist() == [K + steps] * B
    assert latents.abs().max() > 0.1


def test_far_positions_are_as_exact_as_near_ones():
    """Rotary positions are relative: the same frames at absolute index 10^6 give the same
    outputs as at index 0 (angles are reduced modulo 2 pi in float64)."""
    net = randomized(DiT(dit_tiny(window=4, previous_frame=False)), std=0.1).eval()
    B, T = 1, 4
    x, c_noise, a = torch.randn(B, T, C, H, W), torch.randn(B, T), torch.randn(B, T, 64)
    outs = []
    with torch.no_grad():
        for start in (0, 10**6 + 3):
            cache = KVCache.empty(B, 4, net.config.depth)
            cache.next_position += start
            net(x[:, :3], c_noise[:, :3], Conditioning(a[:, :3], cache))
            cache.commit(3)
            outs.append(net(x[:, 3:], c_noise[:, 3:], Conditioning(a[:, 3:], cache)))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=RTOL)


def test_cache_memory_is_flat_and_old_frames_are_forgotten():
    model = tiny_model(window=4)
    gen = torch.Generator().manual_seed(0)
    state = model.start(torch.randn(1, 2, C, H, W), {"action": torch.zeros(1, 1, dtype=torch.long)},
                        gen)
    sizes = []
    for _ in range(12):
        model.step(state, {"action": torch.tensor([1])}, gen, num_steps=1)
        sizes.append(state.cache.nbytes())
    assert len(set(sizes)) == 1 and state.cache.valid.all()
    assert state.cache.keys[0].shape[2] == 4  # W slots, however long the rollout


def test_branching_by_clone():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    state = model.start(torch.randn(2, 3, C, H, W, generator=g),
                        {"action": torch.zeros(2, 2, dtype=torch.long)}, g)
    untouched = state.clone()
    branch = state.clone()
    for _ in range(3):  # advance the branch with other actions
        model.step(branch, {"action": torch.tensor([4, 4])}, torch.Generator().manual_seed(9))
    a = model.step(state, {"action": torch.tensor([1, 2])}, torch.Generator().manual_seed(3))
    b = model.step(untouched, {"action": torch.tensor([1, 2])}, torch.Generator().manual_seed(3))
    assert torch.equal(a.latents, b.latents)
    c = model.step(state.clone(), {"action": torch.tensor([3, 0])},
                   torch.Generator().manual_seed(3))
    assert not torch.allclose(a.latents, c.latents)  # actions matter


def test_rows_at_different_positions_in_one_batch():
    """After replacing one row (an environment reset), a batched network pass equals each row
    run on its own, although the rows' windows are filled to different depths."""
    model = tiny_model(window=4)
    g = torch.Generator().manual_seed(0)
    state = model.start(torch.randn(3, 4, C, H, W, generator=g),
                        {"action": torch.zeros(3, 3, dtype=torch.long)}, g)
    for _ in range(3):
        model.step(state, {"action": torch.tensor([1, 2, 3])}, g, num_steps=1)
    fresh = model.start(torch.randn(1, 1, C, H, W, generator=g),
                        {"action": torch.zeros(1, 0, dtype=torch.long)}, g)
    state.assign([1], fresh)
    assert state.position.tolist() == [7, 1, 7]
    assert state.cache.valid.sum(1).tolist() == [4, 1, 4]
    x = torch.randn(3, 1, C, H, W, generator=g)
    c_noise, emb = torch.randn(3, 1, generator=g), torch.randn(3, 1, 64, generator=g)
    previous = torch.randn(3, 1, C, H, W, generator=g)
    with torch.no_grad():
        together = model.dit(x, c_noise, Conditioning(emb, state.cache.clone(), previous=previous))
        for row in range(3):
            alone = model.dit(x[row:row + 1], c_noise[row:row + 1],
                              Conditioning(emb[row:row + 1], state.cache.select([row]),
                                           previous=previous[row:row + 1]))
            torch.testing.assert_close(alone, together[row:row + 1], atol=ATOL, rtol=RTOL)


def test_select_and_assign_round_trip():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    state = model.start(torch.randn(3, 2, C, H, W, generator=g),
                        {"action": torch.zeros(3, 1, dtype=torch.long)}, g)
    part = state.select([2, 0])
    assert part.batch_size == 2 and part.position.tolist() == [2, 2]
    before = state.clone()
    state.assign([0, 2], part)  # swap rows 0 and 2
    torch.testing.assert_close(state.cache.keys[0][0], before.cache.keys[0][2])
    torch.testing.assert_close(state.last_latents[2], before.last_latents[0])
    with pytest.raises(ValueError, match="rows"):
        state.assign([0], part)


def test_cache_misuse_is_reported():
    net = DiT(dit_tiny(window=4, previous_frame=False))
    cache = KVCache.empty(1, 4, net.config.depth)
    x = torch.zeros(1, 2, C, H, W)
    net(x, torch.zeros(1, 2), Conditioning(torch.zeros(1, 2, 64), cache))
    cache.commit(2)
    with pytest.raises(ValueError, match="prefill an empty cache"):
        net(x, torch.zeros(1, 2), Conditioning(torch.zeros(1, 2, 64), cache))
    with pytest.raises(ValueError, match="window"):
        net(x[:, :1], torch.zeros(1, 1), Conditioning(torch.zeros(1, 1, 64), KVCache.empty(1, 5, 2)))


def test_bf16_cache_and_mixed_precision_steps():
    """A rollout started under bf16 autocast keeps a bf16 cache (half the memory) and can be
    stepped with or without autocast; bf16 and fp32 rollouts stay close."""
    model = tiny_model()
    context = torch.randn(2, 3, C, H, W)
    actions = {"action": torch.zeros(2, 2, dtype=torch.long)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = model.start(context, actions, torch.Generator().manual_seed(0))
        out_bf16 = model.step(state.clone(), {"action": torch.tensor([1, 2])},
                              torch.Generator().manual_seed(1))
    assert state.cache.keys[0].dtype == torch.bfloat16
    out_mixed = model.step(state.clone(), {"action": torch.tensor([1, 2])},
                           torch.Generator().manual_seed(1))  # fp32 step on a bf16 cache
    fp32_state = model.start(context, actions, torch.Generator().manual_seed(0))
    out_fp32 = model.step(fp32_state, {"action": torch.tensor([1, 2])},
                          torch.Generator().manual_seed(1))
    for out in (out_bf16, out_mixed):
        assert out.latents.dtype == torch.float32 and torch.isfinite(out.latents).all()
        rel = (out.latents - out_fp32.latents).norm() / out_fp32.latents.norm()
        assert rel < 0.05

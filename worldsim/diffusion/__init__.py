"""Diffusion pieces, joined by one contract, `denoiser(x, sigma, cond)` (DESIGN decision 5):

    edm.py        EDM preconditioning (`get_scalings`), the loss, `Denoiser`, noise constants
    schedules.py  training noise levels and sampling schedules (pure functions)
    sampling.py   stateless samplers: sample_euler, sample_heun (one signature)
"""

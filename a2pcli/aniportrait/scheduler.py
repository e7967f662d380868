"""Noise schedulers with AniPortrait's settings (configs/inference/inference_v2.yaml).

`build_scheduler("ddim")` is the original exactly: diffusers' DDIMScheduler with linear betas
0.00085-0.012, v-prediction, zero-terminal-SNR rescaling, trailing spacing, steps_offset 1,
clip_sample False. Note the quirk it reproduces: `step()` takes the previous timestep as
`t - 1000 // n`, not from the schedule (with n=3, t=666 steps to alphas_cumprod[333] although the
next timestep is 332). A hand-written update would not match.

"dpmpp" (DPM-Solver++ 2M) and "unipc" (UniPC bh2) take the same betas, v-prediction, zero-SNR and
trailing spacing; they are for fewer steps and are not numerically equivalent to DDIM.
"""

from __future__ import annotations

from a2pcli.aniportrait.config import INFERENCE_V2_SCHEDULER_KWARGS


def build_scheduler(kind: str = "ddim", kwargs: dict | None = None):
    import diffusers

    kw = dict(INFERENCE_V2_SCHEDULER_KWARGS if kwargs is None else kwargs)
    if kind == "ddim":
        return diffusers.DDIMScheduler(**kw)
    # Multistep solvers: no clip_sample; everything else carries over.
    kw.pop("clip_sample", None)
    if kind == "dpmpp":
        # final_sigmas_type="zero" handles the zero-SNR last step; lower_order_final for stability
        # at few steps.
        return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                    lower_order_final=True, final_sigmas_type="zero", **kw)
    if kind == "unipc":
        return diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True,
                                                 lower_order_final=True, final_sigmas_type="zero", **kw)
    raise ValueError(f"unknown scheduler {kind!r} (ddim, dpmpp, unipc)")


def step_kwargs(scheduler, eta: float = 0.0, generator=None) -> dict:
    """The extra `step()` keyword arguments the pipeline passes (eta and generator), filtered to
    those the scheduler accepts (prepare_extra_step_kwargs)."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out

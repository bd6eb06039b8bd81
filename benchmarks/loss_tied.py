"""Study ``loss_tied``: does the loss-tied step escape the local minimum where GD stalls?

Su's 1-D example (math.md §1.4): f(x) = x(x-1)(x-3)^2 + 1.62276 from x0 = 4, h = 0.01, M = 1000.
The loss-tied ODE has dL/dt = -L wherever it is not truncated, so it cannot rest at the local
minimum x = 3 (f = 1.62 > 0); plain gradient descent with the same step stays there. When the
iterate escapes depends on rounding, so the study reports the step at which it settles.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, StudyResult, frameworks, jax_x64, torch_threads
from benchmarks._report import FW_STYLE, curve, line_plot, table
from benchmarks.problems import SU_1D_GLOBAL_MIN, SU_1D_LOCAL_MIN, SU_1D_START, su_1d

NAME = "loss_tied"
QUESTION = "Does the loss-tied step escape the local minimum where GD stalls?"
LR, MAX_SCALE, TOL, RUN = 0.01, 1000.0, 1e-3, 500
METHODS = {"loss-tied": SU_1D_GLOBAL_MIN, "gradient descent": SU_1D_LOCAL_MIN}  # -> target


def settled_at(xs: np.ndarray, target: float) -> int | None:
    """The 1-based step that starts the first run of ``RUN`` steps within ``TOL`` of target."""
    runs = np.convolve(np.abs(xs - target) < TOL, np.ones(RUN, int), "valid") == RUN
    return int(np.argmax(runs)) + 1 if runs.any() else None


@torch_threads(1)  # a scalar: a second thread only adds waiting
def torch_path(steps: int, loss_tied: bool) -> np.ndarray:
    import torch

    import torch_opt

    x = torch.tensor(SU_1D_START, dtype=torch.float64, requires_grad=True)
    if loss_tied:
        opt = torch_opt.LossTiedODE([x], lr=LR, max_scale=MAX_SCALE)
    else:
        opt = torch.optim.SGD([x], lr=LR)

    def closure():
        opt.zero_grad()
        loss = su_1d(x)
        loss.backward()
        return loss

    out = np.empty(steps)
    for k in range(steps):
        opt.step(closure)
        out[k] = x.item()
    return out


def jax_path(steps: int, loss_tied: bool) -> np.ndarray:
    import jax
    import optax

    import jax_opt

    opt = jax_opt.loss_tied_ode(LR, max_scale=MAX_SCALE) if loss_tied else optax.sgd(LR)

    def body(carry, _):
        x, state = carry
        loss, grad = jax.value_and_grad(su_1d)(x)
        updates, state = opt.update(grad, state, x, value=loss)
        x = optax.apply_updates(x, updates)
        return (x, state), x

    with jax_x64():
        x0 = jax.numpy.asarray(SU_1D_START)
        return np.asarray(jax.lax.scan(body, (x0, opt.init(x0)), length=steps)[1])


def run(ctx: Context) -> StudyResult:
    steps, records, curves = ctx.sized(20000, 3000), [], []
    keep = np.unique(np.geomspace(1, steps, 400).astype(int)) - 1
    for fw in frameworks():
        for i, (method, target) in enumerate(METHODS.items()):
            xs = {"torch": torch_path, "jax": jax_path}[fw](steps, method == "loss-tied")
            final = {"x_final": float(xs[-1]), "f_final": float(su_1d(xs[-1])), "target": target}
            settled = settled_at(xs, target)
            records.append({"framework": fw, "method": method} | final | {"settled_at": settled})
            curves.append(curve(f"{method} ({fw})", keep + 1, xs[keep], FW_STYLE[fw], i))
    tied = [r for r in records if r["method"] == "loss-tied"]
    gd = next(r for r in records if r["method"] == "gradient descent")
    when = " and ".join(f"{r['settled_at']} in {r['framework']}" for r in tied)
    settles = "settles" if all(r["settled_at"] for r in tied) else "does not settle"
    verdict = (
        f"The loss-tied step {settles} at the global minimum x = {tied[0]['x_final']:.5f} (from "
        f"step {when}), while gradient descent stays at x = {gd['x_final']:.4f} "
        f"(f = {gd['f_final']:.5f})."
    )
    columns = {
        "method": "method", "framework": "framework", f"x at step {steps}": "x_final:.5f",
        "f": "f_final", "target": "target",
        f"settled within {TOL} of it at step": lambda r: r["settled_at"] or "never",
    }  # fmt: skip
    hlines = [(SU_1D_GLOBAL_MIN, "global minimum"), (SU_1D_LOCAL_MIN, "local minimum x = 3")]
    title = f"Su's 1-D example, h = {LR}, M = {MAX_SCALE:g}"
    figures = [line_plot("loss_tied_paths", curves, title, ylabel="x", xscale="log", hlines=hlines)]
    settings = {"lr": LR, "max_scale": MAX_SCALE, "x0": SU_1D_START, "steps": steps}
    settings["settled"] = f"within {TOL} of the target for {RUN} consecutive steps"
    return StudyResult(verdict, {"runs": records}, [table(records, columns)], figures, settings)

"""The batched Levenberg-Marquardt solver of the shape fits.

:func:`batched_lm` solves many small independent least-squares problems at once
(one per detection or object), with forward-difference Jacobians evaluated in one
stacked call of the residual function.
"""

from __future__ import annotations

import numpy as np


def batched_lm(residual_fn, params: np.ndarray, steps: np.ndarray, clamp, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on a batch of independent problems.

    Parameters
    ----------
    residual_fn : callable
        ``residual_fn(params (k B, D)) -> residuals (k B, M)``: must accept ``k`` stacked
        copies of the batch (the Jacobian is evaluated in one call with ``k = D``).
    params : ndarray of shape (B, D), float64
        Starting points (in the units ``residual_fn`` takes; not modified).
    steps : ndarray of shape (D,), float64
        Finite-difference steps, same units as ``params``.
    clamp : callable
        ``clamp(params) -> params`` keeping parameters in their domain (may work in place).
    iterations : int
        At most this many; stops earlier once two iterations in a row gain nothing
        (relative cost decrease below 1e-4 on every row).

    Returns
    -------
    params : ndarray of shape (B, D), float64
    cost : ndarray of shape (B,), float64
        Sum of squared residuals at the result.
    """
    params = clamp(params.copy())
    d = params.shape[1]
    res = residual_fn(params)
    cost = (res**2).sum(1)
    lam = np.full(len(params), 1e-2)
    eye = np.eye(d)[None]
    stalled = 0
    for _ in range(iterations):
        # forward differences, all parameters in one stacked call
        shifted = np.repeat(params[None], d, axis=0) + (np.eye(d) * steps)[:, None, :]  # (D, B, D)
        jac_t = ((residual_fn(shifted.reshape(d * len(params), d)).reshape(d, *res.shape) - res) / steps[:, None, None]).transpose(1, 0, 2)  # (B, D, M)
        jtj = jac_t @ jac_t.transpose(0, 2, 1)  # batched matmul: several times faster than einsum here
        jtr = (jac_t @ res[:, :, None])[:, :, 0]
        diag = np.einsum("nii->ni", jtj)
        delta = -np.linalg.solve(jtj + lam[:, None, None] * eye * (diag[:, :, None] + 1e-6), jtr[:, :, None])[:, :, 0]
        trial = clamp(params + delta)
        res_t = residual_fn(trial)
        cost_t = (res_t**2).sum(1)
        better = cost_t < cost
        gain = np.where(better, cost - cost_t, 0.0)
        params[better] = trial[better]
        res[better] = res_t[better]
        cost[better] = cost_t[better]
        lam = np.clip(np.where(better, lam * 0.3, lam * 10.0), 1e-7, 1e7)
        stalled = stalled + 1 if np.all(gain <= 1e-4 * cost + 1e-6) else 0
        if stalled >= 2:  # no row gains any more: converged (or stuck)
            break
    return params, cost

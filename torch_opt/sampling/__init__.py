r"""MLE-guided parameter search (MGS, math.md §4): importance-weighted random search for a
non-differentiable objective, guided by a surrogate gradient.

Twin of ``jax_opt/sampling/``: the same kernel names, signatures and equation tags.

.. math::

    \hat g &= -g \min\big(1, c / \lVert g \rVert\big)                                 \tag{1}

    s_P &= \sigma \operatorname{mean}|\hat g_P| \ \text{("grad")}
        \quad\text{or}\quad \sigma \ \text{("constant", or } \hat g_P = 0\text{)}       \tag{2}

    \epsilon_{kP} &= m_k \hat g_P + s_P z_{kP}, \quad m_k \in \{0, 1\}                \tag{3}

    \log q_k &= \operatorname{logaddexp}\big(\log(1 - \lambda) + a_k,\
        \log \lambda + b_k\big)                                                       \tag{4}

    w_k &= \operatorname{softmax}_k\big(-(d_k - d_0) / \alpha - \log q_k\big)         \tag{5}

    \Delta_P &= \textstyle\sum_k w_k\, \epsilon_{kP}                                   \tag{6}

    \theta_P &\leftarrow \theta_P + \eta\, \Delta_P                                    \tag{7}

``g`` is the surrogate gradient (e.g. of the MLE loss, whatever ``.grad`` holds), its norm
global over all tensors ``P``, ``c = max_grad_norm``, ``sigma = noise``; a tensor without a
surrogate is centred on 0 with ``s_P = sigma``. ``m_k = 1`` marks a guided candidate (a
deterministic proportion ``lambda = mix`` of them, or each with probability ``mix``); under
``antithetic`` ``z_{2j} = n_j``, ``z_{2j+1} = -n_j`` and a pair shares ``m``. In (4)
``a_k = -1/2 sum_P ||eps_kP||^2 / s_P^2`` and ``b_k = -1/2 sum_P ||eps_kP - g_hat_P||^2 /
s_P^2`` (``"exact"``, the sampling density; ``"unit_variance"``, the reference code's form,
takes every ``s_P = 1``); the normalising constant ``-sum_P n_P (log s_P + log(2 pi) / 2)`` is
the same for every candidate and dropped, since (5) does not see it. In (5) ``d_0`` is the task
loss at ``theta`` and ``d_k`` at ``theta + eps_k``, ``alpha = temperature`` (the reference
code's ``beta = 1 / alpha``); a candidate whose loss is not finite gets weight 0. With a base
optimizer ``-Delta`` is its gradient instead of (7).

References:
    Welleck & Cho, "MLE-Guided Parameter Search for Task Loss Minimization in Neural Sequence
    Modeling", AAAI 2021, arXiv:2006.03158. Su Jianlin, kexue.fm/archives/7521.
"""

from torch_opt.sampling.kernels import (
    clip_surrogate,
    importance_weights,
    log_proposal,
    noise_scale,
    perturbations,
    weighted_direction,
)
from torch_opt.sampling.shells import (
    MGS,
    functional_population,
)

__all__ = [
    "MGS",
    "clip_surrogate",
    "functional_population",
    "importance_weights",
    "log_proposal",
    "noise_scale",
    "perturbations",
    "weighted_direction",
]

"""Independent float64 numpy references for wide-network kernels (shared by the kernel tests).

Nothing here imports neural-tangents or stepwise_ntk: these are the closed forms the
library's kernels are checked against.
"""

import numpy as np


def relu_expectations(cov_xy, var_x, var_y):
    """Arc-cosine kernels of order 1 and 0 (Cho & Saul 2009) for a centred Gaussian pair.

    Returns (E[relu(u) relu(v)], E[relu'(u) relu'(v)]) for (u, v) ~ N(0, [[var_x, cov], [cov, var_y]]):
      T   = sqrt(var_x var_y) / (2 pi) * (sin t + (pi - t) cos t),
      Tdot = (pi - t) / (2 pi),   with cos t = cov / sqrt(var_x var_y).
    """
    norm = np.sqrt(np.outer(var_x, var_y))
    cos = np.clip(cov_xy / norm, -1.0, 1.0)
    theta = np.arccos(cos)
    t = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
    tdot = (np.pi - theta) / (2 * np.pi)
    return t, tdot


def relu_mlp_kernels(x1, x2, depth=1, w_std=1.0, b_std=0.0):
    """NNGP and NTK of Dense -> (ReLU -> Dense) * depth in the NTK parameterisation.

    Recursion (Jacot et al. 2018; Lee et al. 2019), inputs x: (n, m), float64:
      Sigma_1 = w_std^2 x y / m + b_std^2,      Theta_1 = Sigma_1,
      Sigma_{l+1} = w_std^2 T(Sigma_l) + b_std^2,
      Theta_{l+1} = Sigma_{l+1} + w_std^2 Tdot(Sigma_l) Theta_l.

    Returns:
      (nngp, ntk), each (n1, n2).
    """
    x1 = np.asarray(x1, np.float64)
    x2 = np.asarray(x2, np.float64)
    m = x1.shape[1]
    s12 = w_std**2 * x1 @ x2.T / m + b_std**2
    s11 = w_std**2 * np.sum(x1 * x1, 1) / m + b_std**2
    s22 = w_std**2 * np.sum(x2 * x2, 1) / m + b_std**2
    ntk = s12.copy()
    for _ in range(depth):
        t, tdot = relu_expectations(s12, s11, s22)
        t11 = s11 / 2  # E[relu(u)^2] = var / 2
        t22 = s22 / 2
        ntk = w_std**2 * t + b_std**2 + w_std**2 * tdot * ntk
        s12 = w_std**2 * t + b_std**2
        s11 = w_std**2 * t11 + b_std**2
        s22 = w_std**2 * t22 + b_std**2
    return s12, ntk

# SPDX-License-Identifier: Apache-2.0
"""TEC-TT temporal entropy model: predicts (mean, scale) of the latent of date t from the image
model's hyperprior for date t and the decoded latents of 1-2 earlier dates of the same place.

The image model's transforms (g_a, g_s, h_a, h_s) are frozen and reused; only this prior is trained.
All tensors here are *ungained* latents (``y_hat / gain[level]``), so dates coded at different
quality levels can serve as context for each other; the caller multiplies mean and scale by the
gain of the current date.

What it is, honestly: a small convolutional network with one attention step per latent position.

    current date:  [hp_mean_u, log hp_scale_u, log gain]  --1x1, 3x3-->  query features q (C)
    each ref k:    [y_hat_k (ungained), log(1+gap days), alignment_k (13)]  --1x1, 3x3-->  features f_k (C)
                   alignment_k[i] = (B_t^-1 B_k)[i, i]: how far KLT component i of the ref date is the
                   same spectral direction as component i of the current date (each date has its own
                   KLT, so latent channels of two dates are only comparable where this is near 1)
    attention over {null token, ref 1, ref 2} per position (softmax of q.k / sqrt(C)):
        copy  = w_null * hp_mean_u + sum_k w_k * y_hat_k       (a per-position choice of source)
        value = w_null * v_null    + sum_k w_k * v(f_k)
    head (1x1 convs) on [q, value, copy - hp_mean_u] -> per channel gate, mean and log-scale corrections:
        mean_u  = hp_mean_u + sigmoid(gate) * (copy - hp_mean_u) + d_mean
        scale_u = hp_scale_u * exp(d_log_scale)

The 3x3 convolutions give every token its 3x3 latent neighbourhood (24x24 pixels), so a token is a
local window of the current date attending to the co-located windows of the previous dates. It is
not a multi-layer transformer: one attention layer, no autoregressive steps inside a date. Works on
any latent size (fully convolutional).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

MAX_REFS = 2


class TemporalPrior(nn.Module):
    def __init__(self, M: int = 128, C: int = 96, max_refs: int = MAX_REFS, align: int = 0):
        super().__init__()
        self.M, self.C, self.max_refs, self.align = M, C, max_refs, align
        self.cur = nn.Sequential(nn.Conv2d(3 * M, C, 1), nn.LeakyReLU(0.1), nn.Conv2d(C, C, 3, padding=1))
        self.ref = nn.Sequential(nn.Conv2d(M + 1 + align, C, 1), nn.LeakyReLU(0.1), nn.Conv2d(C, C, 3, padding=1))
        self.q = nn.Conv2d(C, C, 1)
        self.k = nn.Conv2d(C, C, 1)
        self.v = nn.Conv2d(C, C, 1)
        self.null_k = nn.Parameter(torch.zeros(C))
        self.null_v = nn.Parameter(torch.zeros(C))
        self.head = nn.Sequential(nn.Conv2d(2 * C + M, 2 * C, 1), nn.LeakyReLU(0.1), nn.Conv2d(2 * C, 3 * M, 1))
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[:M] = -2.0            # gate starts mostly closed: the hyperprior as is

    def forward(self, hp_mean_u, hp_scale_u, log_gain, refs, gaps, aligns=None):
        """hp_mean_u, hp_scale_u: (B, M, h, w) ungained hyperprior params of the current date;
        log_gain: (B, M, 1, 1); refs: list of (B, M, h, w) ungained decoded latents (0..max_refs,
        most recent first); gaps: list of (B,) gaps in days; aligns: list of (B, align) (when the
        model has ``align`` > 0). Returns (mean_u, scale_u)."""
        B, M, h, w = hp_mean_u.shape
        log_s = torch.log(hp_scale_u)
        cur = self.cur(torch.cat([hp_mean_u, log_s, log_gain.expand(B, M, h, w)], 1))
        q = self.q(cur)
        scale = 1.0 / math.sqrt(self.C)
        logits = [(q * self.null_k.view(1, -1, 1, 1)).sum(1, keepdim=True) * scale]
        values = [self.null_v.view(1, -1, 1, 1).expand(B, self.C, h, w)]
        sources = [hp_mean_u]
        for k, (r, gap) in enumerate(zip(refs, gaps)):
            g = torch.log1p(gap.to(r.dtype).clamp_min(0)).view(B, 1, 1, 1).expand(B, 1, h, w) / 3.0
            parts = [r, g]
            if self.align:
                parts.append(aligns[k].to(r.dtype).view(B, self.align, 1, 1).expand(B, self.align, h, w))
            f = self.ref(torch.cat(parts, 1))
            logits.append((q * self.k(f)).sum(1, keepdim=True) * scale)
            values.append(self.v(f))
            sources.append(r)
        w_att = torch.softmax(torch.cat(logits, 1), dim=1)            # (B, 1 + n_refs, h, w)
        copy = sum(w_att[:, i:i + 1] * s for i, s in enumerate(sources))
        value = sum(w_att[:, i:i + 1] * v for i, v in enumerate(values))
        out = self.head(torch.cat([cur, value, copy - hp_mean_u], 1))
        gate, d_mean, d_log = out[:, :M], out[:, M:2 * M], out[:, 2 * M:]
        mean_u = hp_mean_u + torch.sigmoid(gate) * (copy - hp_mean_u) + d_mean
        scale_u = torch.exp(log_s + d_log.clamp(-8.0, 4.0))
        return mean_u, scale_u


def gaussian_bits(values, means, scales, lower: float = 0.11):
    """-log2 P(bin of width 1 around ``values``) under N(means, scales) (scales lower-bounded)."""
    scales = scales.clamp_min(lower)
    v = (values - means).abs()
    c = -(2 ** -0.5)
    upper = 0.5 * torch.erfc(c * (0.5 - v) / scales)
    lo = 0.5 * torch.erfc(c * (-0.5 - v) / scales)
    return -torch.log2((upper - lo).clamp_min(1e-9))


def alignment(basis_cur, basis_ref, size: int = 13):
    """diag(basis_cur^-1 @ basis_ref) zero-padded to ``size`` (numpy in, numpy float64 out)."""
    import numpy as np

    n = basis_cur.shape[0]
    out = np.zeros(size)
    out[:n] = np.diag(np.linalg.solve(basis_cur, basis_ref))
    return np.round(out * 1024) / 1024          # coarse grid: LAPACK rounding differences cannot matter

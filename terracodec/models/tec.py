# SPDX-License-Identifier: Apache-2.0
"""TEC image model: analysis/synthesis transforms with a quality-gained latent and two entropy models.

Input is not bands but the per-tile KLT components of a tile (see terracodec.spectral), scaled by a
global constant and zero-padded to 13 channels, so one network serves every band subset.

    c (13, H, W) --g_a--> y --*gain[q]--> y_g --round--> y_q --/gain[q]--> --g_s--> c_hat
                                            |                                  ^
                                          h_a -> z --round--> z_hat --h_s--> (mu, sigma)     (TEC-HP)
    TEC-FP codes y_q with a per-quality factorized prior instead (no z).

Quality is a real number in [0, Q-1]; between integer levels the gain vectors are interpolated
geometrically (Gained VAE), which lets the encoder raise quality in small steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models.utils import conv, deconv

IN_CHANNELS = 13
N_QUALITIES = 8
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 2048.0, 96


def scale_table() -> list[float]:
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS)).tolist()


class TecImageModel(nn.Module):
    """Hyperprior (mean-scale) model with a shared factorized-prior variant. Latent stride 8, hyper stride 32."""

    downsampling_factor = 32

    def __init__(self, N: int = 64, M: int = 128, n_qualities: int = N_QUALITIES):
        super().__init__()
        self.N, self.M, self.n_qualities = N, M, n_qualities
        self.g_a = nn.Sequential(conv(IN_CHANNELS, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                                 deconv(N, IN_CHANNELS))
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True),
                                 conv(N, N))
        self.h_s = nn.Sequential(deconv(N, N), nn.LeakyReLU(inplace=True), deconv(N, N * 3 // 2),
                                 nn.LeakyReLU(inplace=True), conv(N * 3 // 2, 2 * M, 3, 1))
        # log-gains; quality 0 = coarsest. Initialised to a ladder so early training already spreads rates.
        init = torch.linspace(math.log(0.5), math.log(8.0), n_qualities)
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M).clone())
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M).clone())
        self.log_hyper_gain = nn.Parameter(torch.zeros(n_qualities, N))
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(scale_table())
        # TEC-FP: one factorized prior per integer quality over the (detached) gained latent.
        self.fp_bottlenecks = nn.ModuleList(EntropyBottleneck(M) for _ in range(n_qualities))

    # -- gains -------------------------------------------------------------------------------
    def _interp(self, table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """table (Q, C) of log-gains, quality (B,) float in [0, Q-1] -> (B, C, 1, 1) gains."""
        q = quality.clamp(0, self.n_qualities - 1)
        lo = q.floor().long().clamp(max=self.n_qualities - 2)
        t = (q - lo.to(q.dtype))[:, None]
        log_g = table[lo] * (1 - t) + table[lo + 1] * t
        return log_g.exp()[:, :, None, None]

    def gains(self, quality: torch.Tensor):
        return (self._interp(self.log_gain, quality), self._interp(self.log_inv_gain, quality),
                self._interp(self.log_hyper_gain, quality))

    # -- training path -----------------------------------------------------------------------
    def forward(self, c: torch.Tensor, quality: torch.Tensor, fp_index: torch.Tensor | None = None):
        """c (B, 13, H, W) with H, W multiples of 32; quality (B,) float. Returns x_hat and likelihoods."""
        gain, inv_gain, hyper_gain = self.gains(quality)
        y = self.g_a(c) * gain
        z = self.h_a(y) * hyper_gain
        z_hat, z_lik = self.entropy_bottleneck(z)
        params = self.h_s(z_hat / hyper_gain)
        scales, means = params.chunk(2, 1)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means=means)
        c_hat = self.g_s(y_hat * inv_gain)
        out = {"c_hat": c_hat, "likelihoods": {"y": y_lik, "z": z_lik}}
        if fp_index is not None:
            # factorized prior trained on the detached latent of the same forward pass
            y_det = y.detach()
            fp_lik = torch.empty_like(y_det)
            for q in fp_index.unique().tolist():
                sel = fp_index == q
                _, lik = self.fp_bottlenecks[q](y_det[sel])
                fp_lik[sel] = lik
            out["likelihoods"]["y_fp"] = fp_lik
        return out

    def aux_loss(self) -> torch.Tensor:
        loss = self.entropy_bottleneck.loss()
        for eb in self.fp_bottlenecks:
            loss = loss + eb.loss()
        return loss

    def update(self, force: bool = True) -> None:
        """Build the integer CDF tables used by the range coder (after training, before export)."""
        self.entropy_bottleneck.update(force=force)
        for eb in self.fp_bottlenecks:
            eb.update(force=force)
        self.gaussian_conditional.update_scale_table(scale_table(), force=force)

    @staticmethod
    def pad_size(h: int, w: int) -> tuple[int, int]:
        f = TecImageModel.downsampling_factor
        return (h + f - 1) // f * f, (w + f - 1) // f * f


def pad_replicate(c: torch.Tensor) -> torch.Tensor:
    h, w = c.shape[-2:]
    ph, pw = TecImageModel.pad_size(h, w)
    if (ph, pw) == (h, w):
        return c
    return F.pad(c, (0, pw - w, 0, ph - h), mode="replicate")

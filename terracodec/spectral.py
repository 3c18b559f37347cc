# SPDX-License-Identifier: Apache-2.0
"""Per-tile spectral decorrelation (KLT) shared by the encoder and the trainer. numpy only.

Each tile is centred by its band means and rotated onto the eigenvectors of its band covariance,
so the network always sees zero-mean, decorrelated components ordered by variance, whatever the band
subset, brightness (snow, cloud, water) or processing level. The rotation is (nearly) orthonormal,
so squared error in component space equals squared error in reflectance.
"""
from __future__ import annotations

import numpy as np

# Components are divided by this constant before the network (reflectance x10000 units). It is fixed,
# not per tile, so that one quality level means one absolute error level (PSNR_10000).
COMPONENT_SCALE = 1000.0


def fit_klt(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """samples (bands, n) -> (means (bands,), basis (bands, bands)); basis columns are eigenvectors,
    by decreasing eigenvalue, each with a non-negative sum so the sign is reproducible."""
    samples = np.asarray(samples, np.float64)
    means = samples.mean(axis=1)
    centred = samples - means[:, None]
    cov = centred @ centred.T / max(samples.shape[1], 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evecs = evecs[:, order]
    signs = np.where(evecs.sum(axis=0) < 0, -1.0, 1.0)
    return means, evecs * signs


def quantize_basis(basis: np.ndarray) -> np.ndarray:
    """The basis as stored in a tile (float16), returned as float64 for use on both sides."""
    return basis.astype(np.float16).astype(np.float64)


def quantize_basis_int8(basis: np.ndarray) -> np.ndarray:
    """The basis as stored compactly (int8, entries x 127), returned as float64. The quantized
    basis stays within ~1 % of orthonormal (entries of an orthonormal basis lie in [-1, 1])."""
    return np.clip(np.rint(basis * 127), -127, 127) / 127


def quantize_means_f16(means: np.ndarray) -> np.ndarray:
    """Band means as stored compactly (float16, clipped to its range), returned as float64: any
    value works as the offset, as long as both sides use the same one."""
    return np.clip(means, -65504, 65504).astype(np.float16).astype(np.float64)


def forward(tile: np.ndarray, means: np.ndarray, basis_q: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> components (bands, h, w) float32, divided by COMPONENT_SCALE.

    Uses the exact inverse of the stored float16 basis, so decode (basis_q @ c) inverts it."""
    b, h, w = tile.shape
    inv = np.linalg.inv(basis_q)
    comps = inv @ (tile.reshape(b, -1).astype(np.float64) - means[:, None])
    return (comps / COMPONENT_SCALE).astype(np.float32).reshape(b, h, w)


def inverse(comps: np.ndarray, means: np.ndarray, basis_q: np.ndarray) -> np.ndarray:
    """components (bands, h, w) -> reflectance float64 (bands, h, w).

    An explicit loop over bands in a fixed order: no BLAS, so the result does not depend on the
    thread count."""
    b, h, w = comps.shape
    flat = comps.reshape(b, -1).astype(np.float64)
    flat *= COMPONENT_SCALE
    out = np.empty_like(flat)
    term = np.empty(flat.shape[1])
    for i in range(b):
        acc = out[i]
        acc.fill(means[i])
        for k in range(b):                # acc += basis_q[i, k] * flat[k], without temporaries
            np.multiply(flat[k], basis_q[i, k], out=term)
            acc += term
    return out.reshape(b, h, w)

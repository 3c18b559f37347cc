# SPDX-License-Identifier: Apache-2.0
"""How much can an earlier date save at all? A Gaussian estimate with oracle predictors (issue 5).

    .venv/bin/python examples/estimate_temporal_gain.py [LOCATION [--dates D1,D2,... ...]] [--native 2]

Not a codec: an upper-bound-style estimate of what conditional coding could save on a stack, to
set the measured codecs (BENCHMARKS.md, time series) against. Per date: the bands go through the
date's KLT, the components through a 4 x 4 DCT; each (component, frequency) class is a Gaussian
source of the variance of its coefficients, and reverse water-filling at distortion D gives the bits
of the date coded alone. Conditioned on the earlier date, a coefficient keeps only its residual to
the co-located coefficient of the earlier date (projected with the same KLT) times a gain: one gain
per class ("class"), or one per 4 x 4 block for the 15 AC coefficients ("block"). The gains are
fitted on the very coefficients they predict and cost no bits (oracle). The earlier date is the
decoded one: its coefficients quantized with the step of the same D (step = sqrt(12 D)). The
saving of a stack is the bits of all its dates (the first coded alone) against coding every date
alone, averaged in log over PSNR_10000 35-50 dB (as a BD-rate). ``--native 2`` averages 2 x 2
pixels first (the 20 m bands of the worldcereal val series are interpolated on the 10 m grid).
Default: the five seasonal 4-date stacks of `tec bench --temporal` (worldcereal_37MBS_TZA-1101950).
"""
import argparse
from pathlib import Path

import numpy as np
from scipy.fft import dctn

from terracodec.bench_temporal import DENSE, seasonal_stacks
from terracodec.train_temporal import load_location

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
BLOCK = 4


def blocks(component: np.ndarray) -> np.ndarray:
    """(blocks, 16) DCT coefficients of the 4 x 4 blocks of one component."""
    h, w = (s - s % BLOCK for s in component.shape)
    c = component[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(0, 2, 1, 3)
    return dctn(c, axes=(2, 3), norm="ortho").reshape(-1, BLOCK * BLOCK)


def coefficients(x: np.ndarray, basis: np.ndarray) -> list[np.ndarray]:
    flat = x.reshape(x.shape[0], -1)
    comps = (basis.T @ (flat - flat.mean(1, keepdims=True))).reshape(x.shape)
    return [blocks(c) for c in comps]


def rate(variances: list[np.ndarray], d: float) -> float:
    """Bits per coefficient of Gaussian classes at distortion d (reverse water-filling)."""
    v = np.concatenate([np.broadcast_to(var, shape).ravel() for var, shape in variances])
    return float(np.maximum(0.0, 0.5 * np.log2(np.maximum(v, 1e-12) / d)).mean())


def date_rates(target: np.ndarray, ref: np.ndarray | None, d: float) -> tuple[float, float, float]:
    """(alone, class gains, block gains) bits per coefficient of ``target`` given the decoded ``ref``."""
    _, basis = np.linalg.eigh(np.cov(target.reshape(target.shape[0], -1)))
    tc = coefficients(target, basis)
    alone = [(t.var(0), t.shape) for t in tc]
    if ref is None:
        r = rate(alone, d)
        return r, r, r
    step = np.sqrt(12 * d)
    by_class, by_block = [], []
    for t, r in zip(tc, coefficients(ref, basis)):
        rq = np.rint(r / step) * step
        gain = (t * rq).sum(0) / np.maximum((rq * rq).sum(0), 1e-9)
        e_class = t - gain * rq
        by_class.append((np.minimum(e_class.var(0), t.var(0)), t.shape))
        g = (t[:, 1:] * rq[:, 1:]).sum(1) / np.maximum((rq[:, 1:] ** 2).sum(1), 1e-9)
        e_block = t.copy()
        e_block[:, 1:] -= g[:, None] * rq[:, 1:]
        e_block[:, 0] = e_class[:, 0]
        by_block.append((np.minimum(e_block.var(0), t.var(0)), t.shape))
    return rate(alone, d), rate(by_class, d), rate(by_block, d)


def stack_saving(arr: np.ndarray) -> tuple[float, float]:
    logs = []
    for psnr in np.linspace(35, 50, 16):
        d = 1e8 / 10 ** (psnr / 10)
        rates = np.array([date_rates(arr[t].astype(np.float64), None if t == 0 else arr[t - 1].astype(np.float64), d)
                          for t in range(len(arr))])
        total = rates.sum(0)
        if total[0] > 1e-4:
            logs.append(np.log(total[1:] / total[0]))
    return tuple(100 * (np.exp(np.mean(logs, 0)) - 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("location", nargs="?", default=DENSE)
    p.add_argument("--dates", nargs="+", metavar="D1,D2,...")
    p.add_argument("--native", type=int, default=None, help="average NxN pixels first (default: 2 for the "
                   "default series, else 1)")
    args = p.parse_args()
    native = args.native or (2 if args.location == DENSE else 1)
    full, _, _, rows = load_location(SERIES / args.location)
    keys = [r["key"] for r in rows]
    stacks = ([[keys.index(d) for d in s.split(",")] for s in args.dates] if args.dates
              else seasonal_stacks(rows, 5))
    out = []
    for stack in stacks:
        arr = full[stack].astype(np.float64)
        if native > 1:
            t, b, h, w = arr.shape
            h, w = h - h % native, w - w % native
            arr = arr[:, :, :h, :w].reshape(t, b, h // native, native, w // native, native).mean(axis=(3, 5))
        s = stack_saving(arr)
        out.append(s)
        print(f"{', '.join(keys[i] for i in stack)}: saving with class gains {s[0]:+.1f} %, with block gains {s[1]:+.1f} %")
    m = np.mean(out, 0)
    print(f"mean: class gains {m[0]:+.1f} %, block gains {m[1]:+.1f} %")


if __name__ == "__main__":
    main()

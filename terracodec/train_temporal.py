# SPDX-License-Identifier: Apache-2.0
"""Train TEC-TT's temporal entropy model on the `train` time series, on CPU, with frozen transforms.

    python -m terracodec.train_temporal --minutes 6 --export        # writes weights/tec-tt-v1.pt + manifest

The image model's transforms are frozen, so distortion does not change and the loss is the rate of
the latent y_t only. Latents are computed once: every date of every train time series goes through
g_a (all dates of a location share one KLT basis, fitted on the valid pixels of all its dates, with
per-date means, exactly as the stack encoder does per tile), and for every integer quality level the
hyperprior's (mean, scale) are computed with the frozen h_a/h_s (z quantized as in coding). Training
then samples (target date, 1-2 earlier dates) with gaps from one revisit up to ~4 months, cloudy
dates included, random 8x8 latent crops (64x64 pixels) and a random level, and minimises the bits of
y_t (uniform noise quantization) under the temporal prior.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import spectral
from .train import DEFAULT_DATA, load_image

log = logging.getLogger("terracodec.train_temporal")
REPO = Path(__file__).resolve().parent.parent
MAX_GAP_DAYS = 125
KLT = "date"               # the stack encoder uses the KLT mode its prior was trained with


def timeseries_locations(data_dir: Path, split: str) -> list[Path]:
    rows = list(csv.DictReader(open(data_dir / "splits.csv")))
    locs = sorted({r["location"] for r in rows if r["split"] == split and r["file"].startswith("timeseries/")})
    return [data_dir / "timeseries" / loc for loc in locs]


def read_index(loc: Path) -> list[dict]:
    """index.csv rows whose image file exists, in date order, with 'when' (datetime.date) and 'key'
    (a unique ISO date or date-time string)."""
    rows = []
    for r in csv.DictReader(open(loc / "index.csv")):
        if not r.get("file") or not (loc / r["file"]).is_file():
            continue
        r = dict(r)
        r["when"] = dt.date.fromisoformat(r["date"][:10])
        r["cloud"] = float(r["cloud_fraction"]) if r.get("cloud_fraction") not in (None, "") else float("nan")
        rows.append(r)
    rows.sort(key=lambda r: (r["date"], r["file"]))
    seen: dict[str, int] = {}
    for r in rows:
        key = r["date"]
        if key in seen:                              # two acquisitions on one day: use the date-time
            key = r.get("datetime") or f"{r['date']}T{seen[key]:02d}"
        seen[r["date"]] = seen.get(r["date"], 0) + 1
        r["key"] = key
    return rows


def load_location(loc: Path):
    """-> arrays (T, B, H, W) int16, valid (T, H, W), band names, index rows."""
    rows = read_index(loc)
    arrs, valids, names = [], [], None
    for r in rows:
        a, n, v = load_image(loc / r["file"])
        if names is None:
            names = n
        if n != names or (arrs and a.shape != arrs[0].shape):
            continue
        arrs.append(a)
        valids.append(v)
    return np.stack(arrs), np.stack(valids), names, rows[:len(arrs)]


def shared_klt(stack: np.ndarray, valid: np.ndarray):
    """One KLT basis for all dates of (T, B, h, w) + per-date means (float32-exact), as the stack
    encoder computes it (terracodec.stack.fit_stack_klt)."""
    from .stack import fit_stack_klt

    return fit_stack_klt(stack.astype(np.float64), valid)


def precompute(locations: list[Path], net, levels=range(8)) -> list[dict]:
    import torch

    from .models.tec import IN_CHANNELS, pad_replicate

    out = []
    for loc in locations:
        t0 = time.time()
        stack, valid, names, rows = load_location(loc)
        T, B, H, W = stack.shape
        if KLT == "shared":
            means, basis_q = shared_klt(stack, valid)
            bases = [basis_q] * T
        else:                              # each date its own KLT, as the image codec and TEC-TT code it
            from .tilecodec import _fit_tile_klt

            fits = [_fit_tile_klt(stack[t].astype(np.float64), valid[t] if valid[t].any() else
                                  np.ones_like(valid[t])) for t in range(T)]
            means = np.stack([m for m, _ in fits])
            bases = [b for _, b in fits]
        ys = []
        with torch.no_grad():
            for t in range(T):
                x = stack[t].astype(np.float64)
                x = np.where(valid[t][None], x, means[t][:, None, None])
                comps = np.zeros((IN_CHANNELS, H, W), np.float32)
                comps[:B] = spectral.forward(x, means[t], bases[t])
                ys.append(net.g_a(pad_replicate(torch.from_numpy(comps)[None]))[0])
            y_u = torch.stack(ys)                                   # (T, M, h, w) ungained
            mu, sigma = [], []
            for L in levels:
                gain, _, hyper_gain = net.gains(torch.full((T,), float(L)))
                y = y_u * gain
                z = net.h_a(y) * hyper_gain
                z_hat, _ = net.entropy_bottleneck(z, training=False)
                s, m = net.h_s(z_hat / hyper_gain).chunk(2, 1)
                mu.append(m)
                sigma.append(s.clamp_min(0.11))
        out.append({"name": loc.name, "y_u": y_u, "bases": bases, "mu": torch.stack(mu), "sigma": torch.stack(sigma),
                    "when": [r["when"] for r in rows], "cloud": [r["cloud"] for r in rows]})
        log.info("%s: %d dates %dx%d, %d bands, latents %s (%.1fs)", loc.name, T, H, W, B,
                 tuple(y_u.shape[-2:]), time.time() - t0)
    return out


class PairSampler:
    def __init__(self, data: list[dict], seed: int = 0, crop: int = 8):
        self.data = [d for d in data if len(d["when"]) >= 2]
        self.rng = np.random.default_rng(seed)
        self.crop = crop

    def _pick_ref(self, when, t, limit_days):
        cands = [r for r in range(t) if (when[t] - when[r]).days <= limit_days]
        if not cands:
            return None
        return cands[-1] if self.rng.random() < 0.5 else int(self.rng.choice(cands))

    def sample(self):
        rng = self.rng
        while True:
            d = self.data[rng.integers(len(self.data))]
            when = d["when"]
            t = int(rng.integers(1, len(when)))
            r1 = self._pick_ref(when, t, MAX_GAP_DAYS)
            if r1 is None:
                continue
            refs = [r1]
            if rng.random() < 0.7:
                r2 = self._pick_ref(when, r1, MAX_GAP_DAYS)
                if r2 is not None and (when[t] - when[r2]).days <= 2 * MAX_GAP_DAYS:
                    refs.append(r2)
            break
        h, w = d["y_u"].shape[-2:]
        c = self.crop
        y0 = int(rng.integers(0, h - c + 1)) if h > c else 0
        x0 = int(rng.integers(0, w - c + 1)) if w > c else 0
        return d, t, refs, [(when[t] - when[r]).days for r in refs], (slice(y0, y0 + c), slice(x0, x0 + c))


def make_batch(sampler: PairSampler, net, size: int, n_refs: int):
    """Tensors for one step; every sample has exactly ``n_refs`` refs (batches are grouped by it)."""
    import torch

    from .models.temporal import alignment

    ys, mus, sigs, lg, refs, gaps = [], [], [], [], [[] for _ in range(n_refs)], [[] for _ in range(n_refs)]
    aligns = [[] for _ in range(n_refs)]
    rng = sampler.rng
    while len(ys) < size:
        d, t, rr, gg, (sy, sx) = sampler.sample()
        if len(rr) < n_refs:
            continue
        L = int(rng.integers(0, 8))
        gain = net.log_gain[L].detach().exp()[:, None, None]
        y = d["y_u"][t][:, sy, sx] * gain
        if y.shape[-2:] != (sampler.crop, sampler.crop):
            continue
        ys.append(y)
        mus.append(d["mu"][L, t][:, sy, sx])
        sigs.append(d["sigma"][L, t][:, sy, sx])
        lg.append(net.log_gain[L].detach()[:, None, None])
        for k in range(n_refs):
            Lr = int(np.clip(L + rng.integers(-1, 2), 0, 7))
            gr = net.log_gain[Lr].detach().exp()[:, None, None]
            yr = d["y_u"][rr[k]][:, sy, sx] * gr
            mr = d["mu"][Lr, rr[k]][:, sy, sx]
            refs[k].append((torch.round(yr - mr) + mr) / gr)      # what the decoder has: y_hat / gain
            gaps[k].append(float(gg[k]))
            aligns[k].append(torch.from_numpy(alignment(d["bases"][t], d["bases"][rr[k]])).float())
    st = torch.stack
    return (st(ys), st(mus), st(sigs), st(lg), [st(r) for r in refs],
            [torch.tensor(g, dtype=torch.float32) for g in gaps], [st(a) for a in aligns])


def train(args) -> None:
    import torch

    from .models.temporal import TemporalPrior, gaussian_bits
    from .weights import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    image = load_model(args.image_model)
    net = image.net
    for p in net.parameters():
        p.requires_grad_(False)
    data_dir = Path(args.data)
    t0 = time.time()
    data = precompute(timeseries_locations(data_dir, "train"), net)
    log.info("precomputed latents of %d train locations in %.1f s", len(data), time.time() - t0)
    prior = TemporalPrior(M=net.M, C=args.C, align=13)
    step0, minutes0 = 0, 0.0
    if args.init:                                  # continue from an earlier run (same image model)
        ck = torch.load(args.init, weights_only=False)
        if ck["image_sha256"] != image.sha256:       # e.g. a later export of the same training run
            log.warning("%s was trained on other image weights (%s...); using it as initialisation only",
                        args.init, ck["image_sha256"][:12])
        state = ck["temporal"]
        w = state["ref.0.weight"]
        if w.shape[1] < prior.ref[0].weight.shape[1]:          # an earlier prior without alignment inputs
            new = torch.zeros_like(prior.ref[0].weight)
            new[:, :w.shape[1]] = w
            state = dict(state, **{"ref.0.weight": new})
        prior.load_state_dict(state)
        step0, minutes0 = ck["step"], ck["minutes"]
        log.info("continuing %s from step %d", args.init, step0)
    opt = torch.optim.Adam(prior.parameters(), lr=args.lr)
    sampler = PairSampler(data, seed=args.seed + step0)
    budget = args.minutes * 60
    t1 = time.time()
    step, hist = 0, []
    while time.time() - t1 < budget:
        frac = (time.time() - t1) / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.2 if frac > 0.8 else 1.0)
        n_refs = 1 if sampler.rng.random() < 0.35 else 2
        y, mu, sig, lg, refs, gaps, aligns = make_batch(sampler, net, args.batch, n_refs)
        gain = lg.exp()
        mean_u, scale_u = prior(mu / gain, sig / gain, lg, refs, gaps, aligns)
        noisy = y + torch.rand_like(y) - 0.5
        bits = gaussian_bits(noisy, mean_u * gain, scale_u * gain).mean()
        with torch.no_grad():
            hp_bits = gaussian_bits(noisy, mu, sig).mean()
        opt.zero_grad()
        bits.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        step += 1
        hist.append((float(bits), float(hp_bits)))
        if step % args.log_every == 0:
            b = np.mean(hist, axis=0)
            log.info("step %d %.1f min: %.4f bits/latent (hyperprior alone %.4f, %.1f %% saved)", step,
                     (time.time() - t1) / 60, b[0], b[1], 100 * (1 - b[0] / b[1]))
            hist = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"temporal": prior.state_dict(), "temporal_config": {"M": net.M, "C": args.C, "align": 13, "klt": KLT},
                "step": step0 + step, "minutes": round(minutes0 + (time.time() - t1) / 60, 2),
                "image_model": image.name,
                "image_sha256": image.sha256}, out)
    log.info("saved %s after %d steps", out, step)
    if args.export:
        export(out, Path(args.weights_dir))


def export(ckpt: Path, weights_dir: Path, name: str = "tec-tt-v1") -> dict:
    """weights/<name>.pt = a copy of the image model's weights file content (its transforms and
    hyperprior, unchanged) + the temporal prior; adds the manifest entry ``name``."""
    import hashlib

    import torch

    from .weights import _entry

    ck = torch.load(ckpt, weights_only=False)
    img_name, img_entry = _entry(ck["image_model"])
    img_path = weights_dir / img_entry["file"]
    if hashlib.sha256(img_path.read_bytes()).hexdigest() != ck["image_sha256"]:
        raise SystemExit(f"{img_path} changed since the temporal prior was trained on it; retrain")
    img = torch.load(img_path, map_location="cpu", weights_only=True)
    payload = dict(img)
    payload["temporal"] = ck["temporal"]
    payload["temporal_config"] = ck["temporal_config"]
    payload["image_model"] = {"name": img_name, "sha256": ck["image_sha256"]}
    path = weights_dir / f"{name}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    n_temporal = sum(v.numel() for v in ck["temporal"].values())
    manifest_path = weights_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][name] = {
        "file": path.name, "sha256": sha, "architecture": "TecImageModel+TemporalPrior",
        "config": img_entry["config"], "temporal_config": ck["temporal_config"],
        "parameters": img_entry.get("parameters", 0) + n_temporal, "temporal_parameters": n_temporal,
        "train_steps": ck["step"], "train_minutes": ck["minutes"], "entropy": "hyperprior",
        "temporal": True, "image_model": {"name": img_name, "sha256": ck["image_sha256"]},
        "description": "TEC-TT: frozen copy of the image model's transforms + temporal prior "
                       "conditioned on 1-2 earlier dates (stacks); keyframes are TEC-HP tiles",
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("exported %s (sha256 %s..., %d temporal parameters)", path, sha[:12], n_temporal)
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m terracodec.train_temporal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--image-model", default="tec-hp-v1")
    p.add_argument("--out", default=str(REPO / "runs" / "tec-tt" / "temporal.pt"))
    p.add_argument("--weights-dir", default=str(REPO / "weights"))
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--C", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--klt", choices=("date", "shared"), default="date",
                   help="KLT per date (as the image codec) or one per tile shared by all dates")
    p.add_argument("--init", default=None, help="start from this temporal checkpoint")
    p.add_argument("--export", action="store_true", help="write weights/tec-tt-v1.pt and its manifest entry")
    p.add_argument("--export-only", default=None, help="export this checkpoint and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    global KLT
    KLT = args.klt
    if args.export_only:
        export(Path(args.export_only), Path(args.weights_dir))
        return
    train(args)


if __name__ == "__main__":
    main()

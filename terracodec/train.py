# SPDX-License-Identifier: Apache-2.0
"""Train the TEC image model on the `train` split of ../shared/data, on CPU, resumable.

    tec train --data ../shared/data --out runs/tec-image --minutes 80
    tec train --export runs/tec-image/last.pt      # update CDF tables, write weights/ + manifest

Every step draws crops of random train images (all band subsets, L1C, L2A, time-series dates incl.
cloudy ones), augments brightness, per-band gain, band subsets and orientation, applies the same
per-crop KLT as the encoder, and optimises rate + lambda(q) * MSE for a random quality per sample.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from . import spectral
from .bands import S2_BANDS

log = logging.getLogger("terracodec.train")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
# lambda per integer quality: MSE is in (reflectance / COMPONENT_SCALE)^2 units, rate in bits per pixel per band
LAMBDA_MIN, LAMBDA_RATIO = 18.0, 200.0


def quality_lambda(q):
    return LAMBDA_MIN * LAMBDA_RATIO ** (np.asarray(q, np.float64) / 7.0)


# ---------------------------------------------------------------------------------------------
# data
def list_split_images(data_dir: Path, split: str) -> list[dict]:
    rows = list(csv.DictReader(open(data_dir / "splits.csv")))
    out = []
    for r in rows:
        if r["split"] != split or r["kind"] != "image" or r["file"].startswith("other_sensors/"):
            continue
        out.append({"file": data_dir / r["file"], "location": r["location_group"]})
    return out


def load_image(path: Path) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """-> int16 (bands, H, W), band names, valid mask (H, W)."""
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read()
        names = tuple(src.descriptions)
        nodata = src.nodata
    if any(n not in S2_BANDS for n in names):
        raise ValueError(f"{path}: band descriptions {names} are not S2 names")
    invalid = np.all(arr == 0, axis=0)
    if nodata is not None:
        invalid |= np.all(arr == nodata, axis=0)
    return arr.astype(np.int16), names, ~invalid


class CropSampler:
    def __init__(self, images: list[dict], seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.items = []
        per_loc: dict[str, int] = {}
        for it in images:
            per_loc[it["location"]] = per_loc.get(it["location"], 0) + 1
        for it in images:
            arr, names, valid = load_image(it["file"])
            if valid.mean() < 0.3:
                continue
            area = arr.shape[1] * arr.shape[2]
            # long time series of one place should not drown the single scenes
            self.items.append({"arr": arr, "names": names, "valid": valid,
                               "weight": area / math.sqrt(per_loc[it["location"]])})
        log.info("loaded %d train images, %.1f M pixels", len(self.items),
                 sum(i["arr"].shape[1] * i["arr"].shape[2] for i in self.items) / 1e6)

    def batch(self, size: int, count: int):
        pool = [i for i in self.items if min(i["arr"].shape[1:]) >= size]
        w = np.array([i["weight"] for i in pool])
        picks = self.rng.choice(len(pool), size=count, p=w / w.sum())
        comps, nbands = [], []
        for p in picks:
            c, nb = self._sample(pool[p], size)
            comps.append(c)
            nbands.append(nb)
        return np.stack(comps), np.array(nbands)

    def _sample(self, item, size):
        rng = self.rng
        arr, valid = item["arr"], item["valid"]
        for _ in range(10):
            y = rng.integers(0, arr.shape[1] - size + 1)
            x = rng.integers(0, arr.shape[2] - size + 1)
            v = valid[y:y + size, x:x + size]
            if v.mean() > 0.5:
                break
        crop = arr[:, y:y + size, x:x + size].astype(np.float64)
        # band subsets: the 4 10 m bands, a random subset, or all
        nb = crop.shape[0]
        r = rng.random()
        if r < 0.15:
            keep = [i for i, n in enumerate(item["names"]) if n in ("B02", "B03", "B04", "B08")]
            if len(keep) >= 3:
                crop = crop[keep]
        elif r < 0.25 and nb > 3:
            k = rng.integers(3, nb + 1)
            crop = crop[np.sort(rng.choice(nb, size=k, replace=False))]
        nb = crop.shape[0]
        # brightness (snow, haze, cloud, desert) and spectral jitter
        crop *= math.exp(rng.uniform(math.log(0.5), math.log(3.0)))
        crop *= rng.uniform(0.85, 1.15, size=(nb, 1, 1))
        k = rng.integers(4)
        crop = np.rot90(crop, k, axes=(1, 2))
        v = np.rot90(v, k)
        if rng.random() < 0.5:
            crop, v = crop[:, :, ::-1], v[:, ::-1]
        crop = np.ascontiguousarray(crop)
        flat = crop.reshape(nb, -1)
        vflat = np.array(v, dtype=bool).reshape(-1)
        if vflat.sum() < 16:          # (almost) all nodata: treat every pixel as data
            vflat[:] = True
        sample = flat[:, vflat]
        if sample.shape[1] > 4096:
            sample = sample[:, rng.choice(sample.shape[1], 4096, replace=False)]
        means, basis = spectral.fit_klt(sample)
        flat[:, ~vflat] = means[:, None]     # encoder fills nodata with the tile means too
        comps = spectral.forward(crop, means, spectral.quantize_basis(basis))
        out = np.zeros((13, size, size), np.float32)
        out[:nb] = comps
        return out, nb


# ---------------------------------------------------------------------------------------------
# training
def train(args) -> None:
    import torch

    from .models.tec import TecImageModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = TecImageModel(N=args.N, M=args.M)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=args.aux_lr)
    step, elapsed = 0, 0.0
    ckpt_path = out / "last.pt"
    if ckpt_path.exists() and not args.fresh:
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        for g in aux_opt.param_groups:
            g["lr"] = args.aux_lr
        step, elapsed = ck["step"], ck["elapsed"]
        log.info("resumed from %s at step %d (%.1f min)", ckpt_path, step, elapsed / 60)
    elif args.init:
        # fine-tune shipped weights (runs/ is not in git); range-coder tables are rebuilt at export
        ws = torch.load(args.init, weights_only=False)
        state = {k: v for k, v in ws["state_dict"].items()
                 if k.split(".")[-1] not in ("_quantized_cdf", "_offset", "_cdf_length")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if k.split(".")[-1] not in ("_quantized_cdf", "_offset", "_cdf_length")]
        if bad or unexpected:
            raise SystemExit(f"--init {args.init}: weights do not match N={args.N} M={args.M} "
                             f"(missing {bad[:3]}, unexpected {unexpected[:3]})")
        manifest = Path(args.init).with_name("manifest.json")
        entry = next((m for m in json.loads(manifest.read_text())["models"].values()
                      if m["file"] == Path(args.init).name), {}) if manifest.exists() else {}
        step, elapsed = entry.get("train_steps", 0), entry.get("train_minutes", 0.0) * 60
        log.info("initialised from %s (%d steps)", args.init, step)
    sampler = CropSampler(list_split_images(Path(args.data), "train"), seed=args.seed + step)
    budget = args.minutes * 60
    t_last_ckpt = time.time()
    t0 = time.time() - elapsed
    stats: list = []
    model.train()

    def save():
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                    "step": step, "elapsed": time.time() - t0,
                    "config": {"N": args.N, "M": args.M}}, tmp)
        os.replace(tmp, ckpt_path)

    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = args.lr if frac < 0.75 else args.lr * 0.25
        size, count = (128, args.batch) if sampler.rng.random() < 0.75 else (64, args.batch * 4)
        comps, nbands = sampler.batch(size, count)
        c = torch.from_numpy(comps)
        nb = torch.from_numpy(nbands).float()
        qi = torch.randint(0, 8, (count,))
        cont = torch.rand(count) < 0.25
        q = torch.where(cont, torch.rand(count) * 7, qi.float())
        fp_index = torch.where(cont, torch.full_like(qi, -1), qi)
        res = model(c, q, fp_index)
        lam = torch.from_numpy(quality_lambda(q.numpy())).float()
        chan = (torch.arange(13)[None, :] < nb[:, None]).float()[:, :, None, None]
        mse = (((res["c_hat"] - c) ** 2) * chan).sum(dim=(1, 2, 3)) / (nb * size * size)
        px = nb * size * size
        lk = res["likelihoods"]
        bits = -(torch.log2(lk["y"]).sum(dim=(1, 2, 3)) + torch.log2(lk["z"]).sum(dim=(1, 2, 3)))
        rate = bits / px
        fp_bits = -torch.log2(lk["y_fp"].clamp_min(1e-12)).sum(dim=(1, 2, 3))
        fp_rate = torch.where(fp_index >= 0, fp_bits / px, torch.zeros_like(fp_bits))
        weight = 1.0 / torch.sqrt(lam / LAMBDA_MIN)
        loss = ((rate + lam * mse) * weight).mean() + fp_rate.mean()
        if not torch.isfinite(loss):
            log.warning("step %d: non-finite loss, batch skipped", step)
            continue
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        step += 1
        psnr = 20 - 10 * torch.log10(mse.detach().clamp_min(1e-10))   # PSNR_10000 with COMPONENT_SCALE 1000
        for i in range(count):
            if not cont[i]:
                stats.append((int(qi[i]), float(rate[i].detach()), float(psnr[i]), float(fp_rate[i].detach())))
        if step % args.log_every == 0:
            msg = []
            for qq in (0, 3, 7):
                s = [x for x in stats if x[0] == qq]
                if s:
                    msg.append(f"q{qq + 1}: {np.mean([x[1] for x in s]):.3f}bpppb/{np.mean([x[2] for x in s]):.1f}dB"
                               f" fp {np.mean([x[3] for x in s]):.3f}")
            log.info("step %d %.1fmin loss %.3f aux %.1f | %s", step, (time.time() - t0) / 60, float(loss),
                     float(aux), " ".join(msg))
            stats = []
        if time.time() - t_last_ckpt > args.ckpt_minutes * 60:
            save()
            t_last_ckpt = time.time()
    save()
    log.info("done: %d steps in %.1f min", step, (time.time() - t0) / 60)


def export(ckpt: Path, weights_dir: Path, name: str = "tec-image-v1") -> dict:
    """Freeze a checkpoint into weights/<name>.pt (CDF tables built) and update weights/manifest.json:
    ``tec-image-vK`` gives the models tec-hp-vK and tec-fp-vK, and tec-hp-vK becomes the default.
    Entries of other versions stay, so files written with them still decode."""
    import hashlib

    import torch

    from .models.tec import TecImageModel

    ck = torch.load(ckpt, weights_only=False)
    model = TecImageModel(**ck["config"])
    model.load_state_dict(ck["model"])
    model.update(force=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{name}.pt"
    tmp = path.with_suffix(".tmp")
    # Gaussian CDF tables are large and rebuilt exactly at load time (elementwise maths on the scale table)
    state = {k: v for k, v in model.state_dict().items()
             if not (k.startswith("gaussian_conditional.") and k.split(".")[-1] in ("_quantized_cdf", "_offset", "_cdf_length"))}
    torch.save({"state_dict": state, "config": ck["config"],
                "component_scale": spectral.COMPONENT_SCALE}, tmp)
    os.replace(tmp, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    nparams = sum(p.numel() for p in model.parameters())
    manifest_path = weights_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    common = {"file": path.name, "sha256": sha, "architecture": "TecImageModel", "config": ck["config"],
              "parameters": nparams, "train_steps": ck["step"], "train_minutes": round(ck["elapsed"] / 60, 1)}
    version = name.rsplit("-", 1)[-1]
    manifest["models"][f"tec-hp-{version}"] = dict(
        common, entropy="hyperprior", description="mean-scale hyperprior, per-tile KLT input, gained quality ladder")
    manifest["models"][f"tec-fp-{version}"] = dict(
        common, entropy="factorized", description=f"same transforms as tec-hp-{version}, factorized prior per quality")
    manifest["default"] = f"tec-hp-{version}"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="tec train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "tec-image"))
    p.add_argument("--minutes", type=float, default=80)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--aux-lr", type=float, default=2e-2, help="learning rate of the entropy bottlenecks' quantiles")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--M", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--ckpt-minutes", type=float, default=4)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--init", metavar="WEIGHTS", help="start from exported weights (e.g. weights/tec-image-v1.pt) "
                   "when OUT has no checkpoint; the time budget --minutes counts on from their training time")
    p.add_argument("--export", metavar="CKPT", help="export a checkpoint to weights/ instead of training")
    p.add_argument("--weights-dir", default=str(REPO / "weights"))
    p.add_argument("--name", default="tec-image-v1", help="with --export: weights file name tec-image-vK "
                   "(models tec-hp-vK, tec-fp-vK; tec-hp-vK becomes the default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export:
        print(json.dumps(export(Path(args.export), Path(args.weights_dir), args.name), indent=2))
    else:
        train(args)


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: Apache-2.0
"""Rate-distortion benchmark: TEC models against classical anchors on the validation images.

    python -m terracodec.bench [options]          (or: tec bench [options]; --help lists them)

For every codec and parameter point (TEC quality 1..8, anchor sweeps from terracodec.anchors) each
image is encoded to real bytes and decoded from those bytes; PSNR_10000 is measured on the decoded
pixels (valid band-pixels only when the file has a nodata value) and bpppb = len(bytes) * 8 /
(H * W * bands). Per point, PSNR and bpppb are averaged over images (arithmetic means).

Outputs (every number comes from this run): a Markdown report (command line, date, machine, image list,
RD tables, BD-rates over 35-50 dB, rate at 40/45/50/55 dB, throughput, peak memory), an RD plot
PNG and a JSON file with the raw per-image results.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from . import anchors as _anchors
from .errors import TecBandError
from .metrics import bd_rate, bpppb, mse, pchip_eval, pchip_slopes, psnr10000
from .tilecodec import DEFAULT_EFFORT, EFFORTS

log = logging.getLogger("terracodec.bench")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
QUALITIES = tuple(range(1, 9))
BD_RANGE = (35.0, 50.0)
TARGET_PSNRS = (40.0, 45.0, 50.0, 55.0)
THROUGHPUT_PSNR = 45.0          # throughput is measured at the parameter whose median PSNR is closest
SCENE_SIZE = 1068
SCENE_BANDS = 12
PSNR_CAP = 100.0                # a lossless decode (inf dB) enters the averages as this value


# -- command line -------------------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    return [] if items in ([], ["none"]) else items


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m terracodec.bench",
        description="Rate-distortion benchmark of TEC models and classical anchors (JPEG 2000, "
                    "JPEG 2000 + KLT, JPEG XL) on the single-date images of a split.")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="data folder with splits.csv (default: <repo>/../shared/data)")
    p.add_argument("--split", default="val", help="split to benchmark (default: val)")
    p.add_argument("--out-md", default="BENCHMARKS.md", help="Markdown report (default: BENCHMARKS.md)")
    p.add_argument("--out-png", default="docs/rd_val.png", help="RD plot (default: docs/rd_val.png)")
    p.add_argument("--out-json", default=None,
                   help="raw per-image results (default: bench_<split>.json next to --out-png)")
    p.add_argument("--models", default="tec-fp,tec-hp",
                   help="TEC models, comma separated; a prefix such as tec-hp picks the latest tec-hp-vN; "
                        "'none' for anchors only (default: tec-fp,tec-hp)")
    p.add_argument("--qualities", default=",".join(map(str, QUALITIES)),
                   help="TEC qualities (default: 1..8)")
    p.add_argument("--efforts", default=DEFAULT_EFFORT,
                   help="TEC encoder efforts, comma separated (fast, default, best); each model is run at each "
                        "(default: default)")
    p.add_argument("--anchors", default="jpeg2000,jpeg2000_klt,jpegxl",
                   help=f"classical anchors, comma separated, or 'none' (known: {', '.join(_anchors.ANCHORS)})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (file order)")
    p.add_argument("--timeseries", action="store_true",
                   help="also include the split's time-series images (default: single-date only)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for torch / OpenJPEG / libjxl (default: 2)")
    p.add_argument("--throughput-reps", type=int, default=2,
                   help="timed repetitions per codec, best is reported (default: 2)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--memory-quality", type=int, default=5, help="TEC quality for the memory run (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# -- data ----------------------------------------------------------------------------------------------
def list_images(data: Path, split: str, timeseries: bool = False) -> list[str]:
    """Files (relative to ``data``) of the split's images: kind == image, single-date unless asked."""
    path = data / "splits.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (pass --data DIR with splits.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    files = [r["file"] for r in rows
             if r.get("split") == split and r.get("kind", "image") == "image"
             and (timeseries or not r["file"].startswith("timeseries/"))]
    return sorted(files)


def load_image(data: Path, rel: str) -> dict:
    from .geotiff import read_geotiff

    array, meta = read_geotiff(data / rel)
    if array.dtype != np.int16:
        raise ValueError(f"{rel}: expected int16, got {array.dtype}")
    nodata = meta["nodata"]
    valid = None
    if nodata is not None:
        valid = array != np.asarray(nodata).astype(array.dtype)
        if valid.all():
            valid = None
    return {"file": rel, "array": array, "bands": tuple(meta["bands"]), "nodata": nodata, "valid": valid}


# -- codecs --------------------------------------------------------------------------------------------
class Codec:
    """Uniform view of an anchor or a TEC model for the benchmark loops."""

    def __init__(self, name, label, kind, param_name, params, encode, decode, model=None, effort=None):
        self.name, self.label, self.kind = name, label, kind
        self.model, self.effort = model, effort           # TEC only: the model name and encoder effort
        self.param_name, self.params = param_name, tuple(params)
        self.encode, self.decode = encode, decode       # encode(img_dict, param) -> bytes; decode(bytes)


def anchor_codec(anchor, threads: int) -> Codec:
    def enc(img, param, array=None):
        a = img["array"] if array is None else array
        return anchor.encode(a, param, nodata=img.get("nodata"), threads=threads)

    def dec(data):
        return anchor.decode(data, threads=threads)

    return Codec(anchor.name, anchor.label, "anchor", anchor.param_name, anchor.params, enc, dec)


def resolve_model(name: str) -> tuple[str | None, str]:
    """-> (installed model name, '') or (None, reason). A unique prefix ('tec-hp') is accepted, and a
    family prefix picks its latest version ('tec-hp' -> tec-hp-v2 when v1 and v2 exist)."""
    try:
        from . import weights

        names = [m["name"] for m in weights.list_models()]
    except Exception as exc:                               # no manifest / weights yet
        return None, f"no TEC model weights available ({type(exc).__name__}: {exc})"
    if name in names:
        return name, ""
    cands = [n for n in names if n.startswith(name + "-") or n.startswith(name)]
    if not cands:
        return None, f"model {name!r} is not installed (installed: {', '.join(names) or 'none'})"
    if len(cands) == 1:
        return cands[0], ""
    # 'tec-hp' with tec-hp-v1 and tec-hp-v2 installed: the latest version
    versions = {n: n[len(name) + 1:] for n in cands if n.startswith(name + "-v")}
    if len(versions) == len(cands) and all(v[1:].isdigit() for v in versions.values()):
        return max(cands, key=lambda n: int(versions[n][1:])), ""
    return None, f"model {name!r} is ambiguous ({', '.join(cands)})"


def tec_codec(name: str, qualities, threads: int, effort: str = DEFAULT_EFFORT) -> Codec:
    """A TEC model at encoder ``effort``; a non-default effort is named "<model>+<effort>"."""
    from . import api

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:                                    # pragma: no cover
        pass

    def enc(img, q, array=None):
        a = img["array"] if array is None else array
        return api.encode(a, bands=img["bands"], quality=int(q), nodata=img.get("nodata"), model=name,
                          effort=effort)

    def dec(data):
        return api.decode(data)

    key, label = (name, f"TEC {name}") if effort == DEFAULT_EFFORT else (f"{name}+{effort}",
                                                                          f"TEC {name}, effort {effort}")
    return Codec(key, label, "tec", "quality", qualities, enc, dec, name, effort)


def select_codecs(args) -> tuple[list[Codec], dict]:
    codecs, skipped = [], {}
    for name in _csv_list(args.models):
        resolved, why = resolve_model(name)
        if resolved is None:
            log.warning("skipping TEC model %s: %s", name, why)
            skipped[name] = why
            continue
        if resolved != name:
            log.info("model %s -> %s", name, resolved)
        for effort in _csv_list(args.efforts):
            codecs.append(tec_codec(resolved, [int(q) for q in _csv_list(args.qualities)], args.threads,
                                    effort))
    for name in _csv_list(args.anchors):
        anchor = _anchors.get_anchor(name)
        ok, why = anchor.available()
        if not ok:
            log.warning("skipping anchor %s: %s", name, why)
            skipped[name] = why
            continue
        codecs.append(anchor_codec(anchor, args.threads))
    return codecs, skipped


# -- RD measurement -----------------------------------------------------------------------------------
def run_rd(codec: Codec, images: list[dict], progress: bool) -> list[dict]:
    """-> points [{param, per_image: [...], mean_bpppb, mean_psnr}] ([] when the codec fails up front)."""
    from tqdm import tqdm

    points = []
    bar = tqdm(total=len(codec.params) * len(images), desc=f"{codec.name:>14}", disable=not progress,
               leave=True, dynamic_ncols=True)
    try:
        for param in codec.params:
            rows = []
            for img in images:
                a = img["array"]
                t0 = time.perf_counter()
                data = codec.encode(img, param)
                t1 = time.perf_counter()
                out = codec.decode(data)
                t2 = time.perf_counter()
                if out.shape != a.shape:
                    raise RuntimeError(f"{codec.name} decoded shape {out.shape} != {a.shape} for {img['file']}")
                b, h, w = a.shape
                n_valid = a.size if img["valid"] is None else int(img["valid"].sum())
                rows.append({"file": img["file"], "bytes": len(data), "bpppb": bpppb(len(data), h, w, b),
                             "psnr": psnr10000(a, out, img["valid"]), "mse": mse(a, out, img["valid"]),
                             "band_pixels": a.size, "valid_band_pixels": n_valid,
                             "encode_s": t1 - t0, "decode_s": t2 - t1, **_tile_kinds(data)})
                bar.update(1)
            ps = [min(r["psnr"], PSNR_CAP) for r in rows]
            # pooled: all band-pixels of all images as one data set (total bits / total band-pixels,
            # PSNR of the pooled MSE); reported next to the per-image means, not used for BD-rates
            pooled_mse = sum(r["mse"] * r["valid_band_pixels"] for r in rows) / sum(r["valid_band_pixels"] for r in rows)
            points.append({"param": param, "per_image": rows,
                           "mean_bpppb": float(np.mean([r["bpppb"] for r in rows])),
                           "mean_psnr": float(np.mean(ps)),
                           "pooled_bpppb": 8.0 * sum(r["bytes"] for r in rows) / sum(r["band_pixels"] for r in rows),
                           "pooled_psnr": 10.0 * math.log10(1e8 / pooled_mse) if pooled_mse > 0 else math.inf})
    finally:
        bar.close()
    return points


def _tile_kinds(data: bytes) -> dict:
    """For .tec output: how many tiles the learned model coded vs the classical fallback."""
    from .format import MAGIC, peek

    if not bytes(data[:len(MAGIC)]) == MAGIC:
        return {}
    stats = peek(bytes(data)).stats                  # a missing count is 0 (api.TILE_COUNTS)
    return {k: int(stats.get(k, 0)) for k in ("learned_tiles", "fallback_tiles", "lossless_tiles")}


def _learned_share(point) -> str:
    rows = point["per_image"]
    if not rows or "learned_tiles" not in rows[0]:
        return "-"
    learned = sum(r.get("learned_tiles", 0) for r in rows)
    total = learned + sum(r.get("fallback_tiles", 0) + r.get("lossless_tiles", 0) for r in rows)
    return f"{learned}/{total}"


def curve(points, which: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(bpppb, PSNR) arrays of the per-image means (``which='mean'``) or the pooled values."""
    r = np.array([p[f"{which}_bpppb"] for p in points], dtype=np.float64)
    q = np.array([p[f"{which}_psnr"] for p in points], dtype=np.float64)
    return r, q


def rate_at_psnr(points, target: float) -> float:
    """bpppb at ``target`` dB by PCHIP interpolation of log(bpppb) over mean PSNR; NaN outside the curve."""
    r, q = curve(points)
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[ok], q[ok]
    order = np.argsort(q)
    r, q = r[order], q[order]
    keep = np.concatenate([[True], np.diff(q) > 1e-9]) if q.size else np.array([], bool)
    r, q = r[keep], q[keep]
    if q.size < 2 or not q[0] <= target <= q[-1]:
        return math.nan
    lr = np.log(r)
    return float(np.exp(pchip_eval(q, lr, pchip_slopes(q, lr), target)))


# -- throughput and memory ----------------------------------------------------------------------------
def build_scene(data: Path, files: list[str]) -> tuple[dict | None, str]:
    """A real SCENE_SIZE x SCENE_SIZE x 12-band scene -> (image dict, how it was built)."""
    best = None
    for rel in files:
        try:
            img = load_image(data, rel)
        except Exception as exc:                           # unreadable file: not a scene candidate
            log.debug("scene candidate %s: %s", rel, exc)
            continue
        b, h, w = img["array"].shape
        if b != SCENE_BANDS:
            continue
        if best is None or h * w > best["array"].shape[1] * best["array"].shape[2]:
            best = img
    if best is None:
        return None, f"no {SCENE_BANDS}-band image in the list"
    a = best["array"]
    _, h, w = a.shape
    if h >= SCENE_SIZE and w >= SCENE_SIZE:
        how = (f"{best['file']} ({h}x{w}, {SCENE_BANDS} bands), "
               + ("used as is" if (h, w) == (SCENE_SIZE, SCENE_SIZE) else f"top-left {SCENE_SIZE}x{SCENE_SIZE} crop"))
    else:
        reps = (math.ceil(SCENE_SIZE / h), math.ceil(SCENE_SIZE / w))
        # mirrored tiling keeps the scene continuous at the seams
        rows = [np.concatenate([a if (i + j) % 2 == 0 else a[:, :, ::-1] for j in range(reps[1])], axis=2)
                for i in range(reps[0])]
        rows = [r if i % 2 == 0 else r[:, ::-1, :] for i, r in enumerate(rows)]
        a = np.concatenate(rows, axis=1)
        how = (f"{best['file']} ({h}x{w}) tiled {reps[0]}x{reps[1]} with mirrored copies, "
               f"top-left {SCENE_SIZE}x{SCENE_SIZE} crop")
    a = np.ascontiguousarray(a[:, :SCENE_SIZE, :SCENE_SIZE])
    nodata = best["nodata"]
    valid = None if nodata is None else a != np.asarray(nodata).astype(a.dtype)
    return {"file": best["file"], "array": a, "bands": best["bands"], "nodata": nodata, "valid": valid}, how


def pick_param(codec: Codec, points) -> object:
    if points:
        # median over images: one odd image (e.g. a flat 64x64 chip) must not move the choice
        return min(points, key=lambda p: abs(float(np.median([min(r["psnr"], PSNR_CAP) for r in p["per_image"]]))
                                             - THROUGHPUT_PSNR))["param"]
    return codec.params[len(codec.params) // 2]


def measure_throughput(codec: Codec, scene: dict, param, reps: int) -> dict:
    a = scene["array"]
    n = a.size
    enc_t, dec_t = [], []
    data = None
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        data = codec.encode(scene, param)
        t1 = time.perf_counter()
        out = codec.decode(data)
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
    return {"param": param, "bytes": len(data), "psnr": psnr10000(a, out, scene["valid"]),
            "encode_s": min(enc_t), "decode_s": min(dec_t),
            "encode_mpxb_s": n / min(enc_t) / 1e6, "decode_mpxb_s": n / min(dec_t) / 1e6}


_MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    kind, name, param, threads, path, effort = sys.argv[1:7]
    threads = int(threads)
    import numpy as np
    z = np.load(path, allow_pickle=False)
    a = z["array"]
    bands = [str(b) for b in z["bands"]]
    nodata = None if z["nodata"].size == 0 else z["nodata"].item()
    def rss():
        # VmHWM: peak RSS of this process image. ru_maxrss is not used: Linux carries the forking
        # parent's RSS into it across exec, so it would report the (large) benchmark process.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if kind == "tec":
        # torch is imported only if the codec needs it (effort "best" tries the learned candidate);
        # its threads then follow OMP_NUM_THREADS, which the parent sets
        from terracodec import api
        base = rss()
        t0 = time.perf_counter()
        data = api.encode(a, bands=bands, quality=int(param), nodata=nodata, model=name, effort=effort)
        out = api.decode(data)
    else:
        from terracodec import anchors
        an = anchors.get_anchor(name)
        base = rss()
        t0 = time.perf_counter()
        data = an.encode(a, float(param), nodata=nodata, threads=threads)
        out = an.decode(data, threads=threads)
    dt = time.perf_counter() - t0
    assert out.shape == a.shape
    print(json.dumps({"baseline_mib": base, "peak_mib": rss(), "seconds": dt, "bytes": len(data)}))
""")


def measure_memory(kind: str, name: str, param, scene: dict, threads: int, effort: str = DEFAULT_EFFORT) -> dict:
    """Peak RSS (VmHWM of a fresh interpreter) of encode + decode of the scene."""
    with tempfile.TemporaryDirectory(prefix="tec-bench-") as tmp:
        path = os.path.join(tmp, "scene.npz")
        nd = np.array([] if scene["nodata"] is None else [scene["nodata"]], dtype=np.float64)
        np.savez(path, array=scene["array"], bands=np.array(scene["bands"]), nodata=nd)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, kind, name, str(param), str(threads), path,
                               effort],
                              capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"memory child exited {proc.returncode}: {tail[0]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["param"] = param
    return res


# -- environment ---------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": threads}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import imagecodecs

        info["imagecodecs"] = imagecodecs.__version__
        for fn in ("jpeg2k_version", "jpegxl_version"):
            try:
                info[fn.replace("_version", "")] = getattr(imagecodecs, fn)()
            except Exception:
                pass
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if head:
            info["git"] = head + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def command_line(argv) -> str:
    prog = "tec bench" if Path(sys.argv[0]).name == "tec" else "python -m terracodec.bench"
    return prog + (" " + shlex.join(argv) if argv else "")


# -- report --------------------------------------------------------------------------------------------
def _f(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if x == math.inf else "-"
    return f"{x:.{nd}f}"


def _fmt_param(p) -> str:
    return f"{p:g}" if isinstance(p, float) else str(p)


def plot(results: dict, labels: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = "os^vD<>ph*"
    for i, (name, points) in enumerate(results.items()):
        if not points:
            continue
        r, q = curve(points)
        order = np.argsort(r)
        style = "-" if name in labels and labels[name].startswith("TEC") else "--"
        ax.plot(r[order], q[order], style, marker=markers[i % len(markers)], ms=4, label=labels.get(name, name))
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel per band (bpppb, mean over images)")
    ax.set_ylabel("PSNR$_{10000}$ [dB] (mean over images)")
    ax.set_title(title)
    ax.axhspan(*BD_RANGE, color="0.93", zorder=0, label=f"BD-rate range {BD_RANGE[0]:g}-{BD_RANGE[1]:g} dB")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_markdown(path: Path, rep: dict) -> None:
    L = []
    add = L.append
    add(f"# Rate-distortion benchmark ({rep['split']} split)\n")
    add("Generated by `terracodec.bench`; every number below was produced by the run described here.\n")
    add("```\n" + rep["command"] + "\n```\n")
    m = rep["machine"]
    add(f"- Date: {rep['date']}")
    add(f"- Machine: {m.get('cpu', 'unknown CPU')}, {m['cpu_count']} CPUs"
        + (f", {m['mem_total_gib']} GiB RAM" if "mem_total_gib" in m else "") + f"; {m['platform']}")
    add(f"- Software: Python {m['python']}, numpy {m['numpy']}"
        + "".join(f", {k} {m[k]}" for k in ("imagecodecs", "jpeg2k", "jpegxl", "torch") if k in m)
        + (f"; terracodec git {m['git']}" if "git" in m else ""))
    add(f"- Threads (torch / OpenJPEG / libjxl): {rep['threads']}")
    add(f"- Data: `{rep['data']}`, split `{rep['split']}`, single-date images"
        + (" and time series" if rep["timeseries"] else "") + f" ({len(rep['images'])} images)")
    add("- Metrics: PSNR_10000 = 10 log10(10000^2 / MSE) over all bands and valid band-pixels (nodata "
        "excluded), in float64; bpppb = bytes of the real encoded output x 8 / (H x W x bands). Per "
        "parameter point both are arithmetic means over the images.\n")
    if rep["skipped"]:
        add("Skipped codecs:\n")
        for k, v in rep["skipped"].items():
            add(f"- `{k}`: {v}")
        add("")

    if rep.get("skipped_images"):
        add("Skipped images (not readable as Sentinel-2):\n")
        for k, v in rep["skipped_images"].items():
            add(f"- `{k}`: {v}")
        add("")

    add("## Images\n")
    add("| # | file | bands | H x W | nodata | valid band-pixels |")
    add("|---|---|---|---|---|---|")
    for i, im in enumerate(rep["images"], 1):
        add(f"| {i} | {im['file']} | {im['bands']} | {im['height']} x {im['width']} | "
            f"{'-' if im['nodata'] is None else im['nodata']} | {100 * im['valid_fraction']:.1f} % |")
    add("")

    add("## Codecs\n")
    for name, c in rep["codecs"].items():
        add(f"- **{c['label']}** (`{name}`): {c['param_name']} sweep {', '.join(_fmt_param(p) for p in c['params'])}")
    add("\nAnchor details are in `terracodec/anchors.py` (module docstring): JPEG 2000 = one J2K codestream "
        "with a component per band, no multi-component transform; JPEG 2000 + KLT = per-image KLT, float32 "
        "means and matrix stored in the stream (counted in the rate), same OpenJPEG level (= same "
        "squared-error target, PCRD allocation over all components); JPEG XL = libjxl per band, 16-bit "
        "grayscale, offset and lengths in a small header (counted).\n")

    add("## Rate-distortion (mean over images)\n")
    add(f"![RD curves]({rep['png_rel']})\n")
    add("bpppb and PSNR_10000 are arithmetic means over the images (each image weighs the same; the plot, "
        "BD-rates and rates at fixed PSNR use these means). A mean of dB values is sensitive to images "
        "that reach a high PSNR whatever the rate (e.g. a flat 64x64 water chip), so min/max over images "
        "and the pooled values (all band-pixels as one set: total bits / total band-pixels, PSNR of the "
        "pooled MSE) are listed as well.\n")
    for name, points in rep["results"].items():
        c = rep["codecs"][name]
        add(f"### {c['label']}\n")
        add(f"| {c['param_name']} | bpppb | PSNR_10000 [dB] | min PSNR | max PSNR | pooled bpppb | pooled PSNR | learned/all tiles |")
        add("|---|---|---|---|---|---|---|---|")
        for p in sorted(points, key=lambda p: p["mean_bpppb"]):
            ps = [x["psnr"] for x in p["per_image"]]
            add(f"| {_fmt_param(p['param'])} | {_f(p['mean_bpppb'], 4)} | {_f(p['mean_psnr'], 2)} | "
                f"{_f(min(ps), 2)} | {_f(max(ps), 2)} | {_f(p['pooled_bpppb'], 4)} | {_f(p['pooled_psnr'], 2)} | "
                f"{_learned_share(p)} |")
        add("")

    add(f"## BD-rate ({BD_RANGE[0]:g}-{BD_RANGE[1]:g} dB)\n")
    add("Bjontegaard delta rate of the mean RD curves: PCHIP of log(bpppb) over PSNR, integrated over the "
        "PSNR interval both curves cover inside the range. Negative = the first codec needs fewer bits. "
        "The pooled column does the same on the pooled curves (see the RD tables).\n")
    if rep["bd_rates"]:
        add("| codec | vs anchor | BD-rate (mean curves) | PSNR interval used | BD-rate (pooled curves) |")
        add("|---|---|---|---|---|")
        for b in rep["bd_rates"]:
            val = f"{b['bd_rate']:+.1f} %" if b["bd_rate"] is not None else f"n/a ({b['reason']})"
            iv = f"{b['overlap'][0]:.1f}-{b['overlap'][1]:.1f} dB" if b["overlap"] else "-"
            pv = (f"{b['bd_rate_pooled']:+.1f} %" if b["bd_rate_pooled"] is not None
                  else f"n/a ({b['reason_pooled']})")
            add(f"| {b['a']} | {b['b']} | {val} | {iv} | {pv} |")
    else:
        add("(no pair of codecs with results)")
    add("")

    add("## Rate at fixed PSNR\n")
    add("bpppb needed for a mean PSNR_10000 of 40/45/50/55 dB, **interpolated** (PCHIP of log bpppb over "
        "the mean RD curve); `-` = outside the measured range (no extrapolation).\n")
    add("| codec | " + " | ".join(f"{t:g} dB" for t in TARGET_PSNRS) + " |")
    add("|---|" + "---|" * len(TARGET_PSNRS))
    for name, row in rep["rate_at_psnr"].items():
        add(f"| {rep['codecs'][name]['label']} | " + " | ".join(_f(row[f'{t:g}'], 4) for t in TARGET_PSNRS) + " |")
    add("")

    add("## Throughput\n")
    th = rep["throughput"]
    if th.get("skipped"):
        add(f"Not measured: {th['skipped']}\n")
    else:
        add(f"Scene: {th['scene']}. {th['bands']} bands x {th['height']} x {th['width']} = "
            f"{th['mpxb']:.2f} Mpx-band. Best of {th['reps']} runs, {rep['threads']} threads, at the "
            f"parameter whose median PSNR over the benchmark images is closest to {THROUGHPUT_PSNR:g} dB. Mpx-band/s = "
            f"H x W x bands / seconds / 1e6 (machine shared with other jobs: indicative).\n")
        add("| codec | parameter | PSNR on scene | bpppb | encode [s] | decode [s] | encode Mpx-band/s | decode Mpx-band/s |")
        add("|---|---|---|---|---|---|---|---|")
        for name, t in th["codecs"].items():
            if "error" in t:
                add(f"| {rep['codecs'][name]['label']} | - | - | - | - | - | failed: {t['error']} | |")
                continue
            add(f"| {rep['codecs'][name]['label']} | {_fmt_param(t['param'])} | {_f(t['psnr'], 2)} | "
                f"{_f(t['bpppb'], 4)} | {_f(t['encode_s'], 2)} | {_f(t['decode_s'], 2)} | "
                f"{_f(t['encode_mpxb_s'], 2)} | {_f(t['decode_mpxb_s'], 2)} |")
    add("")

    add("## Peak memory\n")
    mem = rep["memory"]
    if mem.get("skipped"):
        add(f"Not measured: {mem['skipped']}\n")
    else:
        add(f"Encode + decode of the {mem['scene']} scene ({SCENE_BANDS} x {SCENE_SIZE} x {SCENE_SIZE} int16) "
            f"in a fresh Python subprocess per codec; peak = VmHWM of that process (/proc/self/status; "
            f"includes the interpreter, imports and the input array; ru_maxrss is not used because Linux "
            f"carries the forking parent's RSS into it across exec); baseline = after imports and "
            f"loading the scene, before encoding.\n")
        add("| codec | parameter | peak RSS [MiB] | baseline [MiB] | peak - baseline [MiB] | seconds |")
        add("|---|---|---|---|---|---|")
        for name, r in mem["codecs"].items():
            if "error" in r:
                add(f"| {rep['codecs'][name]['label']} | - | failed: {r['error']} | | | |")
                continue
            add(f"| {rep['codecs'][name]['label']} | {_fmt_param(r['param'])} | {r['peak_mib']:.0f} | "
                f"{r['baseline_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} | {r['seconds']:.1f} |")
    add("")
    add(f"Raw per-image results: `{rep['json_rel']}`.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


def _rel(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:
        return str(target)


def _jsonable(o):
    """JSON-ready copy: numpy scalars -> Python, inf/NaN -> None (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def _finite(x):
    return None if x is None or not math.isfinite(x) else x


# -- main ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser("tec bench" if Path(sys.argv[0]).name == "tec" else None)
    args = parser.parse_args(argv)
    if not _csv_list(args.efforts) or any(e not in EFFORTS for e in _csv_list(args.efforts)):
        parser.error(f"--efforts: comma-separated values of {', '.join(EFFORTS)}, got {args.efforts!r}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    data = Path(args.data)
    out_md, out_png = Path(args.out_md), Path(args.out_png)
    out_json = Path(args.out_json) if args.out_json else out_png.with_name(f"bench_{args.split}.json")

    all_files = list_images(data, args.split, args.timeseries)
    files = all_files[: args.limit] if args.limit else all_files
    if not files:
        log.error("no %s images in %s", args.split, data / "splits.csv")
        return 2
    images, unreadable = [], {}
    for f in files:
        try:
            images.append(load_image(data, f))
        except TecBandError as exc:      # e.g. a file of another sensor without S2 band names
            log.warning("skipping image %s: %s", f, exc)
            unreadable[f] = str(exc)
    if not images:
        log.error("no readable %s images in %s", args.split, data / "splits.csv")
        return 2
    log.info("%d %s images: %s", len(images), args.split, ", ".join(im["file"] for im in images))
    machine = machine_info(args.threads)     # before this run writes its own outputs into the tree

    codecs, skipped = select_codecs(args)
    if not codecs:
        log.error("no codec to benchmark (models: %s, anchors: %s)", args.models, args.anchors)
        return 2

    results: dict[str, list] = {}
    for codec in codecs:
        try:
            results[codec.name] = run_rd(codec, images, progress)
        except Exception as exc:
            if codec.kind != "tec":
                raise
            # a model without weights or that cannot run here is skipped, not fatal
            why = f"{type(exc).__name__}: {exc}"
            log.warning("skipping TEC model %s: %s", codec.name, why)
            skipped[codec.name] = why
    codecs = [c for c in codecs if c.name in results]
    labels = {c.name: c.label for c in codecs}

    # BD-rates: every TEC model vs every anchor, then anchors vs JPEG 2000
    tec_names = [c.name for c in codecs if c.kind == "tec"]
    anchor_names = [c.name for c in codecs if c.kind == "anchor"]
    pairs = [(t, a) for t in tec_names for a in anchor_names]
    # a model at a higher effort against itself at the default one
    pairs += [(c.name, c.model) for c in codecs if c.kind == "tec" and c.name != c.model and c.model in results]
    pairs += [(a, "jpeg2000") for a in ("jpeg2000_klt", "jpegxl") if a in results and "jpeg2000" in results]
    bd_rows = []
    for a, b in pairs:
        ra, qa = curve(results[a])
        rb, qb = curve(results[b])
        val = bd_rate(ra, qa, rb, qb, BD_RANGE)
        if not math.isfinite(val):
            log.warning("BD-rate %s vs %s: %s", a, b, val.reason)
        pooled = bd_rate(*curve(results[a], "pooled"), *curve(results[b], "pooled"), BD_RANGE)
        bd_rows.append({"a": labels[a], "b": labels[b], "a_name": a, "b_name": b,
                        "bd_rate": _finite(float(val)), "reason": val.reason,
                        "overlap": list(val.overlap) if val.overlap else None,
                        "bd_rate_pooled": _finite(float(pooled)), "reason_pooled": pooled.reason})
    rates = {name: {f"{t:g}": rate_at_psnr(points, t) for t in TARGET_PSNRS} for name, points in results.items()}

    # throughput and memory on a fixed ~1 Mpx real scene
    scene, scene_how = None, ""
    if not (args.no_throughput and args.no_memory):
        scene, scene_how = build_scene(data, all_files)
        if scene is None:
            log.warning("no throughput/memory scene: %s", scene_how)
        else:
            log.info("throughput/memory scene: %s", scene_how)
    throughput: dict = {"codecs": {}}
    if args.no_throughput:
        throughput["skipped"] = "--no-throughput"
    elif scene is None:
        throughput["skipped"] = scene_how
    else:
        a = scene["array"]
        throughput.update(scene=scene_how, bands=a.shape[0], height=a.shape[1], width=a.shape[2],
                          mpxb=a.size / 1e6, reps=args.throughput_reps)
        for codec in codecs:
            param = pick_param(codec, results[codec.name])
            log.info("throughput %s (%s=%s)", codec.name, codec.param_name, param)
            try:
                t = measure_throughput(codec, scene, param, args.throughput_reps)
                t["bpppb"] = bpppb(t["bytes"], a.shape[1], a.shape[2], a.shape[0])
            except Exception as exc:
                log.warning("throughput %s failed: %s", codec.name, exc)
                t = {"error": f"{type(exc).__name__}: {exc}"}
            throughput["codecs"][codec.name] = t
    memory: dict = {"codecs": {}}
    if args.no_memory:
        memory["skipped"] = "--no-memory"
    elif scene is None:
        memory["skipped"] = scene_how
    else:
        memory["scene"] = scene_how
        for codec in codecs:
            param = args.memory_quality if codec.kind == "tec" else pick_param(codec, results[codec.name])
            log.info("peak memory %s (%s=%s) in a subprocess", codec.name, codec.param_name, param)
            try:
                memory["codecs"][codec.name] = measure_memory(codec.kind, codec.model or codec.name, param, scene,
                                                              args.threads, codec.effort or DEFAULT_EFFORT)
            except Exception as exc:
                log.warning("memory %s failed: %s", codec.name, exc)
                memory["codecs"][codec.name] = {"error": str(exc)}
        if not tec_names:
            memory["note"] = "no TEC model ran; anchors only"

    png_title = f"{args.split}: {len(images)} images, mean PSNR vs mean bpppb"
    plot(results, labels, out_png, png_title)

    rep = {
        "command": command_line(argv),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "threads": args.threads,
        "data": str(data),
        "split": args.split,
        "timeseries": args.timeseries,
        "images": [{"file": im["file"], "bands": len(im["bands"]), "band_names": list(im["bands"]),
                    "height": im["array"].shape[1], "width": im["array"].shape[2], "nodata": im["nodata"],
                    "valid_fraction": 1.0 if im["valid"] is None else float(im["valid"].mean())}
                   for im in images],
        "codecs": {c.name: {"label": c.label, "kind": c.kind, "param_name": c.param_name,
                            "params": list(c.params)} for c in codecs},
        "skipped": skipped,
        "skipped_images": unreadable,
        "results": results,
        "bd_rates": bd_rows,
        "rate_at_psnr": rates,
        "throughput": throughput,
        "memory": memory,
        "png_rel": _rel(out_png.resolve(), out_md.resolve().parent),
        "json_rel": _rel(out_json.resolve(), out_md.resolve().parent),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(_jsonable(rep), indent=1, allow_nan=False))
    write_markdown(out_md, rep)
    log.info("wrote %s, %s, %s", out_md, out_png, out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

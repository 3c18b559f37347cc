# SPDX-License-Identifier: Apache-2.0
"""TEC-TT vs TEC-HP on the val time series: real bytes, PSNR_10000, BD-rate, speed, gap and clouds.

    tec bench --temporal [--out docs/temporal_bench.md] [--threads 1] [--quick]
    (the same as python -m terracodec.bench_temporal ...)

Codecs, per date (every number is from real payload bytes that decode to the measured pixels):

* **TT**: TEC-TT, the stack codec (terracodec.stack): keyframe every K dates coded with the
  hyperprior, the other dates with the temporal prior (1-2 earlier dates); the KLT mode (per date
  or shared by the dates of a tile) is the one the model was trained with.
* **TT-off**: the same stack code with the temporal prior switched off (every date a hyperprior
  tile). Same transforms, KLT and levels as TT: isolates the entropy model's gain. With per-date
  KLT it is the image codec's learned tile.
* **HP**: the image codec's learned tile (terracodec.tilecodec.encode_learned), per date with its
  own KLT: what coding each date alone costs today (the learned part of TEC-HP, no classical
  fallback so the curves are the network's).

Curves: every integer network level 0..7 (transforms are frozen, so each codec gives one point per
level); BD-rate over 35-50 dB (terracodec.metrics.bd_rate) on the pooled curve of a stack (total
bytes of its dates vs PSNR of their pooled MSE).

Stacks (val split only): the dense series worldcereal_37MBS_TZA-1101950 (6 bands, 64x64, all
dates incl. cloudy ones), seasonal 4-date stacks from it (dates with cloud fraction <= 0.1,
gaps of 25-60 days), the 2-date ssl4eo_0000200-T43RCP scene (12 bands, 264x264, one tile).
Gap and cloud analysis: 2-date stacks (ref, target) from the dense series at levels 1, 3, 5.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from .metrics import bd_rate

REPO = Path(__file__).resolve().parent.parent
DENSE = "worldcereal_37MBS_TZA-1101950"
PAIR = "ssl4eo_0000200-T43RCP"
LEVELS = list(range(8))


def _psnr_pooled(sq_err_sum: float, n: int) -> float:
    mse = sq_err_sum / max(n, 1)
    return float("inf") if mse == 0 else 10 * math.log10(1e8 / mse)


def _sq(a, b, valid=None):
    d = a.astype(np.float64) - b.astype(np.float64)
    if valid is not None:
        d = d[:, valid]
    return float((d * d).sum()), d.size


def code_stack(arr, dates, model, levels, keyframe_interval, with_hp=True):
    """-> {codec: {level: {"bytes": [per date], "sq": [per date], "n": [per date], "enc_s", "dec_s"}}}"""
    from . import stack, tilecodec

    res = {"TT": {}, "TT-off": {}}
    if with_hp:
        res["HP"] = {}
    for L in levels:
        for name, temporal in (("TT", True), ("TT-off", False)):
            t0 = time.perf_counter()
            out = stack.encode_tile_stack(arr, model, dates=dates, level=L, temporal=temporal,
                                          keyframe_interval=keyframe_interval)
            enc = time.perf_counter() - t0
            payloads = {t: p for t, (p, _, _) in enumerate(out)}
            dec = stack.StackDecoder(lambda d, ty, tx: payloads[d], model.name)
            dec._model = model
            t0 = time.perf_counter()
            decoded = [dec.tile(t, 0, 0) for t in range(len(out))]
            dec_s = time.perf_counter() - t0
            for t in range(len(out)):
                if not np.array_equal(decoded[t], out[t][2]):
                    raise RuntimeError(f"{name} level {L} date {t}: decoder and encoder disagree")
            sq = [_sq(arr[t], decoded[t]) for t in range(len(out))]
            res[name][L] = {"bytes": [len(p) for p, _, _ in out], "sq": [s for s, _ in sq],
                            "n": [n for _, n in sq], "enc_s": enc, "dec_s": dec_s,
                            "kinds": [k for _, k, _ in out]}
        if with_hp:
            by, sqs, ns = [], [], []
            t0 = time.perf_counter()
            for t in range(arr.shape[0]):
                p, recon = tilecodec.encode_learned(arr[t], model.image, float(L), None)
                by.append(len(p))
                s, n = _sq(arr[t], recon)
                sqs.append(s)
                ns.append(n)
            res["HP"][L] = {"bytes": by, "sq": sqs, "n": ns, "enc_s": time.perf_counter() - t0, "dec_s": float("nan")}
    return res


def curve(res_codec, dates_sel=None):
    rates, psnrs = [], []
    for L in sorted(res_codec):
        r = res_codec[L]
        idx = range(len(r["bytes"])) if dates_sel is None else dates_sel
        nbytes = sum(r["bytes"][i] for i in idx)
        n = sum(r["n"][i] for i in idx)
        rates.append(8 * nbytes / n)
        psnrs.append(_psnr_pooled(sum(r["sq"][i] for i in idx), n))
    return rates, psnrs


def bd(res, a, b, dates_sel=None):
    ra, pa = curve(res[a], dates_sel)
    rb, pb = curve(res[b], dates_sel)
    return bd_rate(ra, pa, rb, pb)


def fmt_bd(v) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):+.1f} %"


def seasonal_stacks(rows, n_stacks, min_gap=25, max_gap=60, max_cloud=0.1):
    clear = [i for i, r in enumerate(rows) if r["cloud"] <= max_cloud]
    stacks, used = [], set()
    for start in clear:
        seq = [start]
        for i in clear:
            gap = (rows[i]["when"] - rows[seq[-1]]["when"]).days
            if min_gap <= gap <= max_gap:
                seq.append(i)
            if len(seq) == 4:
                break
        if len(seq) == 4 and not used & set(seq):
            stacks.append(seq)
            used |= set(seq)
        if len(stacks) == n_stacks:
            break
    return stacks


def run(args) -> dict:
    import torch

    from . import stack, tilecodec
    from .train_temporal import load_location

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    model = stack.load_temporal(args.model)
    report = {"model": model.name, "sha256": model.sha256, "threads": args.threads, "levels": LEVELS,
              "klt": model.klt,
              "platform": platform.platform(), "cpu": platform.processor() or platform.machine()}
    t_start = time.time()

    # 1. dense series -------------------------------------------------------------------------
    arr, valid, names, rows = load_location(data / "timeseries" / DENSE)
    n = min(len(rows), args.max_dates)
    arr, rows = arr[:n], rows[:n]
    dates = [r["key"] for r in rows]
    dense = code_stack(arr, dates, model, LEVELS, args.keyframe_interval)
    ki = args.keyframe_interval
    non_key = [t for t in range(n) if t % ki]
    report["dense"] = {
        "location": DENSE, "dates": n, "bands": list(names), "size": list(arr.shape[2:]), "keyframe_interval": ki,
        "curves": {c: curve(dense[c]) for c in dense},
        "bd_tt_vs_hp": float(bd(dense, "TT", "HP")), "bd_tt_vs_ttoff": float(bd(dense, "TT", "TT-off")),
        "bd_tt_vs_hp_nonkey": float(bd(dense, "TT", "HP", non_key)),
        "bd_tt_vs_ttoff_nonkey": float(bd(dense, "TT", "TT-off", non_key)),
        "bd_ttoff_vs_hp": float(bd(dense, "TT-off", "HP")),
        "temporal_chosen": {L: float(np.mean([dense["TT"][L]["kinds"][t] == 3 for t in non_key])) for L in LEVELS},
    }
    # per-date saving at equal level vs gap and cloud (dense series, non-keyframe dates)
    per_date = []
    for t in non_key:
        ref = t - 1
        for L in (1, 3, 5):
            per_date.append({"t": t, "level": L, "gap": (rows[t]["when"] - rows[ref]["when"]).days,
                             "cloud_t": rows[t]["cloud"], "cloud_ref": rows[ref]["cloud"],
                             "tt": dense["TT"][L]["bytes"][t], "tt_off": dense["TT-off"][L]["bytes"][t],
                             "hp": dense["HP"][L]["bytes"][t]})
    report["dense_per_date"] = per_date
    print(f"dense done {time.time() - t_start:.0f}s", flush=True)

    # 2. seasonal 4-date stacks ----------------------------------------------------------------
    full_arr, _, _, full_rows = load_location(data / "timeseries" / DENSE)
    seasonal = []
    for seq in seasonal_stacks(full_rows, args.seasonal):
        sa = full_arr[seq]
        sd = [full_rows[i]["key"] for i in seq]
        res = code_stack(sa, sd, model, LEVELS, 4)
        seasonal.append({"dates": sd, "gaps": [(full_rows[seq[i]]["when"] - full_rows[seq[i - 1]]["when"]).days
                                               for i in range(1, 4)],
                         "bd_tt_vs_hp": float(bd(res, "TT", "HP")),
                         "bd_tt_vs_ttoff": float(bd(res, "TT", "TT-off")),
                         "bd_tt_vs_hp_nonkey": float(bd(res, "TT", "HP", [1, 2, 3])),
                         "curves": {c: curve(res[c]) for c in res}})
    report["seasonal"] = seasonal
    print(f"seasonal done {time.time() - t_start:.0f}s", flush=True)

    # 3. ssl4eo 2-date scene (12 bands, one 264x264 tile) ---------------------------------------
    parr, _, pnames, prows = load_location(data / "timeseries" / PAIR)
    pres = code_stack(parr, [r["key"] for r in prows], model, LEVELS, 8)
    report["pair"] = {"location": PAIR, "dates": [r["key"] for r in prows], "size": list(parr.shape[2:]),
                      "bands": len(pnames), "gap": (prows[1]["when"] - prows[0]["when"]).days,
                      "bd_tt_vs_hp": float(bd(pres, "TT", "HP")), "bd_tt_vs_ttoff": float(bd(pres, "TT", "TT-off")),
                      "bd_tt_vs_hp_second": float(bd(pres, "TT", "HP", [1])),
                      "curves": {c: curve(pres[c]) for c in pres}}
    print(f"pair done {time.time() - t_start:.0f}s", flush=True)

    # 4. gap / cloud pairs from the dense series -------------------------------------------------
    rng = np.random.default_rng(0)
    pairs, product_pairs = [], []
    nrow = len(full_rows)
    for _ in range(args.pairs):
        t = int(rng.integers(1, nrow))
        cands = [r for r in range(t) if 1 <= (full_rows[t]["when"] - full_rows[r]["when"]).days <= 125]
        if not cands:
            continue
        r = int(rng.choice(cands))
        sa = full_arr[[r, t]]
        for L in (1, 3, 5):
            o_tt = stack.encode_tile_stack(sa, model, dates=[full_rows[r]["key"], full_rows[t]["key"]], level=L)
            o_hp = stack.encode_tile_stack(sa, model, level=L, temporal=False)
            pairs.append({"gap": (full_rows[t]["when"] - full_rows[r]["when"]).days, "level": L,
                          "cloud_t": full_rows[t]["cloud"], "cloud_ref": full_rows[r]["cloud"],
                          "tt": len(o_tt[1][0]), "tt_off": len(o_hp[1][0])})
        for q in (2, 5):                # the product: least J at the quality's slope, kind 5 included
            lam = tilecodec.rd_lambda(q)
            kw = dict(lam=lam, floor_db=tilecodec.QUALITY_FLOOR_DB[q])
            o_t = stack.encode_tile_stack(sa, model, dates=[full_rows[r]["key"], full_rows[t]["key"]], **kw)
            o_a = stack.encode_tile_stack(sa, model, temporal=False, **kw)
            j_t, j_a = (tilecodec.rd_cost(sa[1], o[1][2], None, len(o[1][0]), lam) for o in (o_t, o_a))
            product_pairs.append({"gap": (full_rows[t]["when"] - full_rows[r]["when"]).days, "quality": q,
                                  "cloud_t": full_rows[t]["cloud"], "cloud_ref": full_rows[r]["cloud"],
                                  "tt": j_t, "tt_off": j_a, "kind": o_t[1][1]})
    report["pairs"] = pairs
    report["product_pairs"] = product_pairs
    print(f"pairs done {time.time() - t_start:.0f}s", flush=True)

    # 5. the product's stack files (API, qualities) against coding each date alone -------------------
    if args.file_qualities:
        from .anchors import available_anchors

        qualities = [int(q) for q in args.file_qualities.split(",")]
        anchors = available_anchors(["jpeg2000_klt"])
        files = []
        for label, (a_, d_, b_) in [(f"seasonal {i + 1}", (full_arr[seq], [full_rows[j]["key"] for j in seq], names))
                                    for i, seq in enumerate(seasonal_stacks(full_rows, args.seasonal))] + \
                [(f"dense, {n} dates", (arr, dates, names)), ("ssl4eo pair", (parr, [r["key"] for r in prows], pnames))]:
            files.append(dict(label=label, dates=len(d_), size=list(a_.shape[1:]),
                              **file_curves(a_, d_, b_, qualities, anchors)))
            print(f"files {label} done {time.time() - t_start:.0f}s", flush=True)
        report["files"] = files

    # 6. speed: one 256x256x12 date (ssl4eo crop), API encode to quality 5, decode of the 2nd date --
    report["speed"] = speed(parr[:, :, :256, :256], [r["key"] for r in prows], model)
    report["elapsed_s"] = round(time.time() - t_start, 1)
    return report


def speed(arr, dates, model, level: int = 3) -> dict:
    """Seconds per date at one fixed level (one encode attempt per date) and for decoding the second
    date from scratch (its reference's latent included); and the API's closed-loop encode (quality 3:
    level search, classical fallback / anchor)."""
    from . import api, stack

    out = {}
    for name, temporal in (("TT", True), ("HP", False)):
        best_enc, best_dec = float("inf"), float("inf")
        for _ in range(2):                          # best of 2: the machine is shared
            t0 = time.perf_counter()
            o = stack.encode_tile_stack(arr, model, dates=dates, level=level, temporal=temporal)
            best_enc = min(best_enc, (time.perf_counter() - t0) / len(dates))
            payloads = {t: p for t, (p, _, _) in enumerate(o)}
            dec = stack.StackDecoder(lambda d, ty, tx: payloads[d], model.name)
            dec._model = model
            t0 = time.perf_counter()
            dec.tile(1, 0, 0)
            best_dec = min(best_dec, time.perf_counter() - t0)
        t0 = time.perf_counter()
        data = api.encode(arr, quality=3, dates=dates, temporal=temporal, tile_size=256)
        api_enc = (time.perf_counter() - t0) / len(dates)
        with api.open(data) as ds:
            kinds = [e.kind for e in ds._reader.entries]
        out[name] = {"encode_s_per_date": best_enc, "decode_second_date_s": best_dec,
                     "bytes_level": sum(len(p) for p, _, _ in o), "api_encode_s_per_date": api_enc,
                     "api_bytes": len(data), "api_kinds": kinds}
    return out


def file_curves(arr, dates, bands, qualities, anchors) -> dict:
    """The product's stack files (terracodec.encode with dates, qualities 1-8): whole-file rate and
    pooled PSNR_10000 with temporal coding (the default: TEC-TT tiles, predicted tiles, or each date
    alone, least rate-distortion cost per date and tile) and with ``temporal=False``; the anchors
    coding each date alone over their parameter sweeps. Also the tile kinds of non-first dates
    and the encode seconds."""
    from . import api

    T = arr.shape[0]
    n = arr.size
    out = {"curves": {}, "kinds": {}, "encode_s": {}}
    for name, temporal in (("TEC stack", True), ("TEC stack, no temporal", False)):
        rates, psnrs, seconds = [], [], 0.0
        for q in qualities:
            t0 = time.perf_counter()
            data = api.encode(arr, bands, quality=q, dates=dates, temporal=temporal)
            seconds += time.perf_counter() - t0
            with api.open(data) as ds:
                decoded = np.stack([ds.read(date=t) for t in range(T)])
                per_date = len(ds._reader.entries) // T
                kinds = [e.kind for e in ds._reader.entries[per_date:]]
            rates.append(8 * len(data) / n)
            psnrs.append(_psnr_pooled(_sq(arr, decoded)[0], n))
            if temporal:
                out["kinds"][q] = {k: kinds.count(k) / len(kinds) for k in sorted(set(kinds))}
        out["curves"][name] = (rates, psnrs)
        out["encode_s"][name] = seconds
    for anchor in anchors:
        rates, psnrs = [], []
        for param in anchor.params:
            nbytes, sq = 0, 0.0
            for t in range(T):
                code = anchor.encode(arr[t], param)
                nbytes += len(code)
                sq += _sq(arr[t], anchor.decode(code))[0]
            rates.append(8 * nbytes / n)
            psnrs.append(_psnr_pooled(sq, n))
        out["curves"][anchor.label + " per date"] = (rates, psnrs)
    names = list(out["curves"])
    out["bd"] = {f"{a} vs {b}": float(bd_rate(*out["curves"][a], *out["curves"][b]))
                 for a, b in [(names[0], names[1])] + [(names[0], c) for c in names[2:]]}
    return out


def _bins(items, key, edges, labels):
    out = []
    for lo, hi, lab in zip(edges[:-1], edges[1:], labels):
        sel = [it for it in items if lo <= key(it) < hi]
        if sel:
            tt = sum(it["tt"] for it in sel)
            hp = sum(it["tt_off"] for it in sel)
            out.append((lab, len(sel), 100 * (1 - tt / hp)))
    return out


def markdown(rep: dict, command: str) -> str:
    L = []
    a = L.append
    a("# TEC-TT vs TEC-HP on the val time series\n")
    a(f"Made by `{command}` ({rep['elapsed_s']:.0f} s, {rep['threads']} torch thread(s), {rep['cpu']}, "
      f"model `{rep['model']}` sha256 `{rep['sha256'][:12]}`). All numbers are real payload bytes "
      f"(tile header, KLT side information, z and y streams, CRC) that decode to the measured pixels; "
      f"PSNR_10000 over all pixels, pooled MSE over the dates of a stack. BD-rate over 35-50 dB "
      f"(negative = fewer bits than the reference). Codecs: **TT** = TEC-TT stack code (KLT mode "
      f"`{rep['klt']}`); **TT-off** = the same code without the temporal prior (isolates the entropy "
      f"model); **HP** = the image codec's learned tile per date with its own KLT (coding each date "
      f"alone). The levels are the 8 network levels; no classical fallback.\n")
    d = rep["dense"]
    a(f"## Dense series: {d['location']} ({d['dates']} dates, {len(d['bands'])} bands, "
      f"{d['size'][0]}x{d['size'][1]}, keyframe every {d['keyframe_interval']} dates)\n")
    a("| BD-rate | all dates | non-keyframe dates |")
    a("|---|---|---|")
    a(f"| TT vs HP | {fmt_bd(d['bd_tt_vs_hp'])} | {fmt_bd(d['bd_tt_vs_hp_nonkey'])} |")
    a(f"| TT vs TT-off | {fmt_bd(d['bd_tt_vs_ttoff'])} | {fmt_bd(d['bd_tt_vs_ttoff_nonkey'])} |")
    a(f"| TT-off vs HP | {fmt_bd(d['bd_ttoff_vs_hp'])} | |")
    a("")
    nk = d.get("temporal_chosen", {})
    if nk:
        a("Mode decision (a non-keyframe date is coded alone when that is smaller): share of non-keyframe "
          "dates coded as temporal tiles, per level: " + ", ".join(f"{k}: {v:.0%}" for k, v in nk.items()) + "\n")
    a("Pooled curves (bits per pixel per band / PSNR_10000 dB) per level:\n")
    a("| level | " + " | ".join(d["curves"]) + " |")
    a("|---|" + "---|" * len(d["curves"]))
    for i in range(len(rep["levels"])):
        a(f"| {i} | " + " | ".join(f"{c[0][i]:.3f} / {c[1][i]:.2f}" for c in d["curves"].values()) + " |")
    a("")
    a("## Seasonal 4-date stacks (clear dates, 25-60 days apart, keyframe = first date)\n")
    a("| dates | gaps (days) | TT vs HP | TT vs TT-off | TT vs HP, dates 2-4 |")
    a("|---|---|---|---|---|")
    for s in rep["seasonal"]:
        a(f"| {', '.join(x[:10] for x in s['dates'])} | {', '.join(map(str, s['gaps']))} | "
          f"{fmt_bd(s['bd_tt_vs_hp'])} | {fmt_bd(s['bd_tt_vs_ttoff'])} | {fmt_bd(s['bd_tt_vs_hp_nonkey'])} |")
    if rep["seasonal"]:
        vals = [s["bd_tt_vs_hp"] for s in rep["seasonal"] if math.isfinite(s["bd_tt_vs_hp"])]
        vals_nk = [s["bd_tt_vs_hp_nonkey"] for s in rep["seasonal"] if math.isfinite(s["bd_tt_vs_hp_nonkey"])]
        if vals:
            a(f"| **mean** | | **{np.mean(vals):+.1f} %** | | **{np.mean(vals_nk):+.1f} %** |")
    a("")
    p = rep["pair"]
    a(f"## {p['location']}: 2 dates {p['gap']} days apart, {p['bands']} bands, {p['size'][0]}x{p['size'][1]} (one tile)\n")
    a(f"TT vs HP {fmt_bd(p['bd_tt_vs_hp'])} (both dates), {fmt_bd(p['bd_tt_vs_hp_second'])} (second date only); "
      f"TT vs TT-off {fmt_bd(p['bd_tt_vs_ttoff'])}.\n")
    a("## Gain vs gap and cloud cover\n")
    a("Saving = 1 - bytes(TT) / bytes(TT-off) of the target date, same level (levels 1, 3, 5 pooled), "
      "from random (ref, target) pairs of the dense series coded as 2-date stacks. Cloud fraction from "
      "index.csv.\n")
    pairs, product = rep["pairs"], rep.get("product_pairs") or []
    if product:
        a("**Product** columns: the same pairs coded by the stack coder at the slopes of qualities 2 and 5 "
          "(the target date's least-cost code among TEC-TT, predicted from the reference (kind 5) and "
          "alone, quality floor included) against the target coded alone; saving = 1 - J(stack) / "
          "J(alone) of the target date, J = SSE + lambda x bits.\n")
    gap_bins = ([0, 6, 11, 21, 41, 81, 200], ["1-5", "6-10", "11-20", "21-40", "41-80", "81-125"])
    by_gap = {lab: (cnt, s) for lab, cnt, s in _bins(product, lambda it: it["gap"], *gap_bins)}
    a("| gap (days) | pairs x levels | saving | product: pairs x qualities | product: J saving |")
    a("|---|---|---|---|---|")
    for lab, cnt, s in _bins(pairs, lambda it: it["gap"], *gap_bins):
        pc, ps = by_gap.get(lab, (0, float("nan")))
        a(f"| {lab} | {cnt} | {s:.1f} % | {pc} | {ps:.1f} % |")
    a("")
    a("| target cloud | ref cloud | pairs x levels | saving | product: pairs x qualities | product: J saving |")
    a("|---|---|---|---|---|---|")
    cl = lambda c: "clear (<0.1)" if c < 0.1 else ("cloudy (>0.9)" if c > 0.9 else "partly")
    for ct in ("clear (<0.1)", "partly", "cloudy (>0.9)"):
        for cr in ("clear (<0.1)", "partly", "cloudy (>0.9)"):
            sel = [it for it in pairs if cl(it["cloud_t"]) == ct and cl(it["cloud_ref"]) == cr]
            psel = [it for it in product if cl(it["cloud_t"]) == ct and cl(it["cloud_ref"]) == cr]
            if sel:
                s = 100 * (1 - sum(it["tt"] for it in sel) / sum(it["tt_off"] for it in sel))
                ps = 100 * (1 - sum(it["tt"] for it in psel) / sum(it["tt_off"] for it in psel)) if psel else float("nan")
                a(f"| {ct} | {cr} | {len(sel)} | {s:.1f} % | {len(psel)} | {ps:.1f} % |")
    a("")
    if product:
        kinds = [it["kind"] for it in product]
        a("Product: the target date's tile kind over those pairs x qualities: "
          + ", ".join(f"{k}: {kinds.count(k) / len(kinds):.0%}" for k in sorted(set(kinds))) + ".\n")
    a("Dense series, consecutive dates (ref = previous date), same saving by level:\n")
    a("| level | saving vs TT-off | saving vs HP |")
    a("|---|---|---|")
    for lev in (1, 3, 5):
        sel = [it for it in rep["dense_per_date"] if it["level"] == lev]
        a(f"| {lev} | {100 * (1 - sum(i['tt'] for i in sel) / sum(i['tt_off'] for i in sel)):.1f} % | "
          f"{100 * (1 - sum(i['tt'] for i in sel) / sum(i['hp'] for i in sel)):.1f} % |")
    a("")
    if rep.get("files"):
        a("## The product's stack files: temporal coding against each date alone\n")
        a("What `terracodec.encode(stack, dates=...)` writes at qualities "
          f"{min(rep['files'][0]['kinds'])}-{max(rep['files'][0]['kinds'])}: whole-file bytes (header, index, "
          "tiles) against PSNR_10000 over all pixels of all dates. **TEC stack** is the default: per date and "
          "tile the least rate-distortion cost of the TEC-TT tile, a *predicted* tile (kind 5: the residual "
          "to a prediction from an earlier date's decoded pixels, coded classically) and the date coded "
          "alone; **no temporal** is `temporal=False` (every date alone, same container); the anchor codes "
          "each date alone over its sweep. BD-rate over 35-50 dB.\n")
        others = [k for k in rep["files"][0]["bd"]]
        a("| stack | dates | bands x size | " + " | ".join(others) + " | non-first date tiles: kind share at q1 / q4 / q8 | encode s, stack / no temporal |")
        a("|---|---|---|" + "---|" * len(others) + "---|---|")
        for f in rep["files"]:
            def share(q):
                k = f["kinds"].get(q, f["kinds"].get(str(q), {}))
                return ", ".join(f"{kind}: {v:.0%}" for kind, v in k.items())
            es = f["encode_s"]
            a(f"| {f['label']} | {f['dates']} | {f['size'][0]} x {f['size'][1]} x {f['size'][2]} | "
              + " | ".join(fmt_bd(f["bd"][k]) for k in others)
              + f" | {share(1)} / {share(4)} / {share(8)} | {es['TEC stack']:.0f} / {es['TEC stack, no temporal']:.0f} |")
        a("")
        a("Tile kinds: 0 learned, 1 classical, 2 lossless, 3 TEC-TT, 4 coarse grids, 5 predicted. Encode "
          "seconds are summed over the qualities (the first includes loading torch and the TEC-TT weights).\n")
    s = rep["speed"]
    a(f"## Speed (256x256x12 crop of the ssl4eo scene, 2 dates, {rep['threads']} torch thread(s), "
      "while other jobs used the machine's 2 cores: upper bounds)\n")
    a("| codec | encode s/date, level 3 | decode date 2 (s) | bytes, level 3 | API encode s/date, quality 3 | API bytes | API tile kinds |")
    a("|---|---|---|---|---|---|---|")
    for k, v in s.items():
        a(f"| {k} | {v['encode_s_per_date']:.2f} | {v['decode_second_date_s']:.2f} | {v['bytes_level']} | "
          f"{v['api_encode_s_per_date']:.2f} | {v['api_bytes']} | {v['api_kinds']} |")
    a("")
    a("Level 3: one encode attempt per date (g_a, hyperprior, temporal prior, rANS, synthesis for the "
      "encoder's own reconstruction). Decoding date 2 includes entropy-decoding the latent of date 1 "
      "(no synthesis for it). The API row is the whole closed loop: network levels walked to the least "
      "rate-distortion cost at the quality's slope, and the classical codec kept where its cost is lower; "
      "for `temporal=False` it is the core's per-date encoder (learned, classical or lossless, least cost "
      "kept). Tile kinds: 0 learned, 1 classical, 3 temporal, 4 coarse grids, 5 predicted.\n")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from .train import DEFAULT_DATA

    p = argparse.ArgumentParser(prog="tec bench --temporal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=str(REPO / "docs" / "temporal_bench.md"))
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-dates", type=int, default=1000)
    p.add_argument("--keyframe-interval", type=int, default=8)
    p.add_argument("--seasonal", type=int, default=6, help="number of seasonal 4-date stacks")
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--file-qualities", default="1,2,3,4,5,6,7,8",
                   help="qualities of the stack-file comparison ('' skips it)")
    args = p.parse_args(argv)
    import sys
    import warnings

    warnings.filterwarnings("ignore")
    rep = run(args)
    cmd = "python -m terracodec.bench_temporal" + ("" if argv is None and len(sys.argv) == 1 else
                                                  " " + " ".join(argv if argv is not None else sys.argv[1:]))
    Path(args.out).write_text(markdown(rep, cmd))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# SPDX-License-Identifier: Apache-2.0
"""Time stacks in .tec files and TEC-TT, the temporal codec.

A stack is ``(dates, bands, height, width)`` on one grid. The container stores one payload per
(date, tile), date-major (docs/FORMAT.md). With TEC-TT (the default for >= 2 dates):

* every date of a tile has its own KLT, fitted exactly as the image codec fits it (the prior is told,
  per component, how well the reference date's basis matches the current one). Weights trained in
  the "shared" mode instead give all dates of a tile one basis (pooled within-date covariance) and
  store it only in the keyframe; the payload says which (flag bit 0 of kind 3);
* keyframes (dates ``0, K, 2K, ...`` with K = ``keyframe_interval``) are ordinary learned tiles
  (kind 0, the image model's hyperprior) and decode on their own;
* the other dates are *temporal* tiles (kind 3): the latent is coded with the image model's
  hyperprior refined by :class:`terracodec.models.temporal.TemporalPrior`, which looks at the
  decoded latents of 1-2 earlier dates of the same tile since the last keyframe. Reading date t
  entropy-decodes at most K-1 earlier latents (no synthesis), never the whole stack;
* as for single images, a date's tile is the classical kind when that has the lower rate-distortion
  cost at the quality's slope; later dates then reference the dates that have a latent;
* mode decision: a date with references is also coded alone (kind 0) and the cheaper is kept;
* a later date may instead be a *predicted* tile (kind 5, :mod:`terracodec.interdate`): its residual
  to a prediction from the decoded pixels of an earlier date since the keyframe whose tile decodes
  without a model, kept where its rate-distortion cost is the lowest. On dense clear series this
  is most of the temporal gain (BENCHMARKS.md, time series);
* a date below the quality's PSNR floor is recoded alone before later dates refer to it.

All inference runs in float64 (no oneDNN) so decoding gives the same pixels whatever the thread
count. ``temporal=False`` codes every date alone with the image codec (terracodec.tilecodec).
"""
from __future__ import annotations

import datetime as _dt
import io
import math
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import interdate, spectral, tilecodec, workers as workers_module
from .errors import TecDecodeError, TecError, TecFormatError, TecInputError, TecModelError
from .tilecodec import (KIND_LEARNED, KIND_PREDICTED, KIND_TEMPORAL, TileHeader,
                        kind4_groups, nodata_mask, pack_header, rd_cost, rd_lambda, restore_nodata, seal,
                        unseal, uses_av1, uses_coarse_grid)

DEFAULT_KEYFRAME_INTERVAL = 8
MAX_REFS = 2
MAX_LEVEL = 7
LEVEL_TRIES = 3          # network levels tried per date when coding to a rate-distortion slope
_LEARNED = struct.Struct("<4sfB")             # kind 0 body start (terracodec.tilecodec)
_TEMPORAL = struct.Struct("<4sfBB")           # tag, level, n_refs, flags
_REF = struct.Struct("<Hf")                   # dates back, gap in days
FLAG_BASIS_FROM_REF = 1


def fit_stack_klt(stack: np.ndarray, valid: np.ndarray):
    """One KLT basis for all dates of a (T, B, h, w) tile and per-date band means.

    The basis diagonalises the pooled within-date covariance (each date centred on its own means)
    over every date's valid pixels, so latents of different dates live in the same component space.
    -> (means (T, B) float64 holding float32 values, basis_q (B, B) float16 values)."""
    T, B = stack.shape[:2]
    means = np.empty((T, B), np.float64)
    parts = []
    for t in range(T):
        v = valid[t].reshape(-1)
        flat = stack[t].reshape(B, -1)
        s = flat[:, v] if v.any() else flat
        means[t] = s.mean(axis=1).astype(np.float32)
        parts.append(s - means[t][:, None])
    pooled = np.concatenate(parts, axis=1)
    if pooled.shape[1] > 65536:                      # deterministic subsample
        pooled = pooled[:, :: pooled.shape[1] // 65536 + 1]
    _, basis = spectral.fit_klt(pooled)              # the centred samples have ~zero mean
    return means, spectral.quantize_basis(basis)


# -- model -------------------------------------------------------------------------------------------
@dataclass
class TemporalModel:
    image: object            # weights.LoadedModel: the frozen transforms + hyperprior (keyframes)
    prior64: object          # TemporalPrior in float64
    klt: str = "shared"      # how the prior was trained: "date" (per-date KLT) or "shared"

    @property
    def name(self):
        return self.image.name

    @property
    def sha256(self):
        return self.image.sha256


def default_temporal_model() -> str:
    from .weights import _manifest

    models = _manifest()["models"]
    names = sorted(n for n, e in models.items() if e.get("temporal"))
    if not names:
        raise TecModelError("no temporal (TEC-TT) model is installed; use temporal=False")
    return names[-1]


def is_temporal_model(name: str | None) -> bool:
    from .weights import _entry

    try:
        return bool(_entry(name)[1].get("temporal"))
    except TecModelError:
        return False


@lru_cache(maxsize=4)
def _load_prior(path: str, sha: str):
    import torch

    from .models.temporal import TemporalPrior
    from .weights import sha256_file

    if sha256_file(__import__("pathlib").Path(path)) != sha:
        raise TecModelError(f"weights {path} do not match their manifest sha256")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if "temporal" not in ck:
        raise TecModelError(f"{path} holds no temporal prior")
    config = dict(ck["temporal_config"])
    klt = config.pop("klt", "shared")
    prior = TemporalPrior(**config)
    prior.load_state_dict(ck["temporal"])
    return prior.double().eval(), klt


def load_temporal(name: str | None = None) -> TemporalModel:
    from .weights import _entry, load_model, weights_dir

    name = name or default_temporal_model()
    _, entry = _entry(name)
    if not entry.get("temporal"):
        raise TecModelError(f"model {name!r} is not a temporal (TEC-TT) model")
    image = load_model(name)
    prior, klt = _load_prior(str(weights_dir() / entry["file"]), entry["sha256"])
    return TemporalModel(image, prior, klt)


# -- one tile position, all dates --------------------------------------------------------------------
@dataclass
class _State:
    """What later dates of the same tile need from a decoded date: its ungained latent and basis."""
    y_u: object
    basis: np.ndarray


def _gains(model, level):
    import torch

    qt = torch.tensor([float(level)], dtype=torch.float64)
    gain, inv_gain, hyper_gain = model.image.net64.gains(qt)
    return qt, gain, hyper_gain


def _aligns(model, basis, ref_bases):
    import torch

    from .models.temporal import alignment

    if not getattr(model.prior64, "align", 0):
        return None
    return [torch.from_numpy(alignment(basis, b, model.prior64.align))[None] for b in ref_bases]


def _entropy_params(model, level, z_hat, refs, gaps, aligns=None):
    """(scales, means) in gained latent space for the y of one date; refs: ungained latents."""
    import torch

    _, gain, hyper_gain = _gains(model, level)
    scales, mu = tilecodec._entropy_params(model.image, z_hat, hyper_gain)
    if refs:
        sig = scales.clamp_min(0.11)
        mean_u, scale_u = model.prior64(mu / gain, sig / gain, torch.log(gain), list(refs),
                                        [torch.tensor([float(g)], dtype=torch.float64) for g in gaps], aligns)
        mu, scales = mean_u * gain, scale_u * gain
    return scales, mu


def _code_latent(model, y_u, level, refs, gaps, aligns=None):
    """-> (z string, y string, y_hat gained) for an ungained latent at ``level``."""
    import torch

    net = model.image.net
    _, gain, hyper_gain = _gains(model, level)
    y = y_u * gain
    z = model.image.net64.h_a(y) * hyper_gain
    z_strings = net.entropy_bottleneck.compress(z)
    z_hat = net.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
    scales, mu = _entropy_params(model, level, z_hat, refs, gaps, aligns)
    indexes = tilecodec._scale_indexes(net, scales)
    symbols = torch.round(y - mu)
    y_str = tilecodec._gaussian_tables(model.image).encode(symbols, indexes)
    return z_strings[0], y_str, symbols + mu


def _decode_latent(model, level, shape, z_str, y_str, refs, gaps, aligns=None):
    from .models.tec import TecImageModel

    net = model.image.net
    ph, pw = TecImageModel.pad_size(*shape)
    z_hat = net.entropy_bottleneck.decompress([z_str], (ph // 32, pw // 32))
    scales, mu = _entropy_params(model, level, z_hat, refs, gaps, aligns)
    indexes = tilecodec._scale_indexes(net, scales)
    return tilecodec._gaussian_tables(model.image).decode(y_str, indexes) + mu


def _synthesize(model, y_hat, level, shape, means, basis, dtype):
    qt, _, _ = _gains(model, level)
    count, h, w = shape
    return tilecodec._synthesize(model.image, y_hat, qt, count, h, w, means, basis, dtype)


def _streams(z_str, y_str) -> bytes:
    return struct.pack("<I", len(z_str)) + z_str + struct.pack("<I", len(y_str)) + y_str


def _build_payload(kind, tile, nodata, mask, model, level, means_t, basis, refs_meta, z_str, y_str,
                   basis_from_ref):
    head = pack_header(kind, tile, nodata, mask)
    tag = bytes.fromhex(model.sha256[:8])
    if kind == KIND_LEARNED:                  # exactly a TEC-HP tile: decodable by tilecodec alone
        body = _LEARNED.pack(tag, float(level), 0) + means_t.astype("<f4").tobytes() + \
            basis.astype("<f2").tobytes()
    else:
        body = _TEMPORAL.pack(tag, float(level), len(refs_meta), FLAG_BASIS_FROM_REF if basis_from_ref else 0)
        body += b"".join(_REF.pack(back, gap) for back, gap in refs_meta)
        body += means_t.astype("<f4").tobytes()
        if not basis_from_ref:
            body += basis.astype("<f2").tobytes()
    return seal(head + body + _streams(z_str, y_str))


def _gap_days(dates, t, r) -> float:
    a, b = _parse_date(dates[t]), _parse_date(dates[r])
    if a is None or b is None:
        return 5.0 * (t - r)                  # unknown dates: one nominal revisit per date
    return float(max(0.0, (a - b).total_seconds() / 86400.0))


def _parse_date(d):
    if d is None:
        return None
    if isinstance(d, _dt.datetime):
        return d
    if isinstance(d, _dt.date):
        return _dt.datetime(d.year, d.month, d.day)
    try:
        return _dt.datetime.fromisoformat(str(d).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def _coded_alone(payload: bytes):
    """(payload, kind, decoded pixels) of a classical or lossless tile (decode_tile restores nodata)."""
    return payload, TileHeader(unseal(payload)).kind, tilecodec.decode_tile(payload)


def _predicted_code(tile, nodata, out, t, key, lam, effort):
    """((payload, kind 5, decoded pixels), J) of date ``t`` predicted from the earlier date (of the
    last MAX_REFS since the keyframe ``key`` whose tiles decode without a model) that the
    prediction fits best, or None."""
    refs = [r for r in range(t - 1, key - 1, -1) if out[r][1] in interdate.REFERENCE_KINDS][:MAX_REFS]
    if not refs:
        return None
    fits = [(f, r) for f, r in ((interdate.fit(out[r][2], tile, interdate.fit_valid(tile, nodata, out[r][2])), r)
                                for r in refs) if f is not None]
    if not fits:
        return None
    fitted, r = min(fits, key=lambda f: f[0][1])
    code = interdate.encode(tile, nodata, out[r][2], t - r, lam, fitted, effort=effort)
    if code is None:
        return None
    payload, j, decoded = code
    return (payload, KIND_PREDICTED, decoded), j


def _alone_classical(tile, nodata, lam, effort):
    """((payload, kind, decoded pixels), J) of a date coded alone by the classical codec."""
    payload, j = tilecodec.encode_classical(tile, nodata, lam, effort=effort)
    return _coded_alone(payload), j


class _AloneCodes:
    """The classical code of each date alone (but those ``skip`` marks), in date order. They do not
    depend on earlier dates, so with a ``pool`` (a CodingPool whose threads are idle: the caller is
    not one of them) up to AHEAD of them are coded in its threads while the caller codes the dates
    that need earlier ones (predicted tiles); the codes are the same either way."""

    AHEAD = 4

    def __init__(self, tiles, skip, nodata, lam, effort, pool=None):
        self._args = (nodata, lam, effort)
        self._tiles, self._pool = tiles, pool
        self._queue = [t for t in range(len(tiles)) if not skip[t]]
        self._futures = {}

    def get(self, t):
        if self._pool is None:
            return _alone_classical(self._tiles[t], *self._args)
        while self._queue and len(self._futures) < self.AHEAD:
            d = self._queue.pop(0)
            self._futures[d] = self._pool.submit(_alone_classical, self._tiles[d], *self._args)
        return self._futures.pop(t).result()


def encode_tile_stack(tiles: np.ndarray, model: TemporalModel, *, dates=None, nodata=None,
                      lam: float | None = None, level: float | None = None,
                      keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL, temporal: bool = True,
                      klt: str | None = None, mode_decision: bool = True, classical: bool = True,
                      effort: str = tilecodec.DEFAULT_EFFORT, floor_db: float | None = None, pool=None):
    """Code one tile position over all dates: ``tiles`` (T, B, h, w).

    Either ``lam`` (a rate-distortion slope, see tilecodec.rd_lambda: the network level of least
    J = SSE + lam * bits near the one trained for it; the classical codec at the same slope replaces
    it when its J is lower, as for single images) or a fixed ``level`` (benchmarks).
    ``temporal=False`` codes every date alone (kind 0, the image codec's hyperprior).
    ``mode_decision``: a date with references is also coded alone and the cheaper payload is kept
    (smaller at a fixed level, lower J with ``lam``), so TEC-TT never costs more than coding the
    date alone. ``classical=False`` (benchmarks, tests) never replaces the model's code by the
    classical one (nor applies ``floor_db``); ``effort`` is the classical encoder's
    (tilecodec.EFFORTS). A date whose code is below ``floor_db`` (PSNR_10000 over its valid pixels;
    the writers pass the quality's tilecodec.QUALITY_FLOOR_DB) is recoded alone to reach it, as
    single images are, before later dates refer to it. ``pool``: an idle CodingPool that codes the
    dates alone ahead of the dates that refer to earlier ones (same bytes). -> list of (payload,
    kind, decoded pixels) per date."""
    import torch

    from .models.tec import IN_CHANNELS, pad_replicate

    T, B, h, w = tiles.shape
    floor_db = floor_db if classical else None
    dates = list(dates) if dates is not None else [None] * T
    masks = [nodata_mask(tiles[t], nodata) for t in range(T)]
    all_nodata = [m is not None and m.all() for m in masks]
    valid = np.stack([np.ones((h, w), bool) if m is None else ~m.any(axis=0) for m in masks])
    x = tiles.astype(np.float64)
    klt = klt or model.klt
    if klt == "shared":
        means, shared = fit_stack_klt(x, valid)
        bases = [shared] * T
    else:                                  # per date, exactly as the image codec fits it
        fits = [tilecodec._fit_tile_klt(x[t], valid[t] if valid[t].any() else np.ones_like(valid[t]))
                for t in range(T)]
        means = np.stack([m for m, _ in fits])
        bases = [b for _, b in fits]
    states: dict[int, _State] = {}
    out = []
    prev_level = None
    alone_codes = None
    if level is None and classical:
        alone_codes = _AloneCodes(tiles, all_nodata, nodata, lam, effort, pool)
    for t in range(T):
        tile, mask = tiles[t], masks[t]
        if all_nodata[t]:
            out.append(_coded_alone(tilecodec.encode_lossless(tile, nodata)))
            continue
        key = (t // keyframe_interval) * keyframe_interval
        classical_code = None
        if level is None and classical:
            # as the image codec does: the classical code at the same slope (or its residual to a
            # prediction from an earlier date, when that costs less), and when a float32 estimate
            # of the model's cost is far above it, skip the float64 model passes
            predicted = _predicted_code(tile, nodata, out, t, key, lam, effort) if temporal else None
            classical_code = alone_codes.get(t)
            if predicted is not None and predicted[1] < classical_code[1]:
                classical_code = predicted
            est = tilecodec._estimate_learned_cost(tile, model.image, tilecodec.network_level(lam), mask, lam)
            if est > tilecodec.LEARNED_GIVE_UP * classical_code[1]:
                out.append(_floored(classical_code[0], tile, nodata, mask, floor_db))
                continue
        xt = x[t] if mask is None else np.where(mask, means[t][:, None, None], x[t])
        comps = np.zeros((IN_CHANNELS, h, w), np.float32)
        basis = bases[t]
        comps[:B] = spectral.forward(xt, means[t], basis)
        with torch.no_grad():
            y_u = model.image.net64.g_a(pad_replicate(torch.from_numpy(comps)[None]).double())
        ref_ids = [r for r in range(t - 1, key - 1, -1) if r in states][:MAX_REFS] if temporal else []
        refs = [states[r].y_u for r in ref_ids]
        gaps = [float(np.float32(_gap_days(dates, t, r))) for r in ref_ids]     # as stored (f32)
        refs_meta = [(t - r, g) for r, g in zip(ref_ids, gaps)]
        aligns = _aligns(model, bases[t], [states[r].basis for r in ref_ids]) if ref_ids else None

        def attempt(L, use_refs):
            r_ = refs if use_refs else []
            with torch.no_grad():
                z_str, y_str, y_hat = _code_latent(model, y_u, L, r_, gaps, aligns)
                recon = _synthesize(model, y_hat, L, (B, h, w), means[t], basis, tile.dtype)
            k = KIND_TEMPORAL if r_ else KIND_LEARNED
            payload = _build_payload(k, tile, nodata, mask, model, L, means[t], basis,
                                     refs_meta if r_ else [], z_str, y_str, bool(r_) and klt == "shared")
            recon = restore_nodata(recon, TileHeader(unseal(payload)))
            _, gain, _ = _gains(model, L)
            return payload, recon, y_hat / gain, k

        def cost(res):
            return rd_cost(tile, res[1], mask, len(res[0]), lam)

        def best_at(L):
            """Mode decision: the temporal code, or the date alone when that is cheaper."""
            res = attempt(L, True)
            if ref_ids and mode_decision:
                alone = attempt(L, False)
                if (cost(alone) < cost(res)) if lam is not None else len(alone[0]) < len(res[0]):
                    res = alone
            return res

        if level is not None:
            chosen = best_at(level)
        else:
            tried = {}
            L = prev_level if prev_level is not None else tilecodec.network_level(lam)
            tried[L] = best_at(L)
            for direction in (-1.0, 1.0):      # walk to the level of least J, a few tries
                moved = False
                while len(tried) < LEVEL_TRIES and 0 <= L + direction <= MAX_LEVEL:
                    res = best_at(L + direction)
                    tried[L + direction] = res
                    if cost(res) >= cost(tried[L]):
                        break
                    L, moved = L + direction, True
                if moved:
                    break
            prev_level = L
            chosen = tried[L]
            if classical_code is not None and classical_code[1] < cost(chosen):
                out.append(_floored(classical_code[0], tile, nodata, mask, floor_db))
                continue
        payload, recon, y_hat_u, kind = chosen
        code = _floored((payload, kind, recon), tile, nodata, mask, floor_db)
        if code[1] == kind:                      # kept: later dates may refer to its latent
            states[t] = _State(y_hat_u, basis)
        out.append(code)
    return out


def _floored(code, tile, nodata, mask, floor_db):
    """``code`` (payload, kind, decoded pixels), or the date coded alone to reach ``floor_db``."""
    if floor_db is None or code[1] == tilecodec.KIND_LOSSLESS or tilecodec.tile_psnr(tile, code[2], mask) >= floor_db:
        return code
    return _coded_alone(tilecodec.encode_classical_floor(tile, nodata, floor_db))


# -- decoding ----------------------------------------------------------------------------------------
def _read_streams(payload, off):
    return tilecodec.read_streams(payload, off, 2)


def parse_tile(payload: bytes):
    """-> (head, dict) for a kind 0 (hyperprior) or kind 3 payload (CRC checked)."""
    payload = unseal(payload)
    head = TileHeader(payload)
    n = head.count
    off = head.body
    info = {"refs": [], "basis": None}
    if head.kind == KIND_LEARNED:
        if len(payload) < off + _LEARNED.size:
            raise TecFormatError("learned tile truncated")
        tag, level, entropy = _LEARNED.unpack_from(payload, off)
        if entropy != 0:
            raise TecFormatError("a stack keyframe must use the hyperprior (entropy 0)")
        off += _LEARNED.size
        from_ref = False
    elif head.kind == KIND_TEMPORAL:
        if len(payload) < off + _TEMPORAL.size:
            raise TecFormatError("temporal tile truncated")
        tag, level, n_refs, flags = _TEMPORAL.unpack_from(payload, off)
        off += _TEMPORAL.size
        if n_refs < 1 or n_refs > 8 or len(payload) < off + n_refs * _REF.size:
            raise TecFormatError(f"temporal tile has a bad reference list ({n_refs})")
        info["refs"] = [_REF.unpack_from(payload, off + i * _REF.size) for i in range(n_refs)]
        off += n_refs * _REF.size
        from_ref = bool(flags & FLAG_BASIS_FROM_REF)
    else:
        raise TecFormatError(f"tile kind {head.kind} carries no latent")
    if not 0 <= level <= MAX_LEVEL or not math.isfinite(level):
        raise TecFormatError(f"tile level {level} is invalid")
    need = off + 4 * n + (0 if from_ref else 2 * n * n)
    if len(payload) < need:
        raise TecFormatError("tile truncated in its KLT side information")
    info["means"] = np.frombuffer(payload, "<f4", n, off).astype(np.float64)
    off += 4 * n
    if not from_ref:
        info["basis"] = np.frombuffer(payload, "<f2", n * n, off).astype(np.float64).reshape(n, n)
        off += 2 * n * n
    info.update(tag=tag, level=float(level), streams=_read_streams(payload, off))
    return head, info


class StackDecoder:
    """Decodes (date, tile) of a stack, caching the latents that later dates reference and the
    pixels of the last PIXEL_CACHE predicted (kind 5) tiles and their references.

    ``fetch(d, ty, tx)`` returns the payload bytes (the container reader checks CRCs)."""

    PIXEL_CACHE = 8

    def __init__(self, fetch, model_name: str | None, cache_size: int = 64):
        self._fetch = fetch
        self._model_name = model_name
        self._model = None
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._pixels: OrderedDict = OrderedDict()
        self._lock = threading.RLock()

    def _predicted(self, d, ty, tx, payload) -> np.ndarray:
        """A kind 5 tile: walk its references back to a date that decodes on its own (or is
        cached), then decode forward."""
        chain = []
        while True:
            with self._lock:
                hit = self._pixels.get((d, ty, tx))
            if hit is not None:
                pixels = hit
                break
            kind = payload[4] if len(payload) > 4 else -1
            if kind != KIND_PREDICTED:
                if kind not in interdate.REFERENCE_KINDS:
                    raise TecFormatError(f"a predicted tile references date {d}, a tile of kind {kind}")
                pixels = tilecodec.decode_tile(payload)
                break
            chain.append((d, payload))
            r = d - interdate.reference(payload)
            if r < 0:
                raise TecFormatError(f"predicted tile of date {d} references date {r}")
            try:
                payload = self._fetch(r, ty, tx)
            except TecError as exc:
                raise type(exc)(f"reference date {r} of this tile cannot be read: {exc}") from exc
            d = r
        for d, payload in reversed(chain):
            pixels = interdate.decode(payload, pixels)
            pixels.flags.writeable = False
            with self._lock:
                self._pixels[(d, ty, tx)] = pixels
                while len(self._pixels) > self.PIXEL_CACHE:
                    self._pixels.popitem(last=False)
        return pixels

    def model(self) -> TemporalModel:
        if self._model is None:
            self._model = load_temporal(self._model_name)
        return self._model

    def _check_tag(self, tag):
        m = self.model()
        if tag != bytes.fromhex(m.sha256[:8]):
            raise TecDecodeError(f"tile was written by weights {tag.hex()}..., not by {m.name} ({m.sha256[:8]}...)")

    def _state(self, d, ty, tx, depth=0):
        """(_State or None, pixels or None if not needed)"""
        key = (d, ty, tx)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if depth > 64:
            raise TecFormatError("temporal references nest too deep")
        payload = self._fetch(d, ty, tx)
        kind = payload[4] if len(payload) > 4 else -1
        if kind not in (KIND_LEARNED, KIND_TEMPORAL):
            return None
        head, info = parse_tile(payload)
        self._check_tag(info["tag"])
        refs, gaps, ref_bases, basis = [], [], [], info["basis"]
        for i, (back, gap) in enumerate(info["refs"]):
            r = d - back
            if back < 1 or r < 0:
                raise TecFormatError(f"temporal tile of date {d} references date {r}")
            try:
                st = self._state(r, ty, tx, depth + 1)
            except TecError as exc:
                raise type(exc)(f"reference date {r} of this tile cannot be decoded: {exc}") from exc
            if st is None:
                raise TecFormatError(f"temporal tile of date {d} references date {r}, which has no latent")
            refs.append(st[0].y_u)
            ref_bases.append(st[0].basis)
            gaps.append(gap)
            if i == 0 and basis is None:
                basis = st[0].basis
        import torch

        aligns = _aligns(self.model(), basis, ref_bases) if refs else None
        with torch.no_grad():
            y_hat = _decode_latent(self.model(), info["level"], (head.height, head.width),
                                   info["streams"][0], info["streams"][1], refs, gaps, aligns)
            _, gain, _ = _gains(self.model(), info["level"])
            state = (_State(y_hat / gain, basis), y_hat, head, info)
        with self._lock:
            self._cache[key] = state
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return state

    def tile(self, d, ty, tx) -> np.ndarray:
        payload = self._fetch(d, ty, tx)
        kind = payload[4] if len(payload) > 4 else -1
        if kind == KIND_PREDICTED:
            return self._predicted(d, ty, tx, payload)
        if kind != KIND_TEMPORAL:                 # keyframes etc. decode on their own
            return tilecodec.decode_tile(payload, model=self._model_name)
        try:
            st = self._state(d, ty, tx)
        except TecError:
            raise
        except Exception as exc:                      # torch / rANS on bad streams
            raise TecDecodeError(f"{type(exc).__name__}: {exc}") from exc
        state, y_hat, head, info = st
        import torch

        with torch.no_grad():
            out = _synthesize(self.model(), y_hat, info["level"], head.shape, info["means"], state.basis,
                              head.dtype)
        return restore_nodata(out, head)


# -- whole stacks ------------------------------------------------------------------------------------
def check_dates(dates, n: int) -> list:
    if dates is None:
        return [None] * n
    dates = list(dates)
    if len(dates) != n:
        raise TecInputError(f"{len(dates)} dates given for a stack of {n} dates")
    out = []
    for d in dates:
        if d is None:
            out.append(None)
            continue
        if isinstance(d, (_dt.date, _dt.datetime)):
            out.append(d.isoformat())
            continue
        if not isinstance(d, str) or _parse_date(d) is None:
            raise TecInputError(f"date {d!r} is not an ISO 8601 date or date-time (e.g. '2021-06-01')")
        out.append(d)
    named = [d for d in out if d is not None]
    if len(set(named)) != len(named):
        raise TecInputError(f"dates must be distinct, got {out}")
    return out


class StackWriter:
    """Encode a time stack to a ``.tec`` file strip by strip: :meth:`write` takes
    (dates, bands, rows, width) strips from the top, a row of tiles is coded (all dates of each
    tile position together) as soon as its rows have arrived, and :meth:`close` writes the file
    atomically. Only the compressed tiles and one row of tiles of pixels are held in memory.
    ``classical=False`` keeps every tile the models can code learned (see encode_tile_stack).
    ``workers`` threads (default: up to 4, one per core) code the tile positions of a row with
    TEC-TT (a row of one position: its dates alone, ahead of the caller's predicted tiles), or
    every (position, date) pair without it; the bytes do not depend on the count.
    ``effort`` is the classical encoder's (as :func:`terracodec.write`'s)."""

    def __init__(self, path, width: int, height: int, count: int, dtype, bands=None, quality: int = 5,
                 model: str | None = None, nodata=None, *, dates, temporal: bool = True,
                 keyframe_interval: int | None = None, tile_size: int | None = None, crs_wkt=None,
                 geotransform=None, metadata=None, progress: bool = False,
                 created_by: str = "terracodec", classical: bool = True, workers: int | None = None,
                 effort: str | None = None):
        from . import api
        from .bands import resolve_bands

        self.width, self.height, self.count = api._check_dims(width, height, count)
        if dates is None:
            raise TecInputError("a time stack needs dates=[...] (ISO strings, or None per unknown date)")
        self.path = path if hasattr(path, "write") else os.fspath(path)
        self.dtype = api._check_dtype(dtype)
        self.quality = api._check_quality(quality)
        self.effort = tilecodec.check_effort(effort)
        self.tile_size = api._check_tile_size(api.default_tile_size(self.width, self.height)
                                              if tile_size is None else tile_size)
        self.nodata = api._check_nodata(nodata, self.dtype)
        crs_wkt, geotransform = api._check_georef(crs_wkt, geotransform)
        metadata = api._check_metadata(metadata)
        self.bands = resolve_bands(bands, self.count)
        self.dates = check_dates(dates, len(dates))
        ki = DEFAULT_KEYFRAME_INTERVAL if keyframe_interval is None else keyframe_interval
        if isinstance(ki, bool) or not isinstance(ki, int) or not 1 <= ki <= 65535:
            raise TecInputError(f"keyframe_interval must be an integer 1..65535, got {keyframe_interval!r}")
        self._lossless = model == api.LOSSLESS_MODEL
        self._tt = None
        if temporal and len(self.dates) >= 2 and model not in tilecodec.BUILTIN_MODELS:
            if model is not None and not is_temporal_model(model):
                raise TecModelError(f"model {model!r} is not a temporal (TEC-TT) model; pass temporal=False "
                                    f"to code each date with it")
            self._tt = load_temporal(model)
            record = {"name": self._tt.name, "sha256": self._tt.sha256}
        else:
            record = api._model_record(model)
            ki = 1
        self._ki, self._classical, self._record = ki, classical, record
        # tile positions (with TEC-TT) or (position, date) pairs (without) are coded in parallel
        # threads (terracodec.workers), as api.Writer codes tiles; the bytes do not depend on it
        self.workers = workers_module.check_workers(workers)
        self._pool = workers_module.CodingPool(self.workers, "tec-encode-stack")
        self._lam = rd_lambda(self.quality)
        self.tiles_x, self.tiles_y = api._grid(self.width, self.height, self.tile_size)
        self._payloads = [[None] * (self.tiles_x * self.tiles_y) for _ in self.dates]
        self._kinds: dict[int, int] = {}
        self._av1_tiles = 0
        self._coarse_grid_tiles = 0
        self._pending = np.empty((len(self.dates), self.count, 0, self.width), self.dtype)
        self._next_tile_row = 0
        self.rows_written = 0
        self._closed = False
        self._fields = dict(width=self.width, height=self.height, count=self.count, dtype=self.dtype.name,
                            bands=list(self.bands), nodata=self.nodata, crs_wkt=crs_wkt,
                            geotransform=geotransform, tile_size=self.tile_size, tiles_x=self.tiles_x,
                            tiles_y=self.tiles_y, dates=self.dates, levels=1, keyframe_interval=ki,
                            model=record, quality=self.quality, metadata=metadata, created_by=created_by)
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.tiles_x * self.tiles_y, unit="tile", desc="encode stack", leave=False)

    def write(self, strip: np.ndarray) -> None:
        """Append the next rows of every date: ``strip`` is (dates, bands, rows, width)."""
        from . import api

        if self._closed:
            raise TecInputError("the stack writer is closed")
        want = (len(self.dates), self.count)
        if not isinstance(strip, np.ndarray) or strip.ndim != 4 or strip.shape[:2] != want \
                or strip.shape[3] != self.width:
            raise TecInputError(f"strip of shape {getattr(strip, 'shape', type(strip).__name__)} does not fit "
                                f"a stack of {want[0]} dates x {want[1]} bands x {self.width} columns")
        if strip.dtype != self.dtype:
            api._check_dtype(strip.dtype, strip)
            raise TecInputError(f"strip dtype {strip.dtype} differs from the writer's {self.dtype}")
        if self.rows_written + strip.shape[2] > self.height:
            raise TecInputError(f"more rows written than the raster's height {self.height}")
        # a view while nothing is pending: write_stack(array) does not copy the array
        self._pending = strip if not self._pending.shape[2] else np.concatenate([self._pending, strip], axis=2)
        self.rows_written += strip.shape[2]
        T = self.tile_size
        while self._next_tile_row < self.tiles_y:
            stop = min(self.height, (self._next_tile_row + 1) * T)
            if self.rows_written < stop:
                break
            rows = stop - self._next_tile_row * T
            self._encode_tile_row(self._pending[:, :, :rows])
            self._pending = self._pending[:, :, rows:]
            self._next_tile_row += 1

    def _encode_tile_row(self, strip: np.ndarray) -> None:
        ty, T = self._next_tile_row, self.tile_size
        positions = [np.ascontiguousarray(strip[:, :, :, tx * T:(tx + 1) * T]) for tx in range(self.tiles_x)]
        # one job codes all dates of a position with TEC-TT (a date's code depends on earlier dates'),
        # else one date of a position
        if self._tt is not None:
            jobs = [(tx, positions[tx]) for tx in range(self.tiles_x)]
        else:
            jobs = [(tx, positions[tx][d]) for tx in range(self.tiles_x) for d in range(len(self.dates))]
        # one job runs in this thread (CodingPool.map), so the pool's threads can code its dates alone ahead
        ahead = self._pool if len(jobs) == 1 and self.workers > 1 else None
        done = {tx: 0 for tx in range(self.tiles_x)}
        for (tx, _), coded in zip(jobs, self._pool.map(lambda tiles: self._encode_job(tiles, ahead),
                                                        [tiles for _, tiles in jobs])):
            for p, k in coded:
                self._payloads[done[tx]][ty * self.tiles_x + tx] = (p, k)
                self._kinds[k] = self._kinds.get(k, 0) + 1
                groups = kind4_groups(p)
                self._av1_tiles += uses_av1(groups)
                self._coarse_grid_tiles += uses_coarse_grid(groups)
                done[tx] += 1
            if self._bar is not None and done[tx] == len(self.dates):
                self._bar.update(1)

    def _encode_job(self, tiles: np.ndarray, ahead=None) -> list:
        """-> [(payload, kind)] of a (dates, bands, h, w) position with TEC-TT (``ahead``: an idle pool
        for encode_tile_stack), else of one (bands, h, w) date."""
        nd = self.nodata
        if self._tt is not None:
            return [(p, k) for p, k, _ in encode_tile_stack(tiles, self._tt, dates=self.dates, nodata=nd,
                                                            lam=self._lam, keyframe_interval=self._ki,
                                                            classical=self._classical, effort=self.effort,
                                                            floor_db=tilecodec.QUALITY_FLOOR_DB[self.quality],
                                                            pool=ahead)]
        if self._lossless:
            return [tilecodec.encode_tile(tiles, nodata=nd, lossless=True)]
        return [tilecodec.encode_tile(tiles, quality=self.quality, model=self._record["name"], nodata=nd,
                                      effort=self.effort)]

    def close(self) -> dict:
        """Write the file (atomically). Returns the header fields written."""
        from .format import ContainerWriter, TecHeader

        if self._closed:
            raise TecInputError("the stack writer is closed")
        self._closed = True
        self._pool.close()
        if self._bar is not None:
            self._bar.close()
        if self.rows_written != self.height:
            raise TecInputError(f"{self.rows_written} of {self.height} rows received")
        from .api import tile_counts

        stats = (tile_counts(self._kinds, self._av1_tiles, self._coarse_grid_tiles)
                 | tilecodec.effort_record(self.effort))
        fields = dict(self._fields, stats=stats)
        with ContainerWriter(self.path) as w:
            for row in self._payloads:
                for p, k in row:
                    w.add_tile(p, k)
            w.finish(TecHeader(**fields))
        self._payloads = None
        return fields

    def abort(self) -> None:
        """Drop everything: no file is written."""
        self._closed = True
        self._pool.close()
        self._payloads = self._pending = None
        if self._bar is not None:
            self._bar.close()

    def __del__(self):                         # an abandoned writer stops its threads
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass


def write_stack(path, array, bands=None, quality: int = 5, model: str | None = None, nodata=None, *,
                dates=None, **kw) -> dict:
    """Encode a (dates, bands, height, width) stack to ``path`` (a path or seekable file object);
    keyword arguments as :class:`StackWriter`. Returns the header fields written."""
    from . import api

    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.size == 0:
        raise TecInputError(f"a stack is a non-empty 4-D array (dates, bands, height, width), got "
                            f"{getattr(array, 'shape', type(array).__name__)}")
    if dates is None:
        raise TecInputError(f"a 4-D array {array.shape} is a time stack (dates, bands, height, width) and "
                            f"needs dates=[...] (ISO strings, or None per unknown date); one image is a "
                            f"3-D array (bands, height, width)")
    api._check_dtype(array.dtype, array)
    T, B, H, W = array.shape
    check_dates(dates, T)
    writer = StackWriter(path, W, H, B, array.dtype, bands, quality, model, nodata, dates=dates, **kw)
    try:
        writer.write(array)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def encode_stack(array, bands=None, quality: int = 5, model: str | None = None, nodata=None, **kw) -> bytes:
    buf = io.BytesIO()
    write_stack(buf, array, bands, quality, model, nodata, **kw)
    return buf.getvalue()


def date_index(dates: list, date) -> int:
    """Position of ``date`` (int index, ISO string, datetime.date) in a file's dates."""
    if isinstance(date, bool):
        raise TecInputError(f"bad date {date!r}")
    if isinstance(date, (int, np.integer)):
        if not -len(dates) <= int(date) < len(dates):
            raise TecInputError(f"date index {date} out of range (the file has {len(dates)} dates)")
        return int(date) % len(dates)
    if isinstance(date, (_dt.date, _dt.datetime)):
        date = date.isoformat()
    if isinstance(date, str):
        if date in dates:
            return dates.index(date)
        hits = [i for i, d in enumerate(dates) if isinstance(d, str) and d[:10] == date[:10]]
        if len(hits) == 1 and len(date) == 10:
            return hits[0]
        if len(hits) > 1:
            raise TecInputError(f"date {date} is ambiguous: {', '.join(dates[i] for i in hits)}")
    raise TecInputError(f"date {date!r} is not in this file; dates: {', '.join(str(d) for d in dates)}")

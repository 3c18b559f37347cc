# SPDX-License-Identifier: Apache-2.0
"""How well the 10 m bands predict a tile's 20 m cells, linearly and with quadratic terms.

    .venv/bin/python examples/measure_prediction.py [SCENE.tif ...]

For the top-left 544 x 544 crop of each scene (default: four val scenes and one train scene),
finds the coarse grids as the encoder does, takes the 20 m cells (least-squares fit on their grid)
and the 10 m bands' cell means (from the original bands, not a decoded tile), and prints the
least-squares residual energy of the 20 m cells predicted from the 3 x 3 neighbourhoods of the
cell means and a constant (the kind 4 neighbourhood prediction), and how much the quadratic terms
(terracodec.multires, block mask bit e) lower it.
"""
import sys
from pathlib import Path

import numpy as np

from terracodec import multires as mr
from terracodec.geotiff import read_geotiff

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT = ["s2l2a/majortom_T48QUE-199U1099R_2020-02-23.tif", "s2l1c/dsen2_T49JGM_2017-10-22.tif",
           "s2l2a/oceanecowatch_durban_2019-04-24.tif", "s2l2a/hydro_patch1-utm2S_undated.tif",
           "s2l2a/majortom_T33NZA-0U199R_2022-07-06.tif"]


def residual_energy(feats: np.ndarray, target: np.ndarray) -> float:
    coef = np.linalg.lstsq(feats.T, target.T, rcond=None)[0]
    return float(np.sum((target - (feats.T @ coef).T) ** 2))


for name in sys.argv[1:] or DEFAULT:
    path = Path(name) if Path(name).exists() else DATA / name
    array, _ = read_geotiff(path)
    tile = array[:, :544, :544].astype(np.float64)
    groups = mr.groups_of(mr.detect_grids(tile))
    coarse = [(grid, bands) for grid, bands in groups if grid[0] == 2]
    if groups[0][0][0] != 1 or not coarse:
        print(f"{path.name}: no 10 m group followed by a 20 m grid")
        continue
    (grid, bands), fine = coarse[0], groups[0][1]
    h, w = tile.shape[1:]
    factor, mode, py, px = grid
    cells = mr._separable(mr._fit_matrix(h, factor, py, mode), tile[bands], mr._fit_matrix(w, factor, px, mode))
    means = mr.cell_means(tile[fine], grid)
    target = cells.reshape(len(bands), -1)
    every = len(fine) + 1                                       # all bands' shifts and the quadratic bit
    linear = mr.prediction_features(means, mr.SPATIAL)
    quadratic = mr.prediction_features(means, mr.SPATIAL | mr.SELECTED | ((1 << every) - 1) << mr.MASK_SHIFT)
    e_linear, e_quadratic = residual_energy(linear, target), residual_energy(quadratic, target)
    print(f"{path.name}: 20 m residual energy {e_linear:.4g} with the neighbourhood prediction, "
          f"{100 * (e_quadratic / e_linear - 1):+.1f} % with the quadratic terms")

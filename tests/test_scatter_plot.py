"""train.pictures.images.scatter_plot: a labelled scatter drawn with Pillow, one colour per group, at the size asked."""

from __future__ import annotations

import numpy as np
from PIL import Image

from train.pictures.images import PLOT_COLOURS, scatter_plot


def test_the_picture_has_its_size_and_one_colour_per_group(tmp_path):
    points = [(0.16, 0.86, "shipped", 0), (0.39, 0.98, "object weight 2", 1), (0.16, 0.78, "ema", 1)]
    out = scatter_plot(tmp_path / "f.png", points, groups=["shipped", "training"], xlabel="copies", ylabel="avatar",
                       size=(1000, 720), ylines={"bar 0.95": 0.95}, xlines={"shipped": 0.16})
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (720, 1000, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert {tuple(PLOT_COLOURS[0]), tuple(PLOT_COLOURS[1])} <= colours        # two groups, two colours of points

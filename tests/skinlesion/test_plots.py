"""skinlesion/plots.py: every picture is a PNG tagged as ours, written atomically (training curves, confusion
matrices of two classes and of lesion types, the ROC curve, the reliability diagram, the mistakes); the title of
the mistakes never covers a tile's caption."""

import os

import numpy as np
import pytest
from PIL import Image

from skinlesion import files, ledger, metrics, plots


def assert_our_png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.info["Software"] == files.TAG
        img.verify()
    assert ledger.why_not_ours(path, "picture") is None


def test_every_picture_is_a_png_of_ours(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 100), 0, 1)
    history = [
        dict(epoch=e, train_loss=1 / e, val_loss=1.2 / e, val_log_loss=0.9 / e, roc_auc=0.5 + e / 20) for e in (1, 2, 3)
    ]
    plots.training_curves(history, 3, str(tmp_path / "curves.png"))
    types = [dict(h, type_balanced_accuracy=0.3 + h["epoch"] / 10) for h in history]
    plots.training_curves(types, 2, str(tmp_path / "curves_types.png"))
    plots.confusion([[40, 10], [5, 45]], ["benign", "malignant"], "title", str(tmp_path / "confusion.png"))
    four = rng.integers(0, 30, (4, 4))
    four[2] = 0  # a type without photos
    plots.confusion(four, ["nevus", "melanoma", "seborrheic keratosis", "bcc"], "types", str(tmp_path / "types.png"))
    scores = dict(roc_auc=0.85, sensitivity=0.9, specificity=0.6, threshold=0.42)
    plots.roc(y, p, scores, (0.78, 0.91), str(tmp_path / "roc.png"))
    curves = {
        "before calibration": (metrics.reliability(y, p), float(metrics.ece(y, p))),
        "after calibration": (metrics.reliability(y, p**2), float(metrics.ece(y, p**2))),
    }
    plots.reliability(curves, str(tmp_path / "calibration.png"))
    written = ["curves.png", "curves_types.png", "confusion.png", "types.png", "roc.png", "calibration.png"]
    assert sorted(os.listdir(tmp_path)) == sorted([ledger.NAME, *written])  # no temporary files left, a record
    for name in written:
        assert_our_png(tmp_path / name)
    with Image.open(tmp_path / "types.png") as four_types, Image.open(tmp_path / "confusion.png") as two:
        assert four_types.width > two.width and four_types.height > two.height  # room for four classes


@pytest.mark.slow  # seconds of CPU: left to make test
@pytest.mark.parametrize("n", [1, 3, 5, 7, 12])
def test_the_title_of_the_mistakes_never_covers_a_caption(tmp_path, monkeypatch, n):
    kept = {}
    save_figure = plots.save_figure

    def keep_figure(fig, path, **options):
        kept.update(fig=fig)
        save_figure(fig, path, **options)

    monkeypatch.setattr(plots, "save_figure", keep_figure)
    monkeypatch.setattr(plots.pyplot(), "close", lambda fig=None: None)  # save_figure closes it: keep it to measure
    mistakes = [
        dict(
            path=f"/photos/ISIC_{i:07d}_a_rather_long_file_name.jpg",
            true=["benign", "malignant"][i % 2],
            p_malignant=i / n,
        )
        for i in range(n)
    ]
    tile = Image.fromarray(np.full((64, 64, 3), 150, np.uint8))
    plots.mistakes(mistakes, lambda path: tile, str(tmp_path / "mistakes.png"))
    assert_our_png(tmp_path / "mistakes.png")
    fig = kept["fig"]
    try:
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        title = fig._suptitle.get_window_extent(renderer)
        captions = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        assert len(captions) == n and all("\n" in ax.get_title() for ax in fig.axes if ax.get_title())
        for caption in captions:
            assert not title.overlaps(caption), (title, caption)
            assert title.y0 >= caption.y1 - 1  # above every caption
    finally:
        monkeypatch.undo()
        plots.pyplot().close(fig)


def test_names_read_from_data_are_drawn_as_text_never_as_mathtext(tmp_path):
    """A folder, a photo, an export or a class named with dollar signs ('$\\foo$') raised matplotlib's mathtext
    ValueError at savefig: evaluate.py died with a traceback after writing evaluation.json, predict.py --explain
    on such a photo too. Each is drawn as the text it is, a photo's name on one line."""
    shown = "external validation: Clinic $\\frac$ (exports/$\\foo$), n = 100: 50 malignant"
    plots.confusion([[40, 10], [5, 45]], ["be$n$ign", "$\\foo$"], "m$\\bar$.pth", str(tmp_path / "c.png"), shown)
    y, p = np.repeat([0, 1], 50), np.linspace(0, 1, 100)
    plots.roc(y, p, dict(roc_auc=0.85, sensitivity=0.9, specificity=0.6, threshold=0.4), (0.7, 0.9),
              str(tmp_path / "roc.png"), shown)  # fmt: skip
    mistakes = [dict(path="/photos/$\\foo$\nforged.jpg", true="$\\foo$", p_malignant=0.9)]
    plots.mistakes(mistakes, lambda path: np.zeros((8, 8, 3)), str(tmp_path / "m.png"), shown)
    for name in ["c.png", "roc.png", "m.png"]:
        assert_our_png(tmp_path / name)
        with Image.open(tmp_path / name) as img:
            assert img.info["Title"] == shown

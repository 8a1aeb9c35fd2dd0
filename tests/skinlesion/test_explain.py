"""skinlesion/explain.py: Grad-CAM is the textbook recipe (signed, at the feature map's resolution), of the summed
malignant probability for a lesion-type model, and points at a dark spot wherever it is; its picture has three
panels, a real colour bar, the cautions written on it, and says when a map is empty; every photo gets a name of
its own."""

import copy
import os

import matplotlib
import matplotlib.axes
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model
from conftest import lesion_photo, make_net
from skinlesion import explain, files, ledger, photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small in-process forwards stay fast on a busy machine

SIZE = 64
TWO_CLASSES = np.array([False, True])  # benign, malignant


@pytest.fixture(scope="module")
def net():
    """conftest.make_net at 128 px (a 4 x 4 feature map); its map of photo_batch has both signs."""
    return make_net(128)


def photo_batch(tmp_path, net):
    """A lesion photo as the network sees it, 128 px."""
    img = photos.load_image(lesion_photo(tmp_path / "photo.jpg", (200, 160), seed=3))
    return torch.from_numpy(photos.preprocess(img, model.data_config(net, 128)))[None]


def textbook_gradcam(net, x, score):
    """Grad-CAM by hand: a forward hook on the final feature map (bn2's output, after its SiLU), the gradient of
    score(logits) through the whole network, channels weighted by their mean gradient, summed, signed."""
    grabbed = {}
    hook = net.bn2.register_forward_hook(lambda module, inputs, output: grabbed.update(features=output))
    logits = net(x.contiguous(memory_format=torch.channels_last))
    hook.remove()
    features = grabbed["features"]
    (grads,) = torch.autograd.grad(score(logits[0]), features)
    return (grads.mean((2, 3), keepdim=True) * features).sum(1)[0].detach().numpy()


# ---------------------------------------------------------------------------- Grad-CAM
def test_gradcam_is_the_textbook_recipe(tmp_path, net):
    """explain.gradcam against Grad-CAM by hand for the malignant-minus-benign logit, at the feature-map
    resolution, with no ReLU."""
    x = photo_batch(tmp_path, net)
    cam = explain.gradcam(net, x, TWO_CLASSES)
    ref = textbook_gradcam(net, x, lambda logits: logits[1] - logits[0])
    assert cam.shape == (4, 4) and cam.dtype == np.float32
    assert ref.min() < 0 < ref.max(), "one-signed map: this photo cannot tell a signed map from a ReLU'd one"
    np.testing.assert_allclose(cam, ref, atol=1e-5 * np.abs(ref).max())
    with torch.inference_mode():  # works where predict.py runs the network
        np.testing.assert_allclose(explain.gradcam(net, x, TWO_CLASSES), cam, atol=1e-6 * np.abs(ref).max())

    malignant, benign = explain.evidence(cam, 128)
    big = np.asarray(Image.fromarray(cam, "F").resize((128, 128), Image.BILINEAR))
    assert malignant.shape == benign.shape == (128, 128) and malignant.min() >= 0 and benign.min() >= 0
    np.testing.assert_allclose(malignant - benign, big, atol=1e-6)
    assert not (malignant * benign).any()


def test_gradcam_of_a_lesion_type_model_is_that_of_the_summed_malignant_probability(tmp_path, net):
    """Four lesion types, two of them malignant: the map is Grad-CAM of log(sum of P(malignant types) / sum of
    P(benign types)), computed here from the softmax through the whole network."""
    types = copy.deepcopy(net)
    torch.manual_seed(1)
    types.classifier = torch.nn.Linear(types.num_features, 4)  # a random head for four types
    torch.nn.init.uniform_(types.classifier.weight, -0.1, 0.1)
    x = photo_batch(tmp_path, net)
    mask = np.array([False, True, False, True])

    def summed(logits):
        p = torch.softmax(logits, 0)
        return torch.log(p[1] + p[3]) - torch.log(p[0] + p[2])

    cam = explain.gradcam(types, x, mask)
    ref = textbook_gradcam(types, x, summed)
    np.testing.assert_allclose(cam, ref, atol=1e-5 * np.abs(ref).max())
    one_type = explain.gradcam(types, x, np.array([False, True, False, False]))
    assert not np.allclose(cam, one_type, atol=0.05 * np.abs(ref).max())  # the other malignant type counts too


class DarkSpotNet(torch.nn.Module):
    """A stand-in with timm's forward_features/forward_head whose evidence is known by construction:
    feature 0 is how dark each 8x8 patch is, feature 1 how bright, and the malignant log-odds is mean
    darkness minus mean brightness. (A random-init EfficientNet localises nothing, and training one to
    would take minutes; with a trained checkpoint Grad-CAM runs the same code.)"""

    def forward_features(self, x):
        grey = x.mean(1, keepdim=True)
        return F.avg_pool2d(torch.cat([F.relu(-grey), F.relu(grey)], 1), 8)

    def forward_head(self, features):
        evidence = features.mean((2, 3))
        score = evidence[:, 0] - evidence[:, 1]
        return torch.stack([-score / 2, score / 2], 1)


@pytest.mark.parametrize("cy,cx", [(14, 18), (16, 46), (48, 12), (44, 50)])
def test_gradcam_points_at_the_dark_spot(cy, cx):
    """The evidence for malignant must peak on the spot wherever it is, and there be none for benign: catches a
    wrong sign, channel weighting, transposed or flipped upsampling."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    spot = (yy - cy) ** 2 + (xx - cx) ** 2 < 8**2
    x = torch.full((1, 3, SIZE, SIZE), 0.8)
    x[:, :, torch.from_numpy(spot)] = -1.5
    cam = explain.gradcam(DarkSpotNet(), x, TWO_CLASSES)
    assert cam.shape == (SIZE // 8, SIZE // 8)
    malignant, benign = explain.evidence(cam, SIZE)
    assert spot[np.unravel_index(malignant.argmax(), malignant.shape)]
    quadrant = ((yy < SIZE // 2) == (cy < SIZE // 2)) & ((xx < SIZE // 2) == (cx < SIZE // 2))
    assert malignant[quadrant].sum() > 0.6 * malignant.sum()
    assert not spot[np.unravel_index(benign.argmax(), benign.shape)]


# ---------------------------------------------------------------------------- the picture
@pytest.fixture
def said(monkeypatch):
    """Every text matplotlib is asked to write on an axes or the figure, in order."""
    texts = []
    for cls, method in [(matplotlib.axes.Axes, "set_title"), (matplotlib.axes.Axes, "text")]:
        original = getattr(cls, method)
        monkeypatch.setattr(
            cls,
            method,
            lambda self, *a, original=original, **kw: (
                texts.append(a[-1] if isinstance(a[-1], str) else a[0]) or original(self, *a, **kw)
            ),
        )
    original = matplotlib.figure.Figure.text
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "text",
        lambda self, x, y, s, *a, **kw: texts.append(s) or original(self, x, y, s, *a, **kw),
    )
    return texts


def crop():
    return Image.fromarray(np.full((SIZE, SIZE, 3), 180, np.uint8))


def test_gradcam_picture_has_three_panels_and_says_when_a_map_is_empty(tmp_path, said):
    blank = explain.save_gradcam(crop(), np.array([[1, 2], [0, 3]], np.float32), str(tmp_path / "cam.png"), "title")
    assert blank == ["benign"]
    assert [t for t in said if not t.startswith("title")] == [
        "the model's centre crop",
        "evidence for malignant",
        "evidence for benign",
        "no region stands out as\nevidence for benign\n(P is for the photo as a whole)",
    ]
    with Image.open(tmp_path / "cam.png") as img:
        img.verify()
        assert img.format == "PNG"
    assert sorted(os.listdir(tmp_path)) == [ledger.NAME, "cam.png"]


def test_gradcam_picture_writes_the_cautions_on_it(tmp_path, said):
    cautions = ["this model cannot be told from chance; do not rely on its predictions", "a second caution"]
    cam = np.array([[1, -2], [0, 3]], np.float32)
    assert explain.save_gradcam(crop(), cam, str(tmp_path / "with.png"), "title", cautions) == []
    assert "Caution: " + cautions[0] + "\nCaution: " + cautions[1] in said
    explain.save_gradcam(crop(), cam, str(tmp_path / "without.png"), "title")
    with Image.open(tmp_path / "with.png") as with_cautions, Image.open(tmp_path / "without.png") as without:
        assert with_cautions.height > without.height + 20  # the box below is inside the picture
        assert with_cautions.info["Software"] == without.info["Software"] == files.TAG


def test_gradcam_picture_has_a_real_colour_bar(tmp_path, monkeypatch):
    """The colour bar shows the inferno scale from 0 (bottom) to 1 (top), not an empty box."""
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep the figure to look at it
    explain.save_gradcam(crop(), np.array([[1, -2], [0, 3]], np.float32), str(tmp_path / "cam.png"), "title")
    fig = plt.gcf()
    try:
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and bars[0].get_ylim() == (0, 1)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        box = bars[0].get_window_extent()
        column = int((box.x0 + box.x1) / 2)
        rows = [pixels.shape[0] - int(y) for y in np.linspace(box.y0 + 3, box.y1 - 3, 40)]  # bottom to top
        colours = pixels[rows, column]
        assert len({tuple(c) for c in colours}) > 30  # a gradient, not one colour
        inferno = matplotlib.colormaps["inferno"]
        np.testing.assert_allclose(colours[0], np.array(inferno(0.0)[:3]) * 255, atol=40)
        np.testing.assert_allclose(colours[-1], np.array(inferno(1.0)[:3]) * 255, atol=40)
        assert np.all(np.diff(colours.sum(1)) >= -3)  # brighter going up
    finally:
        close(fig)


def test_every_photo_gets_a_picture_of_its_own():
    images = ["a/lesion.jpg", "a/lesion.png", "a/photo.jpg", "b/photo.jpg", "c/photo.JPG", "d/noext"]
    names = explain.gradcam_names(images, "out")
    assert len(set(names.values())) == len(images)
    assert all(os.path.dirname(n) == "out" and n.endswith(".png") for n in names.values())
    assert names["a/lesion.jpg"] == os.path.join("out", "lesion_jpg_gradcam.png")
    assert names["a/lesion.png"] == os.path.join("out", "lesion_png_gradcam.png")
    assert names["a/photo.jpg"] == os.path.join("out", "photo_jpg_gradcam.png")
    assert names["b/photo.jpg"] != names["a/photo.jpg"] and names["d/noext"] == os.path.join("out", "noext_gradcam.png")
    assert explain.gradcam_names(images, "out") == names  # the same photos, the same names

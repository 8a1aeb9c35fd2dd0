"""skinlesion/photos.py: finding photos (regular image files only, each once, through links and loops of links
without hanging), reading them upright as RGB, and preprocessing equal to timm's evaluation transform."""

import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import model
from conftest import alarm, fails, lesion_photo, noise_image, png_claiming
from skinlesion import photos


@pytest.fixture
def time_limit():
    """Fail, instead of hanging, after 30 s."""
    with alarm(30, "did not finish in 30 s"):
        yield


def names(images, folder):
    return [os.path.relpath(p, folder) for p in images]


# ---------------------------------------------------------------------------- finding photos
def test_find_images_reads_only_regular_image_files(tmp_path, capsys):
    lesion_photo(tmp_path / "photos" / "b.jpg")
    lesion_photo(tmp_path / "photos" / "sub" / "a.PNG")
    lesion_photo(tmp_path / "photos" / "a_gradcam.png")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    os.mkfifo(tmp_path / "photos" / "pipe.jpg")  # opening it would wait forever
    images, skipped = photos.find_images([str(tmp_path / "photos")])
    assert names(images, tmp_path / "photos") == ["b.jpg", "sub/a.PNG"]
    assert {os.path.basename(f): why for f, why in skipped} == {
        "a_gradcam.png": "a Grad-CAM picture written by predict.py --explain",
        "pipe.jpg": "a named pipe",
        "notes.txt": f"not an image file ({', '.join(photos.IMAGE_EXTS)})",
    }
    with pytest.raises(OSError, match="a named pipe"):
        photos.load_image(tmp_path / "photos" / "pipe.jpg")
    for path, expected in [
        (tmp_path / "nope", "nope not found"),
        (tmp_path / "photos" / "pipe.jpg", "is a named pipe"),
    ]:
        fails(capsys, expected, photos.find_images, [str(path)])


def test_a_file_named_directly_is_tried_whatever_its_extension(tmp_path):
    noise_image(tmp_path / "photo.data", 0, format="PNG")
    (tmp_path / "x_gradcam.png").write_bytes((tmp_path / "photo.data").read_bytes())
    images, skipped = photos.find_images([str(tmp_path / "photo.data"), str(tmp_path / "x_gradcam.png")])
    assert images == [str(tmp_path / "photo.data"), str(tmp_path / "x_gradcam.png")] and skipped == []


@pytest.mark.usefixtures("time_limit")
def test_two_links_to_the_folder_itself_neither_hang_nor_repeat_photos(tmp_path):
    folder = tmp_path / "photos"
    lesion_photo(folder / "a.jpg")
    lesion_photo(folder / "sub" / "b.jpg")
    os.symlink(".", folder / "loop1")
    os.symlink(".", folder / "loop2")
    os.symlink("..", folder / "sub" / "up")
    images, skipped = photos.find_images([str(folder)])
    assert names(images, folder) == ["a.jpg", "sub/b.jpg"] and skipped == []


@pytest.mark.usefixtures("time_limit")
def test_links_out_of_the_folder_are_not_followed_and_links_inside_are(tmp_path):
    """A link to '/' (or to any folder or photo outside) is skipped with its reason, never walked: the photos of
    the whole machine are not the folder's; a link that stays inside is followed, each real folder once."""
    folder = tmp_path / "photos"
    lesion_photo(folder / "a.jpg")
    lesion_photo(folder / "deep" / "b.jpg")
    lesion_photo(tmp_path / "elsewhere" / "c.jpg")
    os.symlink("/", folder / "root")
    os.symlink(tmp_path / "elsewhere", folder / "out")
    os.symlink("../../elsewhere/c.jpg", folder / "deep" / "c.jpg")
    os.symlink("deep", folder / "inside")  # stays inside: followed, but deep/ is read once
    os.symlink("../deep", folder / "deep" / "loop")
    images, skipped = photos.find_images([str(folder)])
    assert names(images, folder) == ["a.jpg", "deep/b.jpg"]
    why = f"a link out of {folder} (pass what it points to directly)"
    assert sorted((os.path.relpath(f, folder), w) for f, w in skipped) == [
        ("deep/c.jpg", why),
        ("out", why),
        ("root", why),
    ]
    only_inside = folder / "only"
    only_inside.mkdir()
    os.symlink("../deep", only_inside / "d")
    assert names(photos.find_images([str(only_inside)])[0], only_inside) == []  # ../deep is outside only/


def test_a_link_to_a_photo_beside_it_is_listed_once(tmp_path):
    lesion_photo(tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "same.jpg")
    os.symlink("nowhere.jpg", tmp_path / "dangling.jpg")
    images, skipped = photos.find_images([str(tmp_path)])
    assert names(images, tmp_path) == ["a.jpg"] and names([f for f, _ in skipped], tmp_path) == ["dangling.jpg"]
    assert skipped[0][1] == "missing"


# ---------------------------------------------------------------------------- reading photos
def test_load_image_handles_exif_16bit_rgba_cmyk(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "rot.jpg", exif=exif)
    assert photos.load_image(tmp_path / "rot.jpg").size == (20, 40)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert photos.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert photos.load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert photos.load_image(tmp_path / "cmyk.jpg").mode == "RGB"
    (tmp_path / "text.jpg").write_text("not a JPEG")
    img, why = photos.try_load_image(tmp_path / "text.jpg")
    assert img is None and why.startswith("not a readable image (UnidentifiedImageError")


def test_image_size_is_the_stored_size_read_from_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(tmp_path / "rot.jpg", exif=exif)
    assert photos.image_size(tmp_path / "rot.jpg") == (40, 20)  # as stored; load_image turns it upright
    # 120 megapixels claimed with a few bytes of pixel data: only the header is read
    assert photos.image_size(png_claiming(tmp_path / "big.png", 12000, 10000)) == (12000, 10000)
    img, why = photos.try_load_image(png_claiming(tmp_path / "bomb.png", 30000, 30000))
    assert img is None and "DecompressionBomb" in why


def test_load_image_with_min_side_decodes_small_but_not_too_small(tmp_path):
    noise_image(tmp_path / "big.jpg", 0, size=(800, 600))
    assert min(photos.load_image(tmp_path / "big.jpg", min_side=100).size) >= 100
    assert photos.load_image(tmp_path / "big.jpg", min_side=100).size < (800, 600)
    assert photos.load_image(tmp_path / "big.jpg").size == (800, 600)


@pytest.mark.usefixtures("time_limit")
def test_an_image_far_longer_than_wide_is_refused_before_it_is_decoded(tmp_path):
    """A 375-byte 100000 x 1 PNG took predict.py 2.6 GB and 14 s (here: killed at 20 GB after 220 s), the resize
    of its shorter side to the model's size unbounded; refused from its header, with the reason. The most
    elongated photo still taken (10:1, either way) loads and crops."""
    Image.new("RGB", (100000, 1), (200, 150, 120)).save(tmp_path / "thin.png", optimize=True)
    assert (tmp_path / "thin.png").stat().st_size < 1000
    Image.new("RGB", (1, 100000), (200, 150, 120)).save(tmp_path / "tall.png", optimize=True)
    noise_image(tmp_path / "11to1.png", 0, size=(1100, 99), format="PNG")
    for name, (w, h) in {"thin.png": (100000, 1), "tall.png": (1, 100000), "11to1.png": (1100, 99)}.items():
        img, why = photos.try_load_image(tmp_path / name)
        assert img is None and why == f"{w} x {h} pixels, one side over 10 times the other: crop it to the lesion"
        with pytest.raises(OSError, match="one side over 10 times"):
            photos.load_image(tmp_path / name)
    assert photos.too_elongated(1000, 100) is False and photos.too_elongated(100, 1001) is True
    for size in [(1000, 100), (100, 1000)]:
        noise_image(tmp_path / "ten.png", 1, size=size, format="PNG")
        img, why = photos.try_load_image(tmp_path / "ten.png")
        assert why is None and img.size == size
        assert photos.centre_crop(img, 64, 0.875, "bicubic").size == (64, 64)


# ---------------------------------------------------------------------------- preprocessing
@pytest.fixture(scope="module")
def cfg():
    return model.data_config(model.build_model(pretrained=False)[0], 128)


def test_preprocess_is_timms_evaluation_transform(cfg):
    """One preprocessing for PyTorch and onnxruntime, equal to timm's own transform for the model."""
    assert cfg["input_size"] == (3, 128, 128) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    timm_transform = timm.data.create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(0)
    for shape in [(300, 200, 3), (147, 201, 3), (146, 146, 3), (1000, 90, 3)]:
        img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
        x = photos.preprocess(img, cfg)
        assert x.shape == (3, 128, 128) and x.dtype == np.float32
        np.testing.assert_allclose(x, timm_transform(img).numpy(), atol=1e-5)
        crop = torch.from_numpy(np.asarray(photos.eval_crop(img, cfg)).transpose(2, 0, 1).copy())
        assert torch.equal(photos.normalise_batch(crop[None], cfg)[0], torch.from_numpy(x))  # the training loop's way


@pytest.mark.parametrize("shape, size", [((7, 7), 224), ((3, 5), 16), ((1, 1), 4), ((2, 9), 9), ((10, 6), 4)])
def test_upsample_bilinear_equals_torch_interpolate(shape, size):
    values = np.random.default_rng(0).normal(size=shape)
    expected = torch.nn.functional.interpolate(
        torch.tensor(values)[None, None], size=(size, size), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    out = photos.upsample_bilinear(values, size)
    assert out.shape == (size, size) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_photos_dataset_gives_crops_and_says_why_one_could_not_be_read(tmp_path):
    good = lesion_photo(tmp_path / "a.jpg", size=(60, 40))
    (tmp_path / "b.jpg").write_text("not a photo")
    data = photos.Photos([good, str(tmp_path / "b.jpg")], 32, 0.875, "bicubic")
    crop, why = data[0]
    assert len(data) == 2 and crop.shape == (3, 32, 32) and crop.dtype == np.uint8 and why == ""
    assert np.array_equal(
        crop, np.asarray(photos.centre_crop(photos.load_image(good), 32, 0.875, "bicubic")).transpose(2, 0, 1)
    )
    crop, why = data[1]
    assert not crop.any() and why.startswith("not a readable image")

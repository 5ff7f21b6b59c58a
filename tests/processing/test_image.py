"""Image preprocessing against transformers' CLIPImageProcessorPil: real photographs and odd inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
import transformers
from PIL import Image

from altclip.processing.image import CLIPImageProcessor, ImageLoadError, load_image
from tests.conftest import bomb_png

PHOTOS = sorted(p for p in (Path(skimage.__file__).parent / "data").iterdir() if p.suffix in {".png", ".jpg", ".gif"})
RNG = np.random.default_rng(0)


def reference(image, **settings) -> np.ndarray:
    return transformers.CLIPImageProcessorPil(**settings)(image, return_tensors="np")["pixel_values"]


def ours(image, **settings) -> np.ndarray:
    return CLIPImageProcessor(**settings)(image, return_tensors="np")["pixel_values"]


def assert_pixels_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-6


def test_the_photographs_are_many_sizes_and_modes():
    sizes = {Image.open(p).size for p in PHOTOS}
    modes = {Image.open(p).mode for p in PHOTOS}
    assert len(PHOTOS) >= 20 and len(sizes) >= 12 and {"RGB", "L", "RGBA", "P"} <= modes


@pytest.mark.parametrize("path", PHOTOS, ids=[p.name for p in PHOTOS])
def test_photographs_match_transformers(path):
    image = load_image(path)
    assert_pixels_equal(ours(path), reference(image))
    assert_pixels_equal(ours(image), reference(image))


def odd_images() -> dict[str, object]:
    rgb = (RNG.random((37, 53, 3)) * 255).astype(np.uint8)
    rgba = np.concatenate([rgb, (RNG.random((37, 53, 1)) * 255).astype(np.uint8)], axis=-1)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    sixteen = io.BytesIO()
    Image.fromarray((RNG.random((41, 29)) * 65535).astype(np.uint16)).save(sixteen, format="PNG")
    return {
        "1x1": Image.fromarray(rgb[:1, :1]),
        "1x4000": Image.fromarray((RNG.random((1, 4000, 3)) * 255).astype(np.uint8)),
        "4000x1": Image.fromarray((RNG.random((4000, 1, 3)) * 255).astype(np.uint8)),
        "gray L": Image.fromarray(rgb[..., 0]),
        "LA": Image.fromarray(rgba[..., [0, 3]], mode="LA"),
        "RGBA": Image.fromarray(rgba, mode="RGBA"),
        "P+transparency": palette,
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "1-bit": Image.fromarray(rgb[..., 0] > 128),
        "16-bit PNG": Image.open(sixteen),
        "exact 224": Image.fromarray((RNG.random((224, 224, 3)) * 255).astype(np.uint8)),
        "smaller than crop": Image.fromarray(rgb[:10, :30]),
        "numpy HWC uint8": rgb,
        "numpy CHW uint8": np.moveaxis(rgb, -1, 0).copy(),
        "numpy HWC float": rgb.astype(np.float32) / 255,
        "numpy RGBA uint8": rgba,
        "numpy 1-channel": rgb[..., :1],
        "torch CHW float": torch.from_numpy(np.moveaxis(rgb, -1, 0).astype(np.float32) / 255),
    }


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_inputs_match_transformers(name):
    image = odd_images()[name]
    assert_pixels_equal(ours(image), reference(image))


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 80}},
        {"do_center_crop": False, "size": {"shortest_edge": 32}},
        {"do_normalize": False},
        {"resample": 2},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.3, 0.4]},
    ],
)
def test_other_settings_match_transformers(settings):
    image = load_image(PHOTOS[0])
    assert_pixels_equal(ours(image, **settings), reference(image, **settings))


def test_batches_and_return_types():
    images = [load_image(p) for p in PHOTOS[:3]]
    batch = CLIPImageProcessor()(images)["pixel_values"]
    assert isinstance(batch, torch.Tensor) and batch.shape == (3, 3, 224, 224)
    assert_pixels_equal(batch.numpy(), reference(images))
    as_list = CLIPImageProcessor()(images, return_tensors=None)["pixel_values"]
    assert isinstance(as_list, list) and len(as_list) == 3
    with pytest.raises(ValueError, match="return_tensors"):
        CLIPImageProcessor()(images, return_tensors="tf")


def test_exif_orientation_is_applied_to_files(tmp_path):
    pixels = (RNG.random((20, 40, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)
    upright = load_image(tmp_path / "rotated.png")
    assert upright.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(upright), np.rot90(pixels, k=-1))
    assert_pixels_equal(ours(tmp_path / "rotated.png"), ours(Image.fromarray(np.rot90(pixels, k=-1).copy())))


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_formats_read_upright_like_jpeg(tmp_path, suffix):
    """HEIC (pillow-heif) and AVIF (Pillow) photos with an EXIF orientation read as the same JPEG does."""
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (48, 1)), np.tile(ramp[:48, None], (1, 64)), np.full((48, 64), 90, np.uint8)], 2)
    pixels[:12, :16] = (250, 20, 20)  # a red corner: where it ends up shows the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as a phone held upright writes
    for name in (f"photo{suffix}", "photo.jpg"):  # as bytes: pillow-heif writes the rotation only from those
        Image.fromarray(pixels).save(tmp_path / name, exif=exif.tobytes(), quality=95)
    ours_, jpeg = load_image(tmp_path / f"photo{suffix}"), load_image(tmp_path / "photo.jpg")
    assert ours_.size == jpeg.size == (48, 64)
    difference = np.abs(np.asarray(ours_.convert("RGB"), np.int16) - np.asarray(jpeg.convert("RGB"), np.int16))
    assert difference.mean() < 6, difference.mean()  # two lossy codecs of the same upright picture
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes((tmp_path / f"photo{suffix}").read_bytes()[:200])
    with pytest.raises(ImageLoadError) as err:
        load_image(broken)
    assert err.value.kind in ("truncated", "unreadable", "not_image") and str(broken) in str(err.value)


def test_draft_decoding_shrinks_large_jpegs_and_stays_close_to_the_full_decode(tmp_path):
    """The fast path (Pillow's JPEG draft mode) against the naive one (decode everything, then resize)."""
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut()).resize((1200, 900), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: draft scaling happens before the EXIF transpose
    photo.save(tmp_path / "photo.jpg", quality=92, exif=exif)
    photo.save(tmp_path / "photo.png")
    full = load_image(tmp_path / "photo.jpg")
    draft = load_image(tmp_path / "photo.jpg", draft_min_side=200)
    assert full.size == (900, 1200)
    assert draft.size == (225, 300)  # 1/4 scale: the largest that keeps the shorter side >= 200
    assert load_image(tmp_path / "photo.png", draft_min_side=200).size == (1200, 900)  # only JPEGs shrink
    settings = {"size": {"shortest_edge": 100}, "crop_size": {"height": 100, "width": 100}}
    std = np.asarray(CLIPImageProcessor().image_std)[:, None, None]
    levels = np.abs(ours(draft, **settings) - ours(full, **settings)) * std * 255  # 8-bit levels
    assert 0 < levels.mean() < 1.0 and levels.max() < 16


def test_bad_images_are_named(tmp_path, monkeypatch):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"broken\.jpg: not an image") as err:
        ours(tmp_path / "broken.jpg")
    assert err.value.kind == "not_image"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="zero-byte"):
        ours(tmp_path / "empty.png")
    good = io.BytesIO()
    Image.fromarray((RNG.random((64, 64, 3)) * 255).astype(np.uint8)).save(good, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ImageLoadError) as err:
        ours(tmp_path / "truncated.jpg")
    assert err.value.kind == "truncated"
    with pytest.raises(ValueError, match=r"images\[1\]: expected a PIL image"):
        CLIPImageProcessor()([np.zeros((4, 4, 3), np.uint8), 42])
    with pytest.raises(ValueError, match="channel axis"):
        ours(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        ours(np.full((5, 5, 3), 3.5, np.float32))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's limit, made small: 4096 > 2 x 1000
    with pytest.raises(ImageLoadError, match="decompression bomb") as err:
        ours(tmp_path / "big.png")
    assert err.value.kind == "bomb"


def test_uploaded_bytes_read_like_their_file(tmp_path):
    """The server's path: bytes in, the same pixels as the file, and errors named after the upload."""
    processor = CLIPImageProcessor()
    image = Image.fromarray((RNG.random((90, 60, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "a.png")
    from_bytes = processor.preprocess_file((tmp_path / "a.png").read_bytes(), name="image 'a.png'")
    from_file = processor.preprocess_file(tmp_path / "a.png")
    np.testing.assert_array_equal(from_bytes[0], from_file[0])
    assert from_bytes[1:] == from_file[1:] == (60, 90)
    for data, kind in ((b"", "empty"), (b"plain text", "not_image"), (bomb_png(), "bomb")):
        with pytest.raises(ImageLoadError, match=r"^image 'a\.png': ") as err:
            processor.preprocess_file(data, name="image 'a.png'")
        assert err.value.kind == kind


def test_config_files_round_trip_with_transformers(tmp_path):
    processor = CLIPImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96})
    processor.save_pretrained(tmp_path)
    theirs = transformers.CLIPImageProcessorPil.from_pretrained(tmp_path)
    assert theirs.size["shortest_edge"] == 96 and theirs.crop_size["height"] == 96
    assert CLIPImageProcessor.from_pretrained(tmp_path) == processor
    # the old CLIPFeatureExtractor form that BAAI/AltCLIP ships
    old = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old))
    assert CLIPImageProcessor.from_pretrained(tmp_path) == CLIPImageProcessor()

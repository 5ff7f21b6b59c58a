"""Image preprocessing, exact to transformers' ``CLIPImageProcessor`` (its PIL backend).

Per image: convert to RGB (transparency composited onto white) -> resize the shortest edge (bicubic,
with Pillow) -> centre crop (zero-padded when the image is smaller) -> rescale to [0, 1] -> normalise
with the OpenAI mean and std. Inputs may be PIL images, NumPy arrays (HWC or CHW, uint8 or float in
[0, 1]), torch tensors, file paths, or lists of these. A file path is opened with Pillow, which keeps
its decompression-bomb limit, and turned upright by its EXIF orientation tag before anything else. Pillow reads
AVIF itself; HEIC/HEIF (phones' default) through ``pillow-heif``, registered here when it is installed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from altclip.errors import InputError
from altclip.files import read_json, write_json
from altclip.hub import HubError, resolve_file

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_NAME = "preprocessor_config.json"  # the image processor's own file: what every transformers reads
PROCESSOR_NAME = "processor_config.json"  # transformers 5 writes only this, the image processor nested in it

ImageInput = Image.Image | np.ndarray | torch.Tensor | str | Path


def register_heif() -> bool:
    """Let Pillow open HEIC/HEIF files (``pillow-heif``); False where it is not installed. Registered on import
    of this module, so worker processes that decode (any start method) read them too."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF = register_heif()


class ImageLoadError(InputError):
    """A file that is not a usable image; ``kind`` says why, for reports that count failures."""

    def __init__(self, path: str | Path, kind: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.kind = kind


def load_image(path: str | Path | bytes, draft_min_side: int | None = None, name: str = "upload") -> Image.Image:
    """Open an image file (or its bytes, an upload, called ``name`` in errors) and apply its EXIF orientation.
    Pillow's decompression-bomb check stays on.

    ``draft_min_side``: let JPEGs decode at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) while the shorter
    side stays at least this many pixels. Large photos decode several times faster; the pixels after
    resizing differ a little from a full decode (measured in benchmarks/folder.py). Off by default.

    Raises ``ImageLoadError`` with ``kind`` one of missing, empty, not_image, truncated, bomb, unreadable.
    """
    data = path if isinstance(path, bytes) else None
    path = name if data is not None else Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageLoadError(path, "empty", "zero-byte file")
        with Image.open(io.BytesIO(data) if data is not None else path) as opened:
            if draft_min_side and opened.format == "JPEG":
                opened.draft(opened.mode, (draft_min_side, draft_min_side))
            image = ImageOps.exif_transpose(opened)
            image.load()
    except ImageLoadError:
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(path, "missing", "no such file") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(path, "bomb", f"refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(path, "not_image", "not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        kind = "truncated" if "truncated" in str(err) else "unreadable"
        raise ImageLoadError(path, kind, f"not a readable image ({err})") from err
    return image


def _channels_last(array: np.ndarray, what: str) -> np.ndarray:
    """HWC from HWC / CHW (channels 1, 3 or 4; ambiguous shapes are read as CHW, like transformers)."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise InputError(f"{what}: an image array must have 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4):
        return np.moveaxis(array, 0, -1)
    if array.shape[-1] in (1, 3, 4):
        return array
    raise InputError(f"{what}: cannot tell the channel axis of shape {array.shape} (expected 1, 3 or 4 channels)")


def to_rgb(image: ImageInput, what: str = "image") -> np.ndarray:
    """Any supported input -> an (H, W, 3) array, uint8 or float, transparency composited onto white."""
    if isinstance(image, str | Path):
        image = load_image(image)
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return np.asarray(image.convert("RGB"))
    array = _channels_last(_as_array(image, what), what)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        floating = np.issubdtype(array.dtype, np.floating)
        if floating and (array.min() < 0.0 or array.max() > 1.0):
            raise InputError(f"{what}: a float RGBA image must lie in [0, 1], got [{array.min()}, {array.max()}]")
        white = 1.0 if floating else 255
        alpha = array[..., 3:4] / white
        blended = alpha * array[..., :3] + (1 - alpha) * white
        return blended.astype(array.dtype) if floating else np.round(blended).astype(array.dtype)
    return array


def _float_to_uint8_scale(array: np.ndarray, what: str) -> bool:
    """Whether a non-uint8 image holds [0, 1] values that must be scaled by 255 before Pillow sees it."""
    if array.dtype == np.uint8:
        return False
    if np.allclose(array, array.astype(int)):
        if array.min() >= 0 and array.max() <= 255:
            return False
        raise InputError(f"{what}: integer-valued pixels must lie in [0, 255], got [{array.min()}, {array.max()}]")
    if array.min() >= 0 and array.max() <= 1:
        return True
    raise InputError(f"{what}: float pixels must lie in [0, 1], got [{array.min()}, {array.max()}]")


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is ``size``, the longer side truncated to an int."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_shortest_edge(array: np.ndarray, size: int, resample: int, what: str = "image") -> np.ndarray:
    """Scale so the shorter side is ``size`` (the longer side truncated to an int), with Pillow."""
    height, width = array.shape[:2]
    new_width, new_height = shortest_edge_size(width, height, size)
    scaled = _float_to_uint8_scale(array, what)
    pixels = (array.astype(np.float64) * 255).astype(np.float32) if scaled else array
    pil = Image.fromarray(pixels.astype(np.uint8).squeeze(-1) if array.shape[-1] == 1 else pixels.astype(np.uint8))
    resized = np.asarray(pil.resize((new_width, new_height), resample=resample))
    resized = resized[..., None] if resized.ndim == 2 else resized
    return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if scaled else resized


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) -> (C, height, width) around the centre, zero-padding an image smaller than the crop."""
    _, h, w = array.shape
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return array[:, top : top + height, left : left + width]
    padded_h, padded_w = max(height, h), max(width, w)
    pad_top, pad_left = math.ceil((padded_h - h) / 2), math.ceil((padded_w - w) / 2)
    padded = np.zeros((array.shape[0], padded_h, padded_w), dtype=array.dtype)
    padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = array
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top) : min(padded_h, top + height), max(0, left) : min(padded_w, left + width)]


def _square(value: int | dict[str, int]) -> dict[str, int]:
    return {"height": value, "width": value} if isinstance(value, int) else dict(value)


@dataclass
class CLIPImageProcessor:
    """Settings and preprocessing of ``preprocessor_config.json`` (also the old ``CLIPFeatureExtractor`` form)."""

    do_resize: bool = True
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, int):  # old feature-extractor files: ``"size": 224``
            self.size = {"shortest_edge": self.size}
        self.crop_size = _square(self.crop_size)
        if "shortest_edge" not in self.size:
            raise InputError(f"size must name shortest_edge (the CLIP resize), got {self.size}")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    # -- files -------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CLIPImageProcessor:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image_processor_type": "CLIPImageProcessor"}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **hub: Any) -> CLIPImageProcessor:
        """Read a folder or hub name as transformers does: the ``image_processor`` nested in
        ``processor_config.json`` (transformers 5) when there is one, else ``preprocessor_config.json``."""
        nested = resolve_file(name_or_path, PROCESSOR_NAME, required=False, **hub)
        if nested is not None:
            values = read_json(nested).get("image_processor")
            if isinstance(values, dict):
                return cls.from_dict(values)
        path = resolve_file(name_or_path, PREPROCESSOR_NAME, required=False, **hub)
        if path is None:
            raise HubError(
                f"{name_or_path} has no image processor settings: neither {PREPROCESSOR_NAME} nor an "
                f"image_processor in {PROCESSOR_NAME}"
            )
        return cls.from_dict(read_json(path))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``preprocessor_config.json``, which transformers 4 and 5 both read. A folder that already
        has a transformers 5 ``processor_config.json`` gets its nested copy updated too, since readers
        prefer that one."""
        folder = Path(folder)
        values = self.to_dict()
        written = write_json(folder / PREPROCESSOR_NAME, values)
        nested = folder / PROCESSOR_NAME
        if nested.is_file():
            processor = read_json(nested)
            if "image_processor" in processor:
                write_json(nested, {**processor, "image_processor": values})
        return written

    # -- preprocessing ----------------------------------------------------------------------------

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Where a ``width`` x ``height`` image lands: its resized (width, height), and the crop window (left, top,
        width, height) in the resized image's pixels (negative offsets where the crop pads a small image)."""
        resized_w, resized_h = width, height
        if self.do_resize:
            resized_w, resized_h = shortest_edge_size(width, height, self.size["shortest_edge"])
        if not self.do_center_crop:
            return (resized_w, resized_h), (0, 0, resized_w, resized_h)
        crop_w, crop_h = self.crop_size["width"], self.crop_size["height"]
        return (resized_w, resized_h), ((resized_w - crop_w) // 2, (resized_h - crop_h) // 2, crop_w, crop_h)

    def preprocess_one(self, image: ImageInput, what: str = "image") -> np.ndarray:
        """One image -> float32 (3, crop height, crop width)."""
        array = to_rgb(image, what) if self.do_convert_rgb else _channels_last(_as_array(image, what), what)
        if self.do_resize:
            array = resize_shortest_edge(array, self.size["shortest_edge"], self.resample, what)
        array = np.moveaxis(array, -1, 0)  # (C, H, W)
        if self.do_center_crop:
            array = center_crop(array, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            array = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float32)
            mean = np.asarray(self.image_mean, dtype=array.dtype)[:, None, None]
            std = np.asarray(self.image_std, dtype=array.dtype)[:, None, None]
            array = (array - mean) / std
        return array

    def preprocess_file(
        self,
        path: str | Path | bytes,
        draft_min_side: int | None = None,
        name: str = "upload",
        transform: Callable[[Image.Image], Image.Image] | None = None,
    ) -> tuple[np.ndarray, int, int]:
        """One image file (or an upload's bytes, ``name`` in errors) -> (pixels, width, height): the one reading
        path of embedding, training, evaluation and the server.

        Every failure, a decoder's own bug included, is an ``ImageLoadError`` whose ``kind`` says why, so
        batch jobs skip and count the file and go on. ``draft_min_side``: see ``load_image``. ``transform``:
        applied to the decoded image before preprocessing (training's augmentation); the size returned is the
        file's.
        """
        where = name if isinstance(path, bytes) else str(path)
        try:
            image = load_image(path, draft_min_side, name)
            pixels = self.preprocess_one(image if transform is None else transform(image), where)
            return pixels, *image.size
        except ImageLoadError:
            raise
        except Exception as err:  # a decoder bug must not end a long job
            raise ImageLoadError(where, "unreadable", f"{type(err).__name__}: {err}") from err

    def __call__(self, images: ImageInput | Sequence[ImageInput], return_tensors: str | None = "pt") -> dict[str, Any]:
        """Images -> ``{"pixel_values": (batch, 3, H, W)}`` as torch ("pt"), NumPy ("np") or a list (None)."""
        batch = list(images) if isinstance(images, list | tuple) else [images]
        if not batch:
            raise InputError("images is empty")
        arrays = [self.preprocess_one(image, f"images[{i}]") for i, image in enumerate(batch)]
        return {"pixel_values": _stack(arrays, return_tensors, "pixel_values")}


def _as_array(image: ImageInput, what: str = "image") -> np.ndarray:
    """A path, PIL image, tensor or array as a NumPy array (layout untouched)."""
    if isinstance(image, str | Path):
        image = load_image(image)
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray | Image.Image):
        raise InputError(
            f"{what}: expected a PIL image, NumPy array, torch tensor or file path, got {type(image).__name__}"
        )
    return np.asarray(image)


def _stack(arrays: list[np.ndarray], return_tensors: str | None, what: str) -> Any:
    if return_tensors is None:
        return arrays
    if len({a.shape for a in arrays}) > 1:
        raise InputError(f"{what} have different shapes {sorted({a.shape for a in arrays})}; cannot batch them")
    stacked = np.stack(arrays)
    if return_tensors == "np":
        return stacked
    if return_tensors == "pt":
        return torch.from_numpy(stacked)
    raise InputError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

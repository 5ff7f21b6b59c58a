"""Retrieval sets in the layouts the public multilingual benchmarks are published in, read into one shape.

Formats (``--format``):

* ``jsonl`` / ``csv``: our pairs file (``image``, ``caption``, ``lang``), read leniently: malformed lines are
  skipped and counted, unreadable images skipped with their captions.
* ``xtd10`` (XTD10, Aggarwal & Kale 2020): ``test_image_names.txt`` and ``test_1kcaptions_{lang}.txt``, aligned
  line by line, one caption per image per language; the images are MSCOCO 2014 files (``--images``).
* ``xm3600`` (Crossmodal-3600, Thapliyal et al. 2022): ``captions.jsonl``, one image a line:
  ``{"image/key": KEY, LANG: {"caption": [...], ...}, ...}``; images at ``images/KEY.jpg``; every caption counts.
* ``multi30k`` (Multi30K task 2, Elliott et al. 2016): ``test_2016.{1..5}.{lang}`` (``.gz`` or not), five
  independent descriptions per image per language, aligned with the Flickr30k image list
  ``test_2016_flickr.txt``; found in the folder itself or where the multi30k/dataset repository keeps them.
* ``cn-clip`` (Chinese-CLIP's packaging of Flickr30k-CN, COCO-CN and MUGE): ``{split}_imgs.tsv`` (image id,
  base64 image) and ``{split}_texts.jsonl`` (``text_id``, ``text``, ``image_ids``); a text may have several
  right images, and a hit is any of them.

The published layouts are read strictly: the first missing or malformed file or line raises
``BenchmarkError`` naming it, and so does the first missing image file, since a benchmark with images missing
gives numbers no one can compare. Language codes are the files' own, except XTD10's ``jp``, which is ``ja``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from altclip.data.datafiles import read_pairs
from altclip.data.imagefiles import ImageSource
from altclip.data.shards import read_range
from altclip.errors import InputError

FORMATS = ("jsonl", "csv", "xtd10", "xm3600", "multi30k", "cn-clip")
LANGUAGE_ALIASES = {"jp": "ja"}  # XTD10 names Japanese jp
MULTI30K_FOLDERS = (".", "raw", "data/task2/raw")
MULTI30K_IMAGE_LISTS = (
    "test_2016_flickr.txt",
    "image_splits/test_2016_flickr.txt",
    "data/task1/image_splits/test_2016_flickr.txt",
    "test_images.txt",
)


class BenchmarkError(InputError):
    """A benchmark folder that does not hold what its format says: names the file (and line) at fault."""


@dataclass(frozen=True)
class TsvImage:
    """One image of a Chinese-CLIP ``*_imgs.tsv``: the base64 field's place in the file (it pickles)."""

    file: str
    image_id: str
    offset: int
    size: int

    @property
    def path(self) -> str:
        return f"{self.file}#{self.image_id}"

    def read(self) -> bytes:
        data = read_range(self.file, self.offset, self.size)
        try:
            return base64.b64decode(data, altchars=b"-_")  # Chinese-CLIP writes the URL-safe alphabet; both read
        except binascii.Error as err:
            raise InputError(f"{self.path}: not base64 ({err})") from err


@dataclass
class RetrievalSet:
    """Images and captions; ``owners[m]`` lists caption m's right image rows; ``langs[m]`` its language."""

    images: list[ImageSource]
    captions: list[str]
    owners: list[list[int]]
    langs: list[str]
    skipped: Counter = field(default_factory=Counter)
    source: str = ""  # the file or folder it was read from, for messages
    format: str = ""  # the layout it was read in

    def only(self, langs: Sequence[str] | None) -> RetrievalSet:
        """The captions in ``langs`` (all when None); a language the set does not have is an error."""
        if not langs:
            return self
        wanted = [LANGUAGE_ALIASES.get(lang, lang) for lang in langs]
        present = sorted(set(self.langs))
        absent = [lang for lang in wanted if lang not in present]
        if absent:
            raise BenchmarkError(f"no captions in {', '.join(absent)}; the set has: {', '.join(present)}")
        keep = [m for m, lang in enumerate(self.langs) if lang in wanted]
        return replace(
            self,
            captions=[self.captions[m] for m in keep],
            owners=[self.owners[m] for m in keep],
            langs=[self.langs[m] for m in keep],
        )


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchmarkError(f"{path}: missing ({what})")
    return path


def _lines(path: Path) -> list[str]:
    """A text file's lines (gzip when it ends in .gz), without line ends; bad UTF-8 names the line."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as err:
            raise BenchmarkError(f"{path}:{number}: not UTF-8 ({err.reason})") from err
    return out


def _caption(path: Path, number: int, text: str) -> str:
    if not text.strip():
        raise BenchmarkError(f"{path}:{number}: empty caption")
    return text.strip()


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of each non-blank line of a JSON-lines file; a line that is not JSON names it."""
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}:{number}: not JSON ({err.msg})") from err


def _add_aligned(result: RetrievalSet, path: Path, lang: str, image_list: Path) -> None:
    """A caption file aligned line by line with ``image_list`` (whose names are ``result.images``)."""
    lines = _lines(path)
    if len(lines) != len(result.images):
        raise BenchmarkError(f"{path}: {len(lines)} lines for the {len(result.images)} images of {image_list.name}")
    for row, line in enumerate(lines):
        result.captions.append(_caption(path, row + 1, line))
        result.owners.append([row])
        result.langs.append(lang)


def _check_images(images: Sequence[str], flag: str) -> None:
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise BenchmarkError(
            f"{missing[0]}: missing image ({len(missing)} of {len(images)} missing); "
            f"point {flag} at the folder that holds them"
        )


def read_xtd10(root: Path, images: Path | None = None) -> RetrievalSet:
    names_file = _require(root / "test_image_names.txt", "XTD10's image list")
    names = [name.strip() for name in _lines(names_file)]
    for number, name in enumerate(names, 1):
        if not name:
            raise BenchmarkError(f"{names_file}:{number}: empty image name")
    files = sorted(root.glob("test_1kcaptions_*.txt"))
    if not files:
        raise BenchmarkError(f"{root}: no test_1kcaptions_{{lang}}.txt caption files")
    folder = images or root / "images"
    result = RetrievalSet([str(folder / name) for name in names], [], [], [])
    for path in files:
        lang = path.stem.removeprefix("test_1kcaptions_")
        _add_aligned(result, path, LANGUAGE_ALIASES.get(lang, lang), names_file)
    _check_images(result.images, "--images (MSCOCO train2014)")
    return result


def read_xm3600(root: Path, images: Path | None = None) -> RetrievalSet:
    path = _require(root / "captions.jsonl", "Crossmodal-3600's captions")
    folder = images or root / "images"
    result = RetrievalSet([], [], [], [])
    for number, record in _json_lines(path):
        key = record.get("image/key") if isinstance(record, dict) else None
        if not isinstance(key, str) or not key:
            raise BenchmarkError(f'{path}:{number}: no "image/key"')
        row = len(result.images)
        result.images.append(str(folder / f"{key}.jpg"))
        for lang, value in record.items():
            if lang == "image/key":
                continue
            captions = value.get("caption") if isinstance(value, dict) else None
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise BenchmarkError(f'{path}:{number}: "{lang}" has no "caption" list of strings')
            for caption in captions:
                result.captions.append(_caption(path, number, caption))
                result.owners.append([row])
                result.langs.append(lang)
    if not result.images:
        raise BenchmarkError(f"{path}: no images")
    _check_images(result.images, "--images")
    return result


def read_multi30k(root: Path, images: Path | None = None) -> RetrievalSet:
    pattern = re.compile(r"^test_2016\.([1-5])\.([a-z]{2,3})(\.gz)?$")
    folder = next(
        (root / f for f in MULTI30K_FOLDERS if any(pattern.match(p.name) for p in (root / f).glob("*"))), None
    )
    if folder is None:
        raise BenchmarkError(f"{root}: no task-2 test files test_2016.{{1..5}}.{{lang}}[.gz] (nor under raw/)")
    image_list = next((root / f for f in MULTI30K_IMAGE_LISTS if (root / f).is_file()), None)
    if image_list is None:
        raise BenchmarkError(f"{root}: missing the Flickr30k image list (one of {', '.join(MULTI30K_IMAGE_LISTS)})")
    names = [name.strip() for name in _lines(image_list)]
    image_folder = images or root / "images"
    result = RetrievalSet([str(image_folder / name) for name in names], [], [], [])
    files = sorted(p for p in folder.iterdir() if pattern.match(p.name))
    for path in files:
        _add_aligned(result, path, pattern.match(path.name).group(2), image_list)  # type: ignore[union-attr]
    _check_images(result.images, "--images (flickr30k-images)")
    return result


def read_cn_clip(root: Path, split: str = "test") -> RetrievalSet:
    tsv = _require(root / f"{split}_imgs.tsv", "Chinese-CLIP's images: image id, tab, base64")
    texts = _require(root / f"{split}_texts.jsonl", "Chinese-CLIP's texts: text_id, text, image_ids")
    result = RetrievalSet([], [], [], [])
    row_of: dict[str, int] = {}
    offset = 0
    with tsv.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            body = line.rstrip(b"\r\n")
            image_id, tab, data = body.partition(b"\t")
            if body and (not tab or not image_id.strip() or not data.strip()):
                raise BenchmarkError(f"{tsv}:{number}: not 'image id<TAB>base64 image'")
            if body:
                key = image_id.decode("utf-8", "replace").strip()
                if key in row_of:
                    raise BenchmarkError(f"{tsv}:{number}: image id {key} again")
                row_of[key] = len(result.images)
                start = offset + len(image_id) + 1
                result.images.append(TsvImage(str(tsv), key, start, len(data)))
            offset += len(line)
    for number, record in _json_lines(texts):
        text = record.get("text") if isinstance(record, dict) else None
        ids = record.get("image_ids") if isinstance(record, dict) else None
        if not isinstance(text, str) or not isinstance(ids, list) or not ids:
            raise BenchmarkError(f'{texts}:{number}: needs "text" and a non-empty "image_ids" list')
        unknown = [str(i) for i in ids if str(i) not in row_of]
        if unknown:
            raise BenchmarkError(f"{texts}:{number}: image {unknown[0]} is not in {tsv.name}")
        result.captions.append(_caption(texts, number, text))
        result.owners.append([row_of[str(i)] for i in ids])
        result.langs.append("zh")
    if not result.captions:
        raise BenchmarkError(f"{texts}: no texts")
    return result


def read_pairs_set(path: Path) -> RetrievalSet:
    """Our pairs file, lenient as in training (``datafiles.read_pairs``)."""
    table = read_pairs(path)
    rows = {image: i for i, image in enumerate(dict.fromkeys(row["image"] for row in table.rows))}
    return RetrievalSet(
        list(rows),
        [row["caption"] for row in table.rows],
        [[rows[row["image"]]] for row in table.rows],
        [row.get("lang", "") for row in table.rows],
        Counter(table.skipped),
        str(path),
    )


def guess_format(path: Path) -> str:
    """jsonl or csv by a file's extension; a folder's format by the files it holds."""
    if path.is_file():
        return "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"
    if (path / "test_image_names.txt").is_file():
        return "xtd10"
    if (path / "captions.jsonl").is_file():
        return "xm3600"
    if any(path.glob("*_imgs.tsv")):
        return "cn-clip"
    if any(path.glob("test_2016.*")) or (path / "data" / "task2").is_dir() or (path / "raw").is_dir():
        return "multi30k"
    raise BenchmarkError(f"{path}: cannot tell the format; pass --format (one of {', '.join(FORMATS)})")


def read_retrieval_set(
    path: str | Path,
    fmt: str | None = None,
    images: str | Path | None = None,
    split: str = "test",
    langs: Sequence[str] | None = None,
) -> RetrievalSet:
    """Read ``path`` in format ``fmt`` (guessed when None); ``images``: where the image files are, for the
    formats that name them (default: ``path/images``); ``split``: cn-clip's split; ``langs``: keep only these."""
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: no such file or folder")
    fmt = fmt or guess_format(path)
    image_folder = Path(images) if images else None
    readers: dict[str, Callable[[], RetrievalSet]] = {
        "jsonl": lambda: read_pairs_set(path),
        "csv": lambda: read_pairs_set(path),
        "xtd10": lambda: read_xtd10(path, image_folder),
        "xm3600": lambda: read_xm3600(path, image_folder),
        "multi30k": lambda: read_multi30k(path, image_folder),
        "cn-clip": lambda: read_cn_clip(path, split),
    }
    if fmt not in readers:
        raise BenchmarkError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt in ("jsonl", "csv") and not path.is_file():
        raise BenchmarkError(f"{path}: the {fmt} format wants a file, this is a folder (pass --format)")
    if fmt not in ("jsonl", "csv") and not path.is_dir():
        raise BenchmarkError(f"{path}: the {fmt} format wants the benchmark's folder")
    result = readers[fmt]()
    result.source, result.format = str(path), fmt
    return result.only(langs)


# Published numbers for BAAI/AltCLIP (AltCLIP paper, arXiv 2211.06679, Table 3, and the model card):
# Flickr30k test, MR over text-to-image and image-to-text R@1/5/10.
PUBLISHED: dict[str, dict[str, float]] = {"flickr30k": {"en": 88.3, "zh": 87.2}}


def published_for(path: str | Path, fmt: str | None, benchmark: str | None = None) -> dict[str, float]:
    """BAAI/AltCLIP's published MR per language for this set: ``benchmark`` when given, else guessed from
    the name of a pairs file or a cn-clip folder (Flickr30k-CN, flickr30k-test.jsonl); empty when unknown."""
    if benchmark:
        if benchmark not in PUBLISHED:
            raise BenchmarkError(f"no published numbers for {benchmark!r}; known: {', '.join(PUBLISHED)}")
        return PUBLISHED[benchmark]
    if fmt not in (None, "jsonl", "csv", "cn-clip"):
        return {}  # the other benchmarks' captions are not Flickr30k's test captions
    name = Path(path).name.lower()
    return next((numbers for key, numbers in PUBLISHED.items() if key in name), {})

"""Checkpoint files: a folder or hub name -> local files; weights read and written safely.

This module is the library's I/O floor: it knows files and state dicts, never a model class.

* Names are resolved with ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE`` honoured); a local
  folder is used as it is.
* Weights come from ``model.safetensors`` (sharded with its index too) or, failing that,
  ``pytorch_model.bin`` read with ``torch.load(weights_only=True)`` only.
* Loading is strict: after an explicit rename table, every missing, unexpected or misshapen key is
  named in the error.
* Writes are atomic: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_INDEX, SAFE_WEIGHTS, PICKLE_INDEX, PICKLE_WEIGHTS)
READ_GROUP = 16  # tensors read per opening of a safetensors file (iter_weights)


class CheckpointNotFoundError(FileNotFoundError):
    """A model name or folder that cannot be turned into local files."""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _how_to_get(name: str) -> str:
    return (
        f"On a machine with internet run `hf download {name}` (or `huggingface-cli download {name}`) and copy "
        "the Hugging Face cache here, or pass the path of a local folder that holds the model's files."
    )


def resolve_file(
    name_or_path: str | Path,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    required: bool = True,
) -> Path | None:
    """Return the local path of ``filename`` from a folder or a hub repository.

    With ``required=False`` a file the folder or repository does not have gives ``None``; a hub
    repository that cannot be reached (offline, not cached) is always an error that says what to do.
    """
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if required:
            raise CheckpointNotFoundError(f"{folder} has no {filename}")
        return None
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or folder.exists():
        raise CheckpointNotFoundError(f"{name} is not a folder (no such directory)")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or _offline()
    try:
        return Path(
            hf_hub_download(
                name,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
                library_name="altclip",
            )
        )
    except LocalEntryNotFoundError as err:
        if not required and _cached_repo(name, revision, cache_dir):
            return None
        why = "downloading is off (HF_HUB_OFFLINE=1 or local_files_only)" if offline else "the hub cannot be reached"
        raise CheckpointNotFoundError(
            f"{name}: {filename} is not in the local Hugging Face cache and {why}. {_how_to_get(name)}"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{name} is neither a local folder nor a model on the Hugging Face hub (or it is private or gated)"
        ) from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(f"{name} has no revision {revision!r}") from err
    except EntryNotFoundError:
        if required:
            raise CheckpointNotFoundError(f"{name} has no {filename}") from None
        return None
    except HfHubHTTPError as err:
        if getattr(getattr(err, "response", None), "status_code", None) == 404 and not required:
            return None
        raise CheckpointNotFoundError(f"{name}: could not fetch {filename}: {err}") from err


def _cached_repo(name: str, revision: str | None, cache_dir: str | Path | None) -> bool:
    """Whether some file of this repository is cached (so a missing file is the repo's, not the cache's)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision), str)


def resolve_weights(name_or_path: str | Path, **hub: Any) -> list[Path]:
    """The weight files of a checkpoint, safetensors first, shards listed in order."""
    for candidate in WEIGHT_CANDIDATES:
        path = resolve_file(name_or_path, candidate, required=False, **hub)
        if path is None:
            continue
        if not candidate.endswith(".index.json"):
            return [path]
        index = json.loads(path.read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{path} lists no shards in its weight_map")
        return [resolve_file(name_or_path, shard, **hub) for shard in shards]  # type: ignore[misc]
    raise CheckpointNotFoundError(f"{name_or_path} has no weights: looked for {', '.join(WEIGHT_CANDIDATES)}")


def iter_weights(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of one weight file, read one tensor at a time, so that a caller converting each
    one (to bfloat16, to int8) never holds the whole float32 checkpoint. Pickles go through
    ``torch.load(weights_only=True, mmap=True)`` and nothing else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as weights:
            names = list(weights.keys())
        # safetensors maps the whole file into one storage that every tensor it gives is a view of; the file is
        # reopened every READ_GROUP tensors so that what a caller converted stops holding the file's pages.
        for start in range(0, len(names), READ_GROUP):
            with safe_open(path, framework="pt") as weights:
                for name in names[start : start + READ_GROUP]:
                    yield name, weights.get_tensor(name)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        raise ValueError(
            f"{path} is refused: it is not a plain tensor checkpoint that torch.load(weights_only=True) can read "
            f"safely ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Convert it to safetensors with a tool you trust."
        ) from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a mapping of names to tensors")
    yield from state.items()


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one weight file whole (safetensors in one opening; pickles as ``iter_weights`` reads them)."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return dict(iter_weights(path))


def load_state_dict(paths: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(read_weights(path))
    return state


@dataclass(frozen=True)
class KeyMap:
    """How a checkpoint's names become a module's: explicit, ordered rules; nothing else is guessed.

    ``keep``: if given, only keys matching one of these patterns are read (a tower out of a full model);
    ``drop``: keys known to carry nothing the module needs (legacy buffers); ``rename``: (pattern,
    replacement) pairs applied in order with ``re.sub``.
    """

    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()

    def rename_key(self, key: str) -> str | None:
        """The module's name for a checkpoint key, or None where the key is not read."""
        if self.keep and not any(re.search(p, key) for p in self.keep):
            return None
        if any(re.search(p, key) for p in self.drop):
            logger.info("checkpoint key %s is not used and was skipped", key)
            return None
        for pattern, replacement in self.rename:
            key = re.sub(pattern, replacement, key)
        return key

    def apply(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(self.stream(state.items()))

    def stream(self, items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for key, value in items:
            renamed = self.rename_key(key)
            if renamed is not None:
                yield renamed, value


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or misshapen key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if found[k].shape != expected[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = "\n    ".join(keys[:25]) + (f"\n    ... and {len(keys) - 25} more" if len(keys) > 25 else "")
            problems.append(f"  {label} ({len(keys)}):\n    {shown}")
    if problems:
        raise ValueError(f"the weights do not fit {what}:\n" + "\n".join(problems))


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; anything else is a ``ValueError`` that names the file."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(values).__name__}")
    return values


def write_json(path: str | Path, values: Mapping[str, Any]) -> Path:
    """``values`` as indented, key-sorted JSON, written atomically (the layout Hugging Face files use)."""
    return atomic_write_bytes(path, (json.dumps(values, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def parse_size(size: int | str, what: str = "max_shard_size") -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{what} {size!r} is not a size such as '5GB' or 2000000000")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(match.group(1)) * scale)


def save_weights(
    state: Mapping[str, torch.Tensor], folder: str | Path, max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write ``model.safetensors`` (or shards plus ``model.safetensors.index.json``) atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    limit = parse_size(max_shard_size)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        names = [SAFE_WEIGHTS]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards, strict=True):
        with atomic_path(folder / name) as tmp:
            save_file(shard, str(tmp), metadata=metadata)
        written.append(folder / name)
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        written.append(atomic_write_bytes(folder / SAFE_INDEX, (json.dumps(index, indent=2) + "\n").encode()))
        (folder / SAFE_WEIGHTS).unlink(missing_ok=True)
    else:
        (folder / SAFE_INDEX).unlink(missing_ok=True)
    return written

"""Weights read and written safely, and the explicit rename tables that fit a checkpoint's names to a module.

* Weights come from ``model.safetensors`` (in pieces with its index too) or, failing that,
  ``pytorch_model.bin`` read with ``torch.load(weights_only=True)`` only.
* Loading is strict: after a ``KeyMap``, every missing, unexpected or misshapen key is named in the error.
* Writes are atomic (``altclip.files``).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from altclip.errors import InputError
from altclip.files import atomic_path, parse_size, write_json
from altclip.hub import HubError, resolve_file

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_INDEX, SAFE_WEIGHTS, PICKLE_INDEX, PICKLE_WEIGHTS)
READ_GROUP = 16  # tensors read per opening of a safetensors file (iter_weights)


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
            raise InputError(f"{path} lists no shards in its weight_map")
        return [resolve_file(name_or_path, shard, **hub) for shard in shards]  # type: ignore[misc]
    raise HubError(f"{name_or_path} has no weights: looked for {', '.join(WEIGHT_CANDIDATES)}")


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
        raise InputError(
            f"{path} is refused: it is not a plain tensor checkpoint that torch.load(weights_only=True) can read "
            f"safely ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Convert it to safetensors with a tool you trust."
        ) from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a mapping of names to tensors")
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
        raise InputError(f"the weights do not fit {what}:\n" + "\n".join(problems))


def save_weights(
    state: Mapping[str, torch.Tensor], folder: str | Path, max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write ``model.safetensors`` (or shards plus ``model.safetensors.index.json``) atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    limit = parse_size(max_shard_size, "max_shard_size")
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
        written.append(write_json(folder / SAFE_INDEX, index))
        (folder / SAFE_WEIGHTS).unlink(missing_ok=True)
    else:
        (folder / SAFE_INDEX).unlink(missing_ok=True)
    return written

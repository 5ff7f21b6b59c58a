"""A model name or folder -> local files: ``huggingface_hub``'s cache, ``HF_HUB_OFFLINE`` honoured.

A local folder is used as it is; a hub name is looked up in the Hugging Face cache and, unless downloading is off,
fetched. Every way this can fail is a ``HubError`` that says what to do.

Floor: imports only ``altclip.errors``.
"""

from __future__ import annotations

from pathlib import Path

from altclip.errors import MissingFileError


class HubError(MissingFileError):
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
            raise HubError(f"{folder} has no {filename}")
        return None
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or folder.exists():
        raise HubError(f"{name} is not a folder (no such directory)")

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
        raise HubError(
            f"{name}: {filename} is not in the local Hugging Face cache and {why}. {_how_to_get(name)}"
        ) from err
    except RepositoryNotFoundError as err:
        raise HubError(
            f"{name} is neither a local folder nor a model on the Hugging Face hub (or it is private or gated)"
        ) from err
    except RevisionNotFoundError as err:
        raise HubError(f"{name} has no revision {revision!r}") from err
    except EntryNotFoundError:
        if required:
            raise HubError(f"{name} has no {filename}") from None
        return None
    except HfHubHTTPError as err:
        if getattr(getattr(err, "response", None), "status_code", None) == 404 and not required:
            return None
        raise HubError(f"{name}: could not fetch {filename}: {err}") from err


def _cached_repo(name: str, revision: str | None, cache_dir: str | Path | None) -> bool:
    """Whether some file of this repository is cached (so a missing file is the repo's, not the cache's)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision), str)


def resolve_model(name_or_path: str | Path, revision: str | None = None) -> tuple[str, str | None]:
    """What a model name stands for, so that it means the same from any working directory and after the hub
    moves on: (a local folder's absolute path, None), or (a hub name, the commit of the snapshot it resolves to
    now, from the cache when offline)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return str(folder.resolve()), None
    config = resolve_file(name_or_path, "config.json", revision=revision)
    snapshot = config.parent if config is not None else None  # .../snapshots/<commit>/config.json
    if snapshot is not None and snapshot.parent.name == "snapshots":
        return str(name_or_path), snapshot.name
    return str(name_or_path), revision

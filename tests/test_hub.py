"""A hub name or folder -> local files: the Hugging Face cache offline, and clear errors for what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import altclip
from altclip.errors import AltCLIPError, MissingFileError
from altclip.hub import HubError
from tests.modeling.test_weights import ALT, altclip_outputs


def fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out the way huggingface_hub caches a download."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_hub_names_resolve_from_the_cache_offline(tmp_path):
    source = tmp_path / "source"
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT)).eval()
    model.save_pretrained(source)
    cache = tmp_path / "cache"
    fake_hub_cache(cache, "tiny-org/tiny-altclip", {p.name: p.read_bytes() for p in source.iterdir()})

    loaded = altclip.AltCLIPModel.from_pretrained("tiny-org/tiny-altclip", cache_dir=cache, local_files_only=True)
    assert torch.equal(altclip_outputs(loaded).logits_per_image, altclip_outputs(model).logits_per_image)
    with pytest.raises(HubError, match=r"tiny-org/absent.*not in the local Hugging Face cache.*hf download"):
        altclip.AltCLIPModel.from_pretrained("tiny-org/absent", cache_dir=cache, local_files_only=True)

    # HF_HUB_OFFLINE=1 is honoured without local_files_only, as a user would set it.
    script = textwrap.dedent(
        """
        import altclip
        from altclip.hub import HubError
        m = altclip.AltCLIPModel.from_pretrained("tiny-org/tiny-altclip")
        print("loaded", m.num_parameters())
        try:
            altclip.AltCLIPModel.from_pretrained("BAAI/AltCLIP")
        except HubError as err:
            print("error:", err)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"loaded {model.num_parameters()}" in result.stdout
    assert "BAAI/AltCLIP: config.json is not in the local Hugging Face cache" in result.stdout
    assert "HF_HUB_OFFLINE=1" in result.stdout and "hf download BAAI/AltCLIP" in result.stdout


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(HubError, match="not a folder"):
        altclip.AltCLIPModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(HubError, match=r"has no config.json"):
        altclip.AltCLIPModel.from_pretrained(tmp_path)
    altclip.AltCLIPConfig.from_dict(ALT).save_pretrained(tmp_path)
    with pytest.raises(HubError, match="has no weights"):
        altclip.AltCLIPModel.from_pretrained(tmp_path)


def test_hub_errors_are_errors_a_user_can_fix():
    assert issubclass(HubError, MissingFileError) and issubclass(HubError, AltCLIPError)
    assert issubclass(HubError, FileNotFoundError)  # what callers caught before 0.2

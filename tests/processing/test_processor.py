"""Processors, and the acceptance test: the docs' examples on local folders, equal to transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import skimage
import torch
import transformers
from PIL import Image

import altclip
from altclip.processing.image import CLIPImageProcessor
from tests.conftest import assert_close, tiny_checkpoint

CAT = Path(skimage.__file__).parent / "data" / "chelsea.png"  # a photograph of a cat


@pytest.mark.parametrize("family", ["altclip", "clip"])
def test_docs_example_gives_transformers_probabilities(tmp_path, request, family):
    folder = tiny_checkpoint(
        tmp_path / family, request.getfixturevalue(f"{'xlmr' if family == 'altclip' else 'clip'}_folder"), family
    )
    labels = ["a photo of a cat", "a photo of a dog", "一张猫的照片", "猫の写真"]

    def docs_example(model_cls, processor_cls):
        # the usage example of the AltCLIP / CLIP docs, with a local folder
        model = model_cls.from_pretrained(folder)
        processor = processor_cls.from_pretrained(folder)
        image = Image.open(CAT)
        inputs = processor(text=labels, images=image, return_tensors="pt", padding=True)
        outputs = model(**inputs)
        logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
        return logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities

    names = ("AltCLIPModel", "AltCLIPProcessor") if family == "altclip" else ("CLIPModel", "CLIPProcessor")
    ours = docs_example(getattr(altclip, names[0]), getattr(altclip, names[1]))
    theirs = docs_example(getattr(transformers, names[0]), getattr(transformers, names[1]))
    assert ours.shape == (1, len(labels))
    assert_close(ours, theirs, atol=1e-6, what="probabilities")


def test_text_only_images_only_and_neither(tmp_path, xlmr_folder):
    folder = tiny_checkpoint(tmp_path / "m", xlmr_folder, "altclip")
    processor = altclip.AltCLIPProcessor.from_pretrained(folder)
    text = processor(text=["un chat", "a much longer caption"], padding=True, return_tensors="pt")
    assert set(text) == {"input_ids", "attention_mask"} and text.input_ids.shape[0] == 2
    images = processor(images=[Image.open(CAT), CAT], return_tensors="pt")
    assert set(images) == {"pixel_values"} and images.pixel_values.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="needs text, images or both"):
        processor()
    model = altclip.AltCLIPModel.from_pretrained(folder)
    with torch.no_grad():
        assert model.get_text_features(**text).shape == (2, 16)
        assert model.get_image_features(**images).shape == (2, 16)
    assert processor.batch_decode(text.input_ids, skip_special_tokens=True)[0] == "un chat"


def test_processor_files_round_trip_with_transformers(tmp_path, xlmr_folder, clip_folder):
    for family, tokenizer_folder, ours_cls, theirs_cls in [
        ("altclip", xlmr_folder, altclip.AltCLIPProcessor, transformers.AltCLIPProcessor),
        ("clip", clip_folder, altclip.CLIPProcessor, transformers.CLIPProcessor),
    ]:
        source = tiny_checkpoint(tmp_path / family, tokenizer_folder, family)
        ours_cls.from_pretrained(source).save_pretrained(tmp_path / f"{family}-saved")
        ours, theirs = (
            ours_cls.from_pretrained(tmp_path / f"{family}-saved"),
            theirs_cls.from_pretrained(tmp_path / f"{family}-saved"),
        )
        a = ours(text=["a cat", "猫"], images=Image.open(CAT), return_tensors="pt", padding=True)
        b = theirs(text=["a cat", "猫"], images=Image.open(CAT), return_tensors="pt", padding=True)
        assert set(a) == set(b)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
        assert_close(a.pixel_values, b.pixel_values, atol=1e-6)
    with pytest.raises(TypeError, match="needs a XLMRobertaTokenizer"):
        altclip.AltCLIPProcessor(CLIPImageProcessor(), altclip.CLIPTokenizer.from_pretrained(clip_folder))


@pytest.mark.real_weights
def test_real_altclip_knows_a_cat_in_chinese():
    """Opt in with `pytest -m real_weights` on a machine whose Hugging Face cache holds BAAI/AltCLIP."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("BAAI/AltCLIP", "config.json"), str):
        pytest.skip("BAAI/AltCLIP is not in the local Hugging Face cache")
    model = altclip.AltCLIPModel.from_pretrained("BAAI/AltCLIP", local_files_only=True)
    processor = altclip.AltCLIPProcessor.from_pretrained("BAAI/AltCLIP", local_files_only=True)
    inputs = processor(text=["一张猫的照片", "一张狗的照片"], images=Image.open(CAT), return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(dim=1)
    assert probs[0, 0] > 0.99, probs


def test_sentencepiece_only_folder_is_a_complete_processor(tmp_path, xlmr_folder):
    """A folder with only sentencepiece.bpe.model (AltCLIP-m9's layout) is a complete processor."""
    folder = tiny_checkpoint(tmp_path / "m9", xlmr_folder, "altclip")
    (folder / "tokenizer.json").unlink()
    shutil.copyfile(xlmr_folder / "sentencepiece.bpe.model", folder / "sentencepiece.bpe.model")
    processor = altclip.AltCLIPProcessor.from_pretrained(folder)
    expected = transformers.AltCLIPProcessor.from_pretrained(folder)(text=["狗"], return_tensors="pt")
    assert torch.equal(processor(text=["狗"], return_tensors="pt").input_ids, expected.input_ids)


PROCESSORS = {
    "altclip": (altclip.AltCLIPProcessor, transformers.AltCLIPProcessor, "xlmr_folder"),
    "clip": (altclip.CLIPProcessor, transformers.CLIPProcessor, "clip_folder"),
}


def saved_by_transformers(folder: Path, source: Path, family: str, shortest_edge: int) -> Path:
    """``folder``: the model of ``source`` with its processor saved by the installed transformers (5: the image
    processor nested in processor_config.json, no preprocessor_config.json)."""
    theirs_cls = PROCESSORS[family][1]
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.json", "*.model", "*.txt"))
    shutil.copy(source / "config.json", folder)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": shortest_edge}, crop_size={"height": 32, "width": 32}
    )
    theirs_cls(image_processor=image_processor, tokenizer=theirs_cls.from_pretrained(source).tokenizer).save_pretrained(
        folder
    )
    return folder


def both_outputs(folder: Path, family: str):
    ours_cls, theirs_cls, _ = PROCESSORS[family]
    ours, theirs = ours_cls.from_pretrained(folder), theirs_cls.from_pretrained(folder)
    texts = ["a cat", "猫"]
    return (
        ours,
        ours(text=texts, images=Image.open(CAT), return_tensors="pt", padding=True),
        theirs(text=texts, images=Image.open(CAT), return_tensors="pt", padding=True),
    )


@pytest.mark.parametrize("family", ["altclip", "clip"])
def test_folders_written_by_transformers_5_load(tmp_path, request, family, capsys):
    from altclip.cli import main
    from altclip.tasks import Embedder

    source = tiny_checkpoint(tmp_path / "source", request.getfixturevalue(PROCESSORS[family][2]), family)
    folder = saved_by_transformers(tmp_path / "tf", source, family, shortest_edge=40)
    if transformers.__version__.startswith("5."):
        assert (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").exists()
    ours, a, b = both_outputs(folder, family)
    assert ours.image_processor.size == {"shortest_edge": 40}  # read from the nested settings, not a default
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert_close(a.pixel_values, b.pixel_values, atol=1e-6)
    # the layers above read the folder too: Embedder and a command
    embedder = Embedder.from_pretrained(folder)
    assert embedder.embed_images([CAT]).shape == (1, 16)
    assert main(["classify", str(CAT), "--model", str(folder), "--labels", "cat", "dog", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"] in ("cat", "dog")

    # saving into that folder keeps both files in step: transformers and altclip read the new settings
    ours.image_processor.size = {"shortest_edge": 48}
    ours.save_pretrained(folder)
    ours, a, b = both_outputs(folder, family)
    assert ours.image_processor.size == {"shortest_edge": 48}
    assert_close(a.pixel_values, b.pixel_values, atol=1e-6)
    nested = json.loads((folder / "processor_config.json").read_text())
    assert nested["image_processor"]["size"] == {"shortest_edge": 48}


@pytest.mark.parametrize("family", ["altclip", "clip"])
def test_nested_settings_win_as_in_transformers(tmp_path, request, family):
    source = tiny_checkpoint(tmp_path / "source", request.getfixturevalue(PROCESSORS[family][2]), family)
    folder = saved_by_transformers(tmp_path / "tf", source, family, shortest_edge=40)
    flat = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 32, "width": 32}).to_dict()
    (folder / "preprocessor_config.json").write_text(json.dumps(flat))  # both layouts, disagreeing
    ours, a, b = both_outputs(folder, family)
    assert_close(a.pixel_values, b.pixel_values, atol=1e-6)  # the same choice as transformers
    assert ours.image_processor.size == {"shortest_edge": 40}


def test_missing_image_processor_settings_name_both_files(tmp_path, xlmr_folder):
    folder = tiny_checkpoint(tmp_path / "m", xlmr_folder, "altclip")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither preprocessor_config\.json nor an image_processor"):
        altclip.AltCLIPProcessor.from_pretrained(folder)
    (folder / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"processor_config\.json is not valid JSON"):
        altclip.AltCLIPProcessor.from_pretrained(folder)

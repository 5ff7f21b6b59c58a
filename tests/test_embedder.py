"""The Embedder against direct model calls, prompt ensembles against a naive reference."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from altclip.modeling.models import normalize
from altclip.processing.prompts import TEMPLATES
from altclip.tasks import Embedder

TEXTS = [
    "a photo of a cat",
    "一张狗的照片",
    "猫",
    "una foto de un perro muy grande en el parque",
    "",
    "고양이 사진",
    "صورة قطة",
    "a much longer caption about a red apple lying on a wooden kitchen table",
]


def direct_text(embedder: Embedder, texts) -> torch.Tensor:
    inputs = embedder.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return normalize(embedder.model.get_text_features(inputs["input_ids"], inputs["attention_mask"]))


def direct_images(embedder: Embedder, images) -> torch.Tensor:
    inputs = embedder.processor(images=images, return_tensors="pt")
    with torch.no_grad():
        return normalize(embedder.model.get_image_features(inputs["pixel_values"]))


@pytest.mark.parametrize("family", ["altclip", "clip"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_embeddings_equal_direct_model_calls(request, image_folder, family, batch_size):
    embedder = Embedder.from_pretrained(request.getfixturevalue(f"{family}_checkpoint"), batch_size=batch_size)
    torch.testing.assert_close(embedder.embed_texts(TEXTS), direct_text(embedder, TEXTS), atol=1e-6, rtol=0)
    paths = sorted(image_folder.glob("img*"))[:5]
    images = [Image.open(p) for p in paths]
    torch.testing.assert_close(embedder.embed_images(paths), direct_images(embedder, images), atol=1e-6, rtol=0)
    similarity = embedder.similarity(paths, TEXTS)
    assert similarity.shape == (5, len(TEXTS))
    torch.testing.assert_close(
        similarity, direct_images(embedder, images) @ direct_text(embedder, TEXTS).t(), atol=1e-5, rtol=0
    )
    assert embedder.embed_texts(TEXTS).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_dtype_and_device(altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint, precision="bfloat16", device="cpu")
    vectors = embedder.embed_texts(["a cat"])  # matrix multiplies in bfloat16, unit vectors in float32
    assert vectors.dtype == torch.float32 and vectors.device.type == "cpu"
    assert embedder.model.autocast_dtype == torch.bfloat16 and embedder.precision.name == "bfloat16"


def test_classify_is_a_prompt_ensemble(altclip_checkpoint, image_folder):
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    labels = ["猫", "狗", "鸟"]
    paths = sorted(image_folder.glob("img*"))[:3]
    probs = embedder.classify(paths, labels, lang="zh")
    # naive reference: every prompt on its own, averaged per class by hand
    classes = []
    for label in labels:
        prompts = direct_text(embedder, [t.format(label) for t in TEMPLATES["zh"]])
        classes.append(normalize(prompts.mean(dim=0, keepdim=True))[0])
    logits = embedder.logit_scale * direct_images(embedder, [Image.open(p) for p in paths]) @ torch.stack(classes).t()
    torch.testing.assert_close(probs, logits.softmax(dim=-1), atol=1e-5, rtol=0)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))


def test_class_embeddings_are_computed_once(altclip_checkpoint, image_folder, monkeypatch):
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    calls = []
    original = embedder.embed_texts
    monkeypatch.setattr(embedder, "embed_texts", lambda texts: calls.append(len(texts)) or original(texts))
    paths = sorted(image_folder.glob("img*"))[:2]
    first = embedder.classify(paths, ["cat", "dog"], templates=["a photo of a {}", "a {}"])
    second = embedder.classify(paths[:1], ["cat", "dog"], templates=["a photo of a {}", "a {}"])
    assert calls == [4]
    # the class embeddings are the cached ones; the image went through a batch of 2, then of 1, and matrix
    # kernels may round differently by batch shape (they do on AVX-512), so equal within float tolerance
    torch.testing.assert_close(first[:1], second, atol=1e-6, rtol=0)
    embedder.classify(paths, ["cat", "bird"], templates=["a {}"])
    assert calls == [4, 2]


def test_the_class_embedding_cache_is_bounded(altclip_checkpoint, monkeypatch):
    """A server fed ever new label sets keeps only the most recent ones."""
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    monkeypatch.setattr(embedder, "CLASS_CACHE_SIZE", 3)
    kept = {}
    for i in range(10):
        kept[i] = embedder.zero_shot_classes([f"label {i}", "other"], templates=["{}"])
        assert len(embedder._class_embeddings) == min(i + 1, 3)
    assert embedder.zero_shot_classes(["label 9", "other"], templates=["{}"]) is kept[9]  # recent: cached
    assert embedder.zero_shot_classes(["label 0", "other"], templates=["{}"]) is not kept[0]  # evicted
    torch.testing.assert_close(embedder.zero_shot_classes(["label 0", "other"], templates=["{}"]), kept[0])


def test_bad_arguments(altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    with pytest.raises(ValueError, match="labels is empty"):
        embedder.classify([Image.new("RGB", (8, 8))], [])
    with pytest.raises(ValueError, match="no built-in templates for language 'xx'"):
        embedder.classify([Image.new("RGB", (8, 8))], ["a"], lang="xx")
    with pytest.raises(ValueError, match="texts is empty"):
        embedder.embed_texts([])
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(embedder.model, embedder.processor, batch_size=0)


@pytest.mark.parametrize("family", ["altclip", "clip"])
def test_one_embedder_shared_by_threads(request, image_folder, family, corpus):
    """A web server's case: many threads, one Embedder; each thread gets what one thread alone gets."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    embedder = Embedder.from_pretrained(request.getfixturevalue(f"{family}_checkpoint"), batch_size=4)
    rng = random.Random(0)
    long_text = " ".join(rng.sample(corpus, 60))  # past the token limit: truncation on every call
    paths = sorted(image_folder.glob("img*"))[:6]
    jobs = [([*rng.sample(corpus, rng.randint(1, 9)), long_text], rng.sample(paths, 2)) for _ in range(24)]

    def run(job):
        texts, images = job
        return embedder.embed_texts(texts), embedder.embed_images(images)

    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(run, jobs))
    for (texts_a, images_a), (texts_b, images_b) in zip(alone, together, strict=True):
        torch.testing.assert_close(texts_b, texts_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(images_b, images_a, atol=1e-6, rtol=0)

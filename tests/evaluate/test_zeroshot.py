"""Zero-shot accuracy on a class-folder dataset, against a hand computation."""

from __future__ import annotations

import pytest
import torch

from altclip.evaluate.zeroshot import evaluate_zeroshot, read_classnames, read_image_folder
from altclip.tasks import Embedder
from tests.conftest import COLOURS, draw


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    for colour, (_, rgb) in COLOURS.items():
        (root / colour).mkdir()
        for shape in ("circle", "square", "triangle"):
            draw(rgb, shape).save(root / colour / f"{shape}.png")
    (root / "red" / "broken.png").write_bytes(b"nope")
    return root


def test_accuracy_equals_a_hand_computation(shapes_folder, altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    _, samples = read_image_folder(shapes_folder)
    names = ["蓝色", "绿色", "红色", "黄色"]  # sorted folders: blue, green, red, yellow
    result = evaluate_zeroshot(embedder, shapes_folder, names, lang="zh", workers=0, progress=False)
    good = [(p, c) for p, c in samples if not p.endswith("broken.png")]
    probs = embedder.classify([p for p, _ in good], names, lang="zh")
    labels = torch.tensor([c for _, c in good])
    assert result.top1 == pytest.approx(100 * float((probs.argmax(-1) == labels).float().mean()))
    assert result.top5 == 100.0  # four classes: the right one is always in the top five
    assert result.images == 12 and result.skipped[0]["status"] == "not_image"
    assert set(result.per_class_recall) == set(names)


def test_classname_files(tmp_path):
    classes = ["n01", "n02"]
    (tmp_path / "plain.txt").write_text("goldfish\nshark\n")
    (tmp_path / "mapped.txt").write_text("n02\t鲨鱼\nn01\t金鱼\n")
    assert read_classnames(tmp_path / "plain.txt", classes) == ["goldfish", "shark"]
    assert read_classnames(tmp_path / "mapped.txt", classes) == ["金鱼", "鲨鱼"]
    with pytest.raises(ValueError, match="1 names for 2 class folders"):
        (tmp_path / "short.txt").write_text("goldfish\n")
        read_classnames(tmp_path / "short.txt", classes)

"""ONNX export: both towers in ONNX Runtime equal transformers (fp32, 1e-5) at any batch and length."""

from __future__ import annotations

import json

import pytest
import torch

import altclip
from altclip.cli import main
from altclip.runtime.export import export_onnx
from altclip.runtime.onnx import METADATA_NAME, ONNX_FOLDER, OnnxModel
from altclip.tasks import Embedder
from tests.conftest import ALTCLIP_CONFIGS, CLIP_CONFIGS, assert_close, pixels, saved_transformers_model
from tests.modeling.test_models import altclip_inputs, clip_inputs

CASES = [
    ("AltCLIPModel", "altclip", ALTCLIP_CONFIGS["base"], altclip_inputs, ("text", "vision")),
    ("AltCLIPModel", "altclip", ALTCLIP_CONFIGS["odd_heads"], altclip_inputs, ("text",)),
    ("CLIPModel", "clip", CLIP_CONFIGS["base"], clip_inputs, ("text", "vision")),
    ("CLIPModel", "clip", CLIP_CONFIGS["legacy_eos"], clip_inputs, ("text",)),
]


@pytest.mark.parametrize(("class_name", "kind", "config", "make_inputs", "towers"), CASES)
def test_onnx_runtime_equals_transformers(tmp_path, class_name, kind, config, make_inputs, towers):
    theirs, folder = saved_transformers_model(tmp_path, class_name, config, kind)
    ours = getattr(altclip, class_name).from_pretrained(folder)
    export_onnx(ours, tmp_path / "onnx-export", towers=towers)
    exported = OnnxModel.from_pretrained(tmp_path / "onnx-export")
    assert sorted(exported.graphs) == sorted(towers)
    with torch.no_grad():
        # batches and lengths other than the traced ones (2 x 8): dynamic axes, padding, a lone sequence
        for lengths in ([7, 3, 5, 7], [4], [2, 2, 2], [11, 2, 6, 3, 9]):
            ids, mask = make_inputs(config, lengths)
            expected = theirs.get_text_features(ids, mask).pooler_output
            assert_close(exported.get_text_features(ids, mask), expected, what=f"{kind} text {lengths}")
        if "vision" in towers:
            size = config["vision_config"]["image_size"]
            for batch in (1, 3, 5):
                px = pixels(batch, size, seed=batch)
                expected = theirs.get_image_features(px).pooler_output
                assert_close(exported.get_image_features(px), expected, what=f"{kind} vision batch {batch}")
    assert exported.logit_scale.item() == pytest.approx(ours.logit_scale.item())


def test_export_errors(tmp_path, altclip_checkpoint):
    model = altclip.AltCLIPModel.from_pretrained(altclip_checkpoint)
    with pytest.raises(ValueError, match="towers must be some of"):
        export_onnx(model, tmp_path / "x", towers=["audio"])
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        export_onnx(model.to(torch.bfloat16), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="is not an ONNX export"):
        OnnxModel.from_pretrained(altclip_checkpoint)
    with pytest.raises(ValueError, match="the onnx backend runs"):
        Embedder.from_pretrained(altclip_checkpoint, backend="onnx", precision="bfloat16")
    with pytest.raises(ValueError, match="backend must be one of"):
        Embedder.from_pretrained(altclip_checkpoint, backend="tensorrt")


def test_cli_export_then_tasks_on_onnx_runtime(tmp_path, capsys, altclip_checkpoint, image_folder):
    out = tmp_path / "exported"
    code = main(["export", "onnx", "--model", str(altclip_checkpoint), "--out", str(out), "--towers", "text", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["tower"] for r in report] == ["text"]
    assert report[0]["max_abs_diff"] <= 1e-5
    exported = OnnxModel.from_pretrained(out)
    with pytest.raises(ValueError, match="has no vision graph"):
        exported.get_image_features(pixels(1, 32))
    with pytest.raises(ValueError, match="length at most"):
        exported.get_text_features(torch.ones(1, 600, dtype=torch.long))

    # the whole folder: both towers, processor files copied, tasks give PyTorch's answers
    code = main(["export", "onnx", "--model", str(altclip_checkpoint), "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["tower"] for r in report] == ["text", "vision"]
    towers = json.loads((out / ONNX_FOLDER / METADATA_NAME).read_text())["towers"]
    assert towers == {t: {"graph": f"{t}_model.onnx", "quantize": None} for t in ("text", "vision")}
    assert not list((out / ONNX_FOLDER).glob(".export-*"))  # no temporary folders left
    images = [str(p) for p in sorted(image_folder.glob("img*"))[:3]]
    labels = ["猫", "狗", "鸟"]
    expected = Embedder.from_pretrained(altclip_checkpoint).classify(images, labels, lang="zh")
    assert_close(Embedder.from_pretrained(out, backend="onnx").classify(images, labels, lang="zh"), expected)
    code = main(["classify", *images, "--labels", *labels, "--lang", "zh", "--model", str(out), "--backend", "onnx"])
    assert code == 0 and "猫" in capsys.readouterr().out


def test_int8_export_is_quantized_and_close(tmp_path, altclip_checkpoint, capsys):
    import onnx

    out = tmp_path / "int8"
    assert main(["export", "onnx", "--model", str(altclip_checkpoint), "--out", str(out), "--quantize", "int8"]) == 0
    table = capsys.readouterr().out
    assert "int8" in table and "min cosine" in table
    for tower in ("text", "vision"):
        graph = onnx.load(str(out / ONNX_FOLDER / f"{tower}_model.onnx"))
        ops = {node.op_type for node in graph.graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops  # really another computation
        weights = {init.name for init in graph.graph.initializer}
        float_matmuls = [n for n in graph.graph.node if n.op_type == "MatMul" and weights & set(n.input)]
        assert not float_matmuls  # every MatMul by a weight was quantized (attention's q k^T stays float)
    exported = Embedder.from_pretrained(out, backend="onnx")
    assert exported.model.quantized == {"text": "int8", "vision": "int8"}
    reference = Embedder.from_pretrained(altclip_checkpoint)
    texts = ["a photo of a cat", "一张狗的照片", "猫の写真"]
    cosine = (exported.embed_texts(texts) * reference.embed_texts(texts)).sum(-1)
    assert cosine.min() > 0.99
    px = pixels(3, 32)
    cosine = (exported.embed_pixels(px) * reference.embed_pixels(px)).sum(-1)
    assert cosine.min() > 0.99
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        export_onnx(reference.model, tmp_path / "x", quantize="int4")


@pytest.mark.slow
def test_real_size_export_matches_transformers(tmp_path):
    """BAAI/AltCLIP sizes: XLM-R-large's graph is over protobuf's 2 GB, so its weights go beside it."""
    from tests.modeling.test_models import BAAI_ALTCLIP

    theirs, folder = saved_transformers_model(tmp_path, "AltCLIPModel", BAAI_ALTCLIP, "altclip", attn="sdpa")
    graphs = export_onnx(altclip.AltCLIPModel.from_pretrained(folder), tmp_path / "exported")
    assert graphs["text"].with_name("text_model.onnx.data").stat().st_size > 2 * 10**9
    exported = OnnxModel.from_pretrained(tmp_path / "exported")
    ids, mask = altclip_inputs({"text_config": {"vocab_size": 250002}}, [77, 12, 40, 5])
    px = pixels(3, 224)
    with torch.no_grad():
        text = assert_close(exported.get_text_features(ids, mask), theirs.get_text_features(ids, mask).pooler_output)
        image = assert_close(exported.get_image_features(px), theirs.get_image_features(px).pooler_output)
    print(f"\nONNX Runtime at BAAI/AltCLIP sizes: max abs difference text {text:.3g}, image {image:.3g}")

"""Reports: the paper's table layout, JSON, and a PNG chart."""

from __future__ import annotations

import json

from PIL import Image

from altclip.evaluate.report import HEADERS, ReportRow, paper_table, write_report
from altclip.evaluate.retrieval import RetrievalScores


def rows() -> list[ReportRow]:
    def scores(x: float) -> RetrievalScores:
        return RetrievalScores({1: x, 5: x + 10, 10: x + 20}, {1: x + 1, 5: x + 11, 10: x + 21}, 100, 500)

    return [
        ReportRow("English", "CLIP", scores(60)),
        ReportRow("English", "AltCLIP", scores(61)),
        ReportRow("Chinese", "CLIP", scores(1)),
        ReportRow("Chinese", "AltCLIP", scores(58)),
    ]


def test_table_has_the_papers_columns():
    lines = paper_table(rows()).splitlines()
    assert lines[0].split() == " ".join(HEADERS).split()
    assert lines[2].split() == ["English", "CLIP", "60.0", "70.0", "80.0", "61.0", "71.0", "81.0", "70.5"]


def test_report_files(tmp_path):
    paths = write_report(rows(), tmp_path, title="test")
    data = json.loads(paths["json"].read_text())
    assert data[3]["language"] == "Chinese" and data[3]["t2i"]["R@1"] == 58 and data[3]["MR"] == 68.5
    with Image.open(paths["chart"]) as chart:
        assert chart.format == "PNG" and chart.size[0] > 600
    assert paths["text"].read_text().startswith("Language")

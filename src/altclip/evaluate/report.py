"""Reports shaped like the AltCLIP paper's retrieval table, as text, JSON and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altclip.evaluate.retrieval import KS, RetrievalScores
from altclip.files import atomic_path, atomic_write_bytes
from altclip.tables import format_table

HEADERS = ["Language", "Method", *(f"T2I R@{k}" for k in KS), *(f"I2T R@{k}" for k in KS), "MR"]


PUBLISHED_HEADER = "BAAI/AltCLIP MR (published)"


@dataclass
class ReportRow:
    language: str
    method: str
    scores: RetrievalScores
    published: float | None = None  # the released model's published MR on this set and language, if known

    def cells(self) -> list[Any]:
        s = self.scores
        return [
            self.language,
            self.method,
            *(f"{s.t2i[k]:.1f}" for k in KS),
            *(f"{s.i2t[k]:.1f}" for k in KS),
            f"{s.mean_recall:.1f}",
        ]

    def to_json(self) -> dict[str, Any]:
        published = {} if self.published is None else {"published_MR": self.published}
        return {"language": self.language, "method": self.method, **self.scores.to_json(), **published}


def paper_table(rows: Sequence[ReportRow]) -> str:
    """Language | Method | T2I R@1 R@5 R@10 | I2T R@1 R@5 R@10 | MR, recalls in percent; and the published MR
    of BAAI/AltCLIP beside ours when any row has one."""
    if all(row.published is None for row in rows):
        return format_table(HEADERS, [row.cells() for row in rows])
    cells = [[*row.cells(), "-" if row.published is None else f"{row.published:.1f}"] for row in rows]
    return format_table([*HEADERS, PUBLISHED_HEADER], cells)


def write_report(rows: Sequence[ReportRow], folder: str | Path, title: str = "retrieval") -> dict[str, Path]:
    """``report.json``, ``report.txt`` and ``report.png`` (recall@K per language and model) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "text": folder / "report.txt", "chart": folder / "report.png"}
    data = json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(paths["json"], data.encode("utf-8"))
    atomic_write_bytes(paths["text"], (paper_table(rows) + "\n").encode("utf-8"))
    with atomic_path(paths["chart"]) as tmp:
        draw_chart(rows, tmp, title)
    return paths


def draw_chart(rows: Sequence[ReportRow], path: Path, title: str) -> None:
    """Two panels (text-to-image, image-to-text); recall@K bars grouped by language, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = list(dict.fromkeys(r.language for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    by_key = {(r.language, r.method): r.scores for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(languages) * len(KS) / 2 + 3), 4.2), sharey=True)
    group = len(methods) * len(KS) + 1
    for ax, direction, label in zip(axes, ("t2i", "i2t"), ("text to image", "image to text"), strict=True):
        for m, method in enumerate(methods):
            for j, k in enumerate(KS):
                xs, heights = [], []
                for i, language in enumerate(languages):
                    if (language, method) in by_key:
                        xs.append(i * group + m * len(KS) + j)
                        heights.append(getattr(by_key[(language, method)], direction)[k])
                ax.bar(
                    xs,
                    heights,
                    color=f"C{m}",
                    alpha=0.45 + 0.25 * j,
                    width=0.9,
                    label=f"{method} R@{k}" if direction == "t2i" else None,
                )
        ax.set_xticks([i * group + (group - 2) / 2 for i in range(len(languages))], languages)
        ax.set_title(label)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("recall (%)")
    fig.legend(loc="upper center", ncol=len(methods) * len(KS), fontsize="small", frameon=False)
    fig.suptitle(title, y=0.02, fontsize="small")
    fig.tight_layout(rect=(0, 0.04, 1, 0.9))
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)

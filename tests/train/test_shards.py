"""Training from tar shards: streamed through a shuffle buffer, dealt out to processes, resumed exactly."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

import altclip
from altclip.data.shards import scan_shard
from altclip.train.data import ShardStream, pair_task
from altclip.train.loop import TrainConfig, Trainer
from altclip.train.phases import contrastive_phase, distillation_phase
from tests.conftest import make_shards
from tests.train.test_distributed import train
from tests.train.test_loop import Crash, losses


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("pair-shards"), shards=4, per_shard=12)


def pattern(shards) -> str:
    return str(shards[0].parent / f"{{00000..{len(shards) - 1:05d}}}.tar")


def drawn(stream: ShardStream, batch: int, world: int, rank: int, epoch: int, start=None) -> list[list]:
    return list(stream.batches(batch, world, rank, 0, epoch, start))


def test_the_stream_deals_shards_out_shuffles_and_restarts_where_it_stood(pair_shards):
    stream = ShardStream([str(s) for s in pair_shards], pair_task, buffer_size=10)
    every = [task[1] for shard in pair_shards for s in scan_shard(shard) if (task := pair_task(s)[0])]
    one = [t[1] for b in drawn(stream, 4, 1, 0, 0) for t in b]
    assert len(one) == 48 and set(one) == set(every)  # 48 usable (a truncated image among them), batches of 4
    assert stream.skipped == {"data: no image": 1, "data: no caption": 2}
    assert one != sorted(one) and one != [t[1] for b in drawn(stream, 4, 1, 0, 1) for t in b]  # shuffled per epoch
    ranks = [[t[0] for b in drawn(stream, 4, 2, r, 0) for t in b] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(set(ranks[0])) == len(set(ranks[1])) == 2  # shards dealt out
    # a position taken after any batch restarts the stream there
    full = drawn(stream, 4, 2, 1, 0)
    for k in range(1, len(full)):
        list(stream.batches(4, 2, 1, 0, 0))  # a fresh pass fills the positions
        position = json.loads(json.dumps(stream.position(k)))  # as a checkpoint stores it
        assert position["shard"] <= 2 and position["shard_path"] in (*map(str, pair_shards), None)
        assert drawn(stream, 4, 2, 1, 0, position) == full[k:]


def test_contrastive_from_shards_resumes_bit_for_bit(tmp_path, student, pair_shards):
    config = dict(steps=14, batch_size=4, lr=1e-3, save_every=5, progress=False, workers=1)
    phase = contrastive_phase(student, pattern(pair_shards), shuffle_buffer=10)
    summary = Trainer(phase, TrainConfig(tmp_path / "straight", **config)).fit()
    assert summary.skipped["data: no image"] >= 1 and summary.skipped["image: truncated"] >= 1
    assert summary.epochs_started == 2  # 14 steps of 4 cross the end of the first pass over 48 samples

    def crash_at_8(step: int, loss: float) -> None:
        if step == 8:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        Trainer(
            contrastive_phase(student, pattern(pair_shards), shuffle_buffer=10), TrainConfig(interrupted, **config)
        ).fit(crash_at_8)
    saved = json.loads((interrupted / "checkpoints" / "step-000005" / "stream-00000.json").read_text())
    assert saved["micro"] == 5 and saved["offset"] >= 0 and saved["shard_path"].endswith(".tar")
    phase = contrastive_phase(student, pattern(pair_shards), shuffle_buffer=10)
    Trainer(phase, TrainConfig(interrupted, resume=True, **config)).fit()
    assert losses(interrupted) == losses(tmp_path / "straight")
    ours = altclip.AltCLIPModel.from_pretrained(interrupted / "model").state_dict()
    straight = altclip.AltCLIPModel.from_pretrained(tmp_path / "straight" / "model").state_dict()
    assert all(torch.equal(ours[k], straight[k]) for k in ours)
    with pytest.raises(ValueError, match="training from tar shards needs --steps"):
        Trainer(phase, TrainConfig(tmp_path / "x", batch_size=4, progress=False))


def test_two_processes_train_from_shards_and_resume(tmp_path, student, pair_shards):
    args = ["contrastive", "--model", str(student), "--data", pattern(pair_shards), "--steps", "4"]
    args += ["--shuffle-buffer", "8", "--lr", "1e-3", "--min-lr-ratio", "1", "--save-every", "2"]  # a flat lr
    straight = train(tmp_path / "straight", 2, 3, args)
    assert len(straight) == 4 and all(loss == loss for loss in straight)
    (tmp_path / "resumed").mkdir()
    first = train(tmp_path / "resumed", 2, 3, [*args[:6], "2", *args[7:]])  # the first two steps only
    assert first == straight[:2]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints" / "step-000002").glob("stream-*")) == [
        "stream-00000.json",
        "stream-00001.json",
    ]
    assert train(tmp_path / "resumed", 2, 3, [*args, "--resume"]) == straight


def parallel_shards(root, rows: list[tuple[str, str, str]], per_shard: int):
    root.mkdir(parents=True)
    for start in range(0, len(rows), per_shard):
        with tarfile.open(root / f"{start // per_shard:05d}.tar", "w") as tar:
            for i, (src, tgt, lang) in enumerate(rows[start : start + per_shard], start):
                for name, text in (("src.txt", src), ("tgt.txt", tgt), ("json", json.dumps({"lang": lang}))):
                    data = text.encode("utf-8")
                    info = tarfile.TarInfo(f"{i:06d}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root / f"{{00000..{(len(rows) - 1) // per_shard:05d}}}.tar"


def test_distillation_streams_parallel_text_from_shards(tmp_path, teacher, student, parallel_tsv):
    lines = parallel_tsv.read_text(encoding="utf-8").splitlines()[1:]
    rows = [tuple(cells) for line in lines if len(cells := line.split("\t")) == 3 and all(cells)]
    source = parallel_shards(tmp_path / "shards", rows[:200], per_shard=50)
    phase = distillation_phase(teacher, student, source, shuffle_buffer=64)
    config = TrainConfig(tmp_path / "run", steps=30, batch_size=16, lr=3e-3, warmup=3, progress=False)
    Trainer(phase, config).fit()
    curve = losses(tmp_path / "run")
    assert len(curve) == 30 and sum(curve[-5:]) < 0.7 * sum(curve[:5])


def test_an_unreadable_shard_is_skipped_and_counted(tmp_path, pair_shards):
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    stream = ShardStream([str(pair_shards[0]), str(tmp_path / "junk.tar")], pair_task, buffer_size=4)
    drawn_keys = [t[1] for b in drawn(stream, 2, 1, 0, 0) for t in b]
    assert len(drawn_keys) == 12 and stream.skipped["data: unreadable shard"] == 1  # 13 usable, in twos

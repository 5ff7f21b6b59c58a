"""Tokenizers against transformers' on 10,000+ strings in 10+ scripts, with tokenizers trained here."""

from __future__ import annotations

import random
import unicodedata

import pytest
import torch
import transformers

from altclip.processing.tokenization import CLIPTokenizer, XLMRobertaTokenizer

HARD_CASES = [
    "",
    " ",
    "   ",
    "\t\n",
    "e\u0301te\u0301 vs été",
    "cafe\u0301",
    "a\u200eb\u200fc",
    "\u202bمرحبا\u202c world",
    "line\r\nbreak",
    "x\u2028y\u2029z",
    "  many   spaces  ",
    "Ａｂｃ１２３",
    "🙂👍🏽 family: 👨‍👩‍👧",
    "<mask> a <s> b </s>",
    "<|startoftext|>hi<|endoftext|>",
    "don't can't we'll",
    "MiXeD CaSe ÀÉÎ",
    "١٢٣ ٤٥٦",
    "\u0000\u0001ctrl",
    "a" * 3000,
    "猫 " * 600,
    "word " * 700,
]


def script_samples(rng: random.Random) -> list[str]:
    """Strings from blocks the CLDR languages here do not cover: Devanagari, Thai, Greek, Hebrew, emoji."""
    blocks = {
        "devanagari": (0x0905, 0x0939),
        "thai": (0x0E01, 0x0E2E),
        "greek": (0x03B1, 0x03C9),
        "hebrew": (0x05D0, 0x05EA),
        "emoji": (0x1F300, 0x1F5FF),
    }
    out = []
    for low, high in blocks.values():
        for _ in range(150):
            words = [
                "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 4))
            ]
            out.append(" ".join(words))
    return out


@pytest.fixture(scope="session")
def strings(corpus) -> list[str]:
    rng = random.Random(0)
    return rng.sample(corpus, 10_000) + script_samples(rng) + HARD_CASES


FAMILIES = {
    "xlmr": (XLMRobertaTokenizer, transformers.XLMRobertaTokenizer),
    "clip": (CLIPTokenizer, transformers.CLIPTokenizer),
}


def assert_same_encoding(ours_tok, theirs_tok, texts: list[str], **kwargs) -> None:
    for start in range(0, len(texts), 2000):
        chunk = texts[start : start + 2000]
        a, b = ours_tok(chunk, **kwargs), theirs_tok(chunk, **kwargs)
        for key in ("input_ids", "attention_mask"):
            left, right = a[key], b[key]
            if isinstance(left, torch.Tensor):
                assert torch.equal(left, right), key
            else:
                mismatched = [t for t, x, y in zip(chunk, left, right, strict=True) if list(x) != list(y)]
                assert not mismatched, f"{key} differs for {len(mismatched)} strings, e.g. {mismatched[:3]}"


def test_corpus_spans_ten_scripts(strings):
    scripts = set()
    for text in strings:
        for ch in text:
            if unicodedata.category(ch) == "So":
                scripts.add("EMOJI")
            elif ch.isalpha():
                scripts.add(unicodedata.name(ch, "?").split()[0])
    expected = {"LATIN", "CJK", "HANGUL", "HIRAGANA", "KATAKANA", "ARABIC", "CYRILLIC", "DEVANAGARI", "THAI", "EMOJI"}
    assert len(strings) >= 10_000 and expected <= scripts


def test_xlm_roberta_from_sentencepiece_matches_transformers(xlmr_folder, strings):
    ours, theirs = (
        XLMRobertaTokenizer.from_pretrained(xlmr_folder),
        transformers.XLMRobertaTokenizer.from_pretrained(xlmr_folder),
    )
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    assert ours.mask_token_id == theirs.mask_token_id == len(ours) - 1
    assert_same_encoding(ours, theirs, strings)
    assert_same_encoding(ours, theirs, strings, padding=True, truncation=True, return_tensors="pt")


def test_xlm_roberta_from_tokenizer_json_matches_transformers(tmp_path, xlmr_folder, strings):
    XLMRobertaTokenizer.from_pretrained(xlmr_folder).save_pretrained(tmp_path)
    assert {"tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    theirs = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
    assert_same_encoding(
        XLMRobertaTokenizer.from_pretrained(tmp_path),
        theirs,
        strings,
        padding=True,
        truncation=True,
        max_length=40,
        return_tensors="np",
    )
    (tmp_path / "sentencepiece.bpe.model").unlink()  # tokenizer.json alone
    assert_same_encoding(XLMRobertaTokenizer.from_pretrained(tmp_path), theirs, strings, padding="longest")


def test_clip_matches_transformers(clip_folder, strings):
    ours, theirs = CLIPTokenizer.from_pretrained(clip_folder), transformers.CLIPTokenizer.from_pretrained(clip_folder)
    assert_same_encoding(ours, theirs, strings)
    assert_same_encoding(ours, theirs, strings, padding="max_length", truncation=True, return_tensors="pt")


@pytest.mark.filterwarnings("ignore::UserWarning")  # both libraries warn that max_length is ignored
def test_clip_from_tokenizer_json_matches_transformers(tmp_path, clip_folder, strings):
    CLIPTokenizer.from_pretrained(clip_folder).save_pretrained(tmp_path)
    theirs = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink()
    assert_same_encoding(CLIPTokenizer.from_pretrained(tmp_path), theirs, strings[:3000], padding=True, max_length=20)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": "max_length", "max_length": 24, "truncation": True},
        {"max_length": 6},
        {"truncation": True, "max_length": 9, "padding": True, "return_tensors": "pt"},
        {"add_special_tokens": False, "padding": True, "return_tensors": "np"},
    ],
    ids=["plain", "padded", "max_length", "max_length-only", "truncated-pt", "no-specials-np"],
)
@pytest.mark.parametrize("family", ["xlmr", "clip"])
def test_call_options_match_transformers(request, family, kwargs, strings):
    folder = request.getfixturevalue(f"{family}_folder")
    ours, theirs = (cls.from_pretrained(folder) for cls in FAMILIES[family])
    assert_same_encoding(ours, theirs, strings[:300] + HARD_CASES, **kwargs)
    single_ours, single_theirs = ours("a photo of a cat", **kwargs), theirs("a photo of a cat", **kwargs)
    for key in ("input_ids", "attention_mask"):
        a, b = single_ours[key], single_theirs[key]
        assert type(a) is type(b) and (a.tolist() if hasattr(a, "tolist") else a) == (
            b.tolist() if hasattr(b, "tolist") else b
        )


@pytest.mark.parametrize("family", ["xlmr", "clip"])
def test_decode_matches_transformers(request, family, strings):
    folder = request.getfixturevalue(f"{family}_folder")
    ours, theirs = (cls.from_pretrained(folder) for cls in FAMILIES[family])
    batch = ours(strings[:500], padding=True, return_tensors="pt")["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(batch, skip_special_tokens=skip) == theirs.batch_decode(
            batch, skip_special_tokens=skip
        )
    assert ours.decode(batch[0]) == theirs.decode(batch[0])


def test_bad_calls_are_clear(xlmr_folder):
    tokenizer = XLMRobertaTokenizer.from_pretrained(xlmr_folder)
    with pytest.raises(ValueError, match=r"text\[1\] must be a string"):
        tokenizer(["ok", 3])
    with pytest.raises(ValueError, match="padding must be"):
        tokenizer(["ok"], padding="sideways")
    with pytest.warns(UserWarning, match="max_length is ignored"):
        tokenizer(["a"], padding=True, max_length=4)
    with pytest.raises(ValueError, match="pass padding=True"):
        tokenizer(["a", "a much longer text"], return_tensors="pt")
    with pytest.raises(FileNotFoundError, match=r"neither tokenizer\.json nor sentencepiece\.bpe\.model"):
        XLMRobertaTokenizer.from_pretrained(xlmr_folder.parent)


@pytest.mark.parametrize("family", ["xlmr", "clip"])
def test_truncation_equals_the_backends_own(family, request, corpus):
    """Naive reference: a private copy of the backend with its own truncation switched on."""
    from tokenizers import Tokenizer as Backend

    ours = FAMILIES[family][0].from_pretrained(request.getfixturevalue(f"{family}_folder"))
    texts = random.Random(1).sample(corpus, 300) + HARD_CASES
    reference = Backend.from_str(ours.backend.to_str())
    for limit in (2, 3, 4, 7, 16, 40):
        reference.enable_truncation(limit)
        expected = [e.ids for e in reference.encode_batch(texts)]
        assert ours(texts, truncation=True, max_length=limit)["input_ids"] == expected, limit
        unspecial = ours(texts, truncation=True, max_length=limit, add_special_tokens=False)["input_ids"]
        assert unspecial == [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)], limit
    with pytest.raises(ValueError, match="max_length 1 leaves no room"):
        ours(["a b c"], truncation=True, max_length=1)


def test_one_tokenizer_shared_by_threads(xlmr_folder, corpus):
    """Each call's truncation is its own: threads with different limits never see each other's."""
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = XLMRobertaTokenizer.from_pretrained(xlmr_folder)
    rng = random.Random(2)
    jobs = [(rng.sample(corpus, 64), rng.choice([4, 9, None])) for _ in range(96)]

    def run(job):
        texts, limit = job
        return tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(run, jobs)) == serial

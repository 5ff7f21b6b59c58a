"""XLM-RoBERTa and CLIP tokenizers on the ``tokenizers`` library, equal to transformers' tokenizers.

* ``XLMRobertaTokenizer``: a Unigram model with fairseq's ids (``<s>``=0, ``<pad>``=1, ``</s>``=2,
  ``<unk>``=3, the sentencepiece pieces from 4, ``<mask>`` last), the sentencepiece normaliser
  (its precompiled charsmap), whitespace splitting and the ``▁`` metaspace. Read from
  ``tokenizer.json`` or, when a checkpoint ships none (BAAI/AltCLIP-m9), from ``sentencepiece.bpe.model``.
* ``CLIPTokenizer``: byte-level BPE with ``</w>`` word ends, NFC + whitespace clean-up + lower-casing,
  CLIP's split pattern. Read from ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, Unigram

from altclip.errors import InputError, MissingExtraError
from altclip.files import atomic_path, atomic_write_bytes
from altclip.hub import HubError, resolve_file

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
UNLIMITED = int(1e30)  # transformers' model_max_length when a tokenizer names none


class BatchEncoding(dict):
    """Model inputs by name, readable as attributes (``inputs.input_ids``) and movable with ``.to``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def as_batch(rows: list[list[int]], return_tensors: str | None, what: str) -> Any:
    """Equal-length rows -> a tensor or array; ``None`` keeps the lists."""
    if return_tensors is None:
        return rows
    if len({len(r) for r in rows}) > 1:
        raise InputError(
            f"{what} have different lengths {sorted({len(r) for r in rows})}; pass padding=True to batch them"
        )
    array = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    if return_tensors == "np":
        return array
    if return_tensors == "pt":
        return torch.from_numpy(array)
    raise InputError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")


class Tokenizer:
    """What both tokenizers share: the call, padding, truncation, decoding and the files."""

    tokenizer_class: ClassVar[str]
    model_input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    special_names: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        backend: Backend,
        special_tokens: dict[str, str],
        model_max_length: int = UNLIMITED,
        source_files: dict[str, Path] | None = None,
    ) -> None:
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.model_max_length = model_max_length
        self.source_files = dict(source_files or {})  # files copied as they are by save_pretrained
        for name, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise InputError(f"{type(self).__name__}: {name} {token!r} is not in the vocabulary")

    # -- special tokens ---------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        specials = self.__dict__.get("special_tokens", {})
        if name in specials:
            return specials[name]
        if name.endswith("_id") and name[:-3] in specials:
            return self.backend.token_to_id(specials[name[:-3]])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.backend.token_to_id(t) for t in self.special_tokens.values()})

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        unk = self.backend.token_to_id(self.special_tokens["unk_token"])
        if isinstance(tokens, str):
            found = self.backend.token_to_id(tokens)
            return unk if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    # -- encoding ---------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
    ) -> BatchEncoding:
        """Texts -> ``input_ids`` and ``attention_mask``, as transformers' tokenizers give them.

        ``padding``: False / True or "longest" / "max_length" (to ``max_length`` or ``model_max_length``;
        without either, to the longest); ``truncation``: True cuts to ``max_length`` (or ``model_max_length``),
        special tokens included; ``max_length`` without padding also truncates.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"text[{i}] must be a string, got {type(t).__name__}")
        pad_mode = {
            True: "longest",
            False: None,
            "longest": "longest",
            "max_length": "max_length",
            "do_not_pad": None,
        }.get(padding, "invalid")  # type: ignore[call-overload]
        if pad_mode == "invalid":
            raise InputError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if truncation is None:  # transformers: max_length alone truncates, but only when not padding
            truncation = max_length is not None and pad_mode is None
        if max_length is not None and pad_mode == "longest" and not truncation:
            warnings.warn(
                "max_length is ignored with padding=True and no truncation; pass truncation=True to cut "
                "to it, or padding='max_length' to pad to it",
                UserWarning,
                stacklevel=2,
            )
        limit = max_length if max_length is not None else self.model_max_length
        truncate = truncation not in (False, "do_not_truncate")

        rows = self._encode(texts, limit if truncate and limit < UNLIMITED else None, add_special_tokens)

        masks = [[1] * len(r) for r in rows]
        if pad_mode is not None:
            width = max(len(r) for r in rows) if pad_mode == "longest" or limit >= UNLIMITED else limit
            pad_id = self.backend.token_to_id(self.special_tokens["pad_token"])
            masks = [m + [0] * (width - len(r)) for r, m in zip(rows, masks, strict=True)]
            rows = [r + [pad_id] * (width - len(r)) for r in rows]
        out = BatchEncoding(input_ids=as_batch(rows, return_tensors, "input_ids"))
        if return_attention_mask:
            out["attention_mask"] = as_batch(masks, return_tensors, "attention_mask")
        if single and return_tensors is None:
            out = BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def _encode(self, texts: list[str], limit: int | None, add_special_tokens: bool) -> list[list[int]]:
        """Token ids, cut to ``limit`` special tokens included (None: uncut).

        The shared backend is never reconfigured per call (``enable_truncation`` would be state that other
        threads see): each encoding is cut first and given its special tokens after, which is what the
        backend's own truncation does.
        """
        if limit is None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        room = limit - (self.backend.num_special_tokens_to_add(False) if add_special_tokens else 0)
        if room < 0:
            raise InputError(f"max_length {limit} leaves no room beside the special tokens")
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        for encoding in encodings:
            encoding.truncate(room)
        return [self.backend.post_process(e, add_special_tokens=add_special_tokens).ids for e in encodings]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor | np.ndarray):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    # -- files ------------------------------------------------------------------------------------

    @staticmethod
    def read_settings(name_or_path: str | Path, defaults: dict[str, str], **hub: Any) -> tuple[dict[str, str], int]:
        """Special tokens and ``model_max_length`` from ``tokenizer_config.json`` over ``special_tokens_map.json``."""
        settings: dict[str, Any] = {}
        for filename in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
            path = resolve_file(name_or_path, filename, required=False, **hub)
            if path is not None:
                settings.update(json.loads(path.read_text(encoding="utf-8")))
        specials = {}
        for name, default in defaults.items():
            value = settings.get(name, default)
            specials[name] = value["content"] if isinstance(value, dict) else str(value)
        return specials, int(settings.get("model_max_length", UNLIMITED))

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / TOKENIZER_FILE, self.backend.to_str(pretty=True).encode("utf-8"))
        config = {
            "tokenizer_class": self.tokenizer_class,
            "model_max_length": self.model_max_length,
            **self.special_tokens,
        }
        for filename, values in ((TOKENIZER_CONFIG, config), (SPECIAL_TOKENS_MAP, self.special_tokens)):
            text = json.dumps(values, indent=2, ensure_ascii=False) + "\n"
            atomic_write_bytes(folder / filename, text.encode("utf-8"))
        for name, source in self.source_files.items():
            if source.resolve() != (folder / name).resolve():
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(source, tmp)
        return folder


# ---------------------------------------------------------------------------------------------------
# XLM-RoBERTa


SPIECE_FILE = "sentencepiece.bpe.model"
XLMR_SPECIALS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}


def read_sentencepiece(path: str | Path) -> tuple[list[tuple[str, float]], bytes | None]:
    """A sentencepiece model's (piece, score) list and its precompiled normaliser charsmap."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:  # the protobuf runtime is missing
        raise MissingExtraError("reading sentencepiece.bpe.model needs `pip install sentencepiece protobuf`") from err
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as err:
        raise InputError(f"{path} is not a sentencepiece model ({err})") from err
    pieces = [(p.piece, p.score) for p in proto.pieces]
    return pieces, proto.normalizer_spec.precompiled_charsmap or None


def train_sentencepiece(
    sentences: Iterable[str], path: str | Path, vocab_size: int = 8000, character_coverage: float = 0.9995
) -> Path:
    """Train a unigram sentencepiece model in XLM-R's layout (unk=0, bos=1, eos=2, no pad) on ``sentences``
    and write it to ``path`` (e.g. ``folder/sentencepiece.bpe.model``); ``vocab_size`` is an upper bound;
    ``character_coverage``: the share of characters kept (the rarest of the rest become unk)."""
    import sentencepiece

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = path.with_name(f".{path.stem}-training")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=character_coverage,
        minloglevel=2,
        num_threads=2,
    )
    Path(f"{prefix}.vocab").unlink(missing_ok=True)
    Path(f"{prefix}.model").replace(path)
    return path


def xlm_roberta_backend(vocab: list[tuple[str, float]], charsmap: bytes | None) -> Backend:
    """The pipeline transformers builds for XLM-R from a vocabulary and a charsmap."""
    backend = Backend(Unigram(vocab, unk_id=3, byte_fallback=False))
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    return backend


def fairseq_vocab(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """sentencepiece ids (unk=0, bos=1, eos=2, pieces...) -> fairseq's (<s>, <pad>, </s>, <unk>, pieces..., <mask>)."""
    return [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces[3:], ("<mask>", 0.0)]


class XLMRobertaTokenizer(Tokenizer):
    tokenizer_class = "XLMRobertaTokenizer"

    @classmethod
    def from_sentencepiece(
        cls, path: str | Path, specials: dict[str, str] = XLMR_SPECIALS, model_max_length: int = 512
    ) -> XLMRobertaTokenizer:
        """Build from a sentencepiece model (unk=0, bos=1, eos=2), shifted to fairseq's ids."""
        pieces, charsmap = read_sentencepiece(path)
        backend = xlm_roberta_backend(fairseq_vocab(pieces), charsmap)
        return cls(backend, specials, model_max_length, {SPIECE_FILE: Path(path)})

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **hub: Any) -> XLMRobertaTokenizer:
        specials, max_length = cls.read_settings(name_or_path, XLMR_SPECIALS, **hub)
        spm = resolve_file(name_or_path, SPIECE_FILE, required=False, **hub)
        tokenizer_json = resolve_file(name_or_path, TOKENIZER_FILE, required=False, **hub)
        if tokenizer_json is None:
            if spm is None:
                raise HubError(f"{name_or_path} has neither {TOKENIZER_FILE} nor {SPIECE_FILE}")
            return cls.from_sentencepiece(spm, specials, max_length)
        spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        vocab = [(piece, float(score)) for piece, score in spec["model"]["vocab"]]
        source = {SPIECE_FILE: spm} if spm is not None else {}
        return cls(xlm_roberta_backend(vocab, _precompiled_charsmap(spec)), specials, max_length, source)


def _precompiled_charsmap(spec: dict[str, Any]) -> bytes | None:
    normalizer = spec.get("normalizer") or {}
    for part in normalizer.get("normalizers", [normalizer]):
        if part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            return base64.b64decode(part["precompiled_charsmap"])
    return None


# ---------------------------------------------------------------------------------------------------
# CLIP


CLIP_SPECIALS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


def clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]], specials: dict[str, str]) -> Backend:
    """CLIP's byte-level BPE pipeline, as transformers builds it."""
    backend = Backend(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=specials["unk_token"],
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(specials.values())]
    )
    bos, eos = specials["bos_token"], specials["eos_token"]
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
    )
    return backend


class CLIPTokenizer(Tokenizer):
    tokenizer_class = "CLIPTokenizer"

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **hub: Any) -> CLIPTokenizer:
        specials, max_length = cls.read_settings(name_or_path, CLIP_SPECIALS, **hub)
        tokenizer_json = resolve_file(name_or_path, TOKENIZER_FILE, required=False, **hub)
        if tokenizer_json is not None:
            model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        else:
            vocab_path = resolve_file(name_or_path, VOCAB_FILE, **hub)
            merges_path = resolve_file(name_or_path, MERGES_FILE, **hub)
            vocab, merges = BPE.read_file(str(vocab_path), str(merges_path))
        return cls(clip_backend(vocab, merges, specials), specials, max_length)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        return super().decode(ids, skip_special_tokens).replace("</w>", " ").strip()

    def save_pretrained(self, folder: str | Path) -> Path:
        super().save_pretrained(folder)
        self.backend.model.save(str(folder))  # vocab.json + merges.txt, for tools that want them
        return Path(folder)

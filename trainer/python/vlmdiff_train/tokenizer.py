"""CLIP's byte-level BPE tokenizer, reading user-supplied vocabulary files (no network, no HF dependency).

Two file layouts of the same vocabulary are accepted:
  * OpenAI's bpe_simple_vocab_16e6.txt.gz (one merge per line after a header line; the vocabulary is the 256
    byte symbols, the same with '</w>', the merges in order, then <|startoftext|> and <|endoftext|>);
  * Hugging Face's vocab.json + merges.txt (openai/clip-vit-large-patch14).
encode() reproduces what SD's FrozenCLIPEmbedder asks of CLIPTokenizer: truncation to 77 tokens including
<|startoftext|> and <|endoftext|>, then padding with the pad token (<|endoftext|> for CLIP ViT-L/14).

Text cleaning follows the OpenAI code without ftfy (not installed here): html unescape, whitespace collapse,
lower case. Without the `regex` module, \\p{L} and \\p{N} are approximated by Python's Unicode classes
([^\\W\\d_] and \\d); they agree on letters and decimal digits, and differ only on rare numerals such as '½'.
"""
from __future__ import annotations

import collections
import gzip
import html
import json
import os
from functools import lru_cache
from typing import Iterable, Sequence

try:  # the real CLIP pattern needs \p{..} classes
    import regex as _re

    _PAT = _re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                       _re.IGNORECASE)
except ImportError:  # pragma: no cover - depends on the machine
    import re as _re

    _PAT = _re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+""",
                       _re.IGNORECASE)

__all__ = ["CLIPTokenizer", "TokenizerError", "bytes_to_unicode", "learn_merges", "write_bpe_gz",
           "write_vocab_merges", "SOT", "EOT"]

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
# OpenAI's file has more merges than the vocabulary uses; CLIP keeps the first 49152-256-2 of them.
MAX_MERGES = 49152 - 256 - 2


class TokenizerError(ValueError):
    """A vocabulary file that is missing, malformed or inconsistent."""


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable Unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def base_vocab() -> list[str]:
    """The byte-level base of every CLIP BPE vocabulary: the 256 byte symbols, then their end-of-word forms."""
    v = list(bytes_to_unicode().values())
    return v + [x + "</w>" for x in v]


class CLIPTokenizer:
    """encode(texts) -> list of token-id lists of length max_length (77)."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77,
                 pad_token: str = EOT):
        for tok in (SOT, EOT, pad_token):
            if tok not in encoder:
                raise TokenizerError(f"tokenizer: vocabulary lacks {tok!r}")
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.max_length = max_length
        self.sot_id = encoder[SOT]
        self.eot_id = encoder[EOT]
        self.pad_id = encoder[pad_token]
        self._cache: dict[str, str] = {SOT: SOT, EOT: EOT}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_bpe_gz(cls, path: str | os.PathLike, **kw) -> "CLIPTokenizer":
        """From OpenAI's bpe_simple_vocab_16e6.txt.gz."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TokenizerError(f"tokenizer: cannot read {os.fspath(path)}: {e}") from e
        merges = _parse_merges(lines[1:MAX_MERGES + 1], os.fspath(path))
        vocab = base_vocab() + ["".join(m) for m in merges] + [SOT, EOT]
        return cls({t: i for i, t in enumerate(vocab)}, merges, **kw)

    @classmethod
    def from_vocab_merges(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                          **kw) -> "CLIPTokenizer":
        """From Hugging Face's vocab.json and merges.txt."""
        try:
            with open(vocab_json, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(merges_txt, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, ValueError) as e:
            raise TokenizerError(f"tokenizer: cannot read {os.fspath(vocab_json)} / {os.fspath(merges_txt)}: {e}"
                                 ) from e
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise TokenizerError(f"tokenizer: {os.fspath(vocab_json)} is not a token -> id map")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = _parse_merges(lines, os.fspath(merges_txt))
        return cls(encoder, merges, **kw)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **kw) -> "CLIPTokenizer":
        """From a directory holding either layout (vocab.json + merges.txt preferred)."""
        path = os.fspath(path)
        vj, mt = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        gz = os.path.join(path, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.isfile(vj) and os.path.isfile(mt):
            return cls.from_vocab_merges(vj, mt, **kw)
        if os.path.isfile(gz):
            return cls.from_bpe_gz(gz, **kw)
        raise TokenizerError(f"tokenizer: {path} has neither vocab.json+merges.txt nor bpe_simple_vocab_16e6.txt.gz")

    # ---- tokenising ----------------------------------------------------------------------------------------
    def bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of text, without start/end tokens or truncation."""
        ids: list[int] = []
        for token in _PAT.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            for piece in self.bpe(token).split(" "):
                try:
                    ids.append(self.encoder[piece])
                except KeyError:
                    raise TokenizerError(f"tokenizer: piece {piece!r} not in the vocabulary (merges and vocab "
                                         f"files do not belong together)") from None
        return ids

    def encode(self, texts: str | Iterable[str]) -> list[list[int]]:
        """FrozenCLIPEmbedder's call: [SOT] + ids[:max_length-2] + [EOT], padded with pad_id to max_length."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for t in texts:
            ids = [self.sot_id] + self.tokenize(t)[: self.max_length - 2] + [self.eot_id]
            out.append(ids + [self.pad_id] * (self.max_length - len(ids)))
        return out

    def __call__(self, texts: str | Iterable[str]):
        """encode() as an int64 torch tensor [B, max_length]."""
        import torch

        return torch.tensor(self.encode(texts), dtype=torch.int64)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        toks = []
        for i in ids:
            t = self.decoder.get(int(i))
            if t is None:
                raise TokenizerError(f"tokenizer: id {i} not in the vocabulary")
            if skip_special and t in (SOT, EOT):
                continue
            toks.append(t)
        # '</w>' ends a word; the byte symbols between word ends map back to UTF-8 bytes.
        words = []
        for w in "".join(toks).split("</w>"):
            words.append(bytearray(self.byte_decoder[c] for c in w).decode("utf-8", errors="replace"))
        return " ".join(words).strip()


def _parse_merges(lines: Iterable[str], name: str) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"tokenizer: {name} line {n}: expected two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise TokenizerError(f"tokenizer: {name} has no merges")
    return merges


# ---- making a (small) vocabulary --------------------------------------------------------------------------------
def learn_merges(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to num_merges BPE merges from texts in CLIP's symbol space (byte symbols, '</w>' word ends).

    For tests and for tiny presets trained without the CLIP vocabulary files; the real CLIP merges come from
    OpenAI's file.
    """
    be = bytes_to_unicode()
    words = collections.Counter()
    for t in texts:
        for token in _PAT.findall(_clean(t)):
            sym = "".join(be[b] for b in token.encode("utf-8"))
            words[tuple(sym[:-1]) + (sym[-1] + "</w>",)] += 1
    merges: list[tuple[str, str]] = []
    vocab = dict(words)
    for _ in range(num_merges):
        counts = collections.Counter()
        for w, c in vocab.items():
            for i in range(len(w) - 1):
                counts[(w[i], w[i + 1])] += c
        if not counts:
            break
        best = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = {}
        for w, c in vocab.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        vocab = new
    return merges


def write_bpe_gz(merges: Sequence[tuple[str, str]], path: str | os.PathLike) -> None:
    """Write merges in OpenAI's bpe_simple_vocab_16e6.txt.gz layout (header line, one merge per line)."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n")
        f.write("\n".join(f"{a} {b}" for a, b in merges))
        f.write("\n")


def write_vocab_merges(merges: Sequence[tuple[str, str]], directory: str | os.PathLike) -> None:
    """Write the same vocabulary in Hugging Face's vocab.json + merges.txt layout."""
    vocab = base_vocab() + ["".join(m) for m in merges] + [SOT, EOT]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(f"{a} {b}" for a, b in merges))
        f.write("\n")

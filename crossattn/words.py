"""Words ↔ token positions, through the pipeline's own tokenizers.

A *segment* is one text encoder's tokens for one prompt and where each sits in the denoiser's text sequence
(a model family says that: `crossattn.families`). A *word* is a run of tokens that the tokenizer marks as one
word: CLIP BPE ends a word's last token with ``</w>``; SentencePiece (T5, Gemma) and byte-level BPE (Qwen,
Llama: ``Ġ``) start one with ``▁`` / ``Ġ``; WordPiece (BERT) continues one with ``##``. Special tokens,
padding, template tokens and pure punctuation are not words. A word's heat map is the *sum* of its tokens'
maps, because a word's share of the attention is the sum of its tokens' shares. Where a model reads the
prompt through several encoders in one sequence (SD3: CLIP positions, then T5 positions), a word has
positions in each *source*; by default its map sums them all (its whole share), ``source=`` picks one.

    >>> from transformers import CLIPTokenizer
    >>> from crossattn.models import asset_path
    >>> tok = CLIPTokenizer.from_pretrained(asset_path("clip-tokenizer"))
    >>> [(w.text, w.positions) for w in prompt_words(tok, "a cyan circle")]
    [('a', (1,)), ('cyan', (2, 3)), ('circle', (4,))]
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from .errors import UnknownWordError


@dataclass(frozen=True)
class Segment:
    """One text encoder's tokens for one prompt, as they sit in the denoiser's text sequence."""

    source: str  # "clip", "t5", "gemma", ...: what `maps.word(..., source=)` selects
    tokenizer: object
    ids: list[int]  # the ids the encoder saw
    positions: list[int]  # text-sequence position of each id; -1 where the id does not reach the denoiser
    skip: frozenset[int] = field(default_factory=frozenset)  # id indices that are never words (templates)

    @property
    def end(self) -> int:
        """Index of the last id worth keeping: the end token after the prompt (padding is never kept)."""
        eos, pad = getattr(self.tokenizer, "eos_token_id", None), getattr(self.tokenizer, "pad_token_id", None)
        ends = [i for i, t in enumerate(self.ids) if i > 0 and t == eos and i not in self.skip]
        if ends:
            return ends[0]
        content = [i for i, t in enumerate(self.ids) if t != pad]
        return content[-1] if content else len(self.ids) - 1

    def kept_positions(self) -> list[int]:
        """Sequence positions of the ids up to the end token (what the recorder keeps)."""
        return [p for p in self.positions[: self.end + 1] if p >= 0]

    @property
    def truncated(self) -> bool:
        """The prompt filled every position: the encoder may have cut it (not when padded on the left)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return self.end == len(self.ids) - 1 and (pad == eos or pad not in self.ids) and self.ids[0] != pad


def whole(source: str, tokenizer, ids: list[int], offset: int = 0) -> Segment:
    """A segment whose ids sit one after another from `offset` on (the common case)."""
    return Segment(source, tokenizer, list(ids), list(range(offset, offset + len(ids))))


@dataclass(frozen=True)
class Word:
    text: str  # as the tokenizer decodes it (CLIP lower-cases)
    positions: tuple[int, ...]  # columns of the kept tokens (all sources)
    occurrence: int  # 0 for the first "cat" of the prompt, 1 for the second, ...
    sources: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (source, its columns), when there are several

    def in_source(self, source: str | None) -> tuple[int, ...]:
        if source is None:
            return self.positions
        for name, cols in self.sources:
            if name == source:
                return cols
        return () if self.sources else self.positions


def _word_starts(tokens: list[str]) -> list[bool]:
    """For each content token: does a new word start here?"""
    if any(t.endswith("</w>") for t in tokens):  # CLIP BPE: a word *ends* with </w>
        return [i == 0 or tokens[i - 1].endswith("</w>") for i in range(len(tokens))]
    if any(t.startswith("##") for t in tokens):  # WordPiece: "##" continues a word
        return [i == 0 or not t.startswith("##") for i, t in enumerate(tokens)]
    return [i == 0 or t.startswith(("▁", "Ġ", " ")) for i, t in enumerate(tokens)]


def segment_words(segment: Segment) -> list[tuple[str, list[int]]]:
    """(text, sequence positions) of each word of one segment, in order."""
    tok = segment.tokenizer
    special = set(getattr(tok, "all_special_ids", []))
    content = [i for i in range(segment.end + 1)
               if segment.positions[i] >= 0 and i not in segment.skip and segment.ids[i] not in special]
    if not content:
        return []
    strings = tok.convert_ids_to_tokens([segment.ids[i] for i in content])
    # a run of content broken by a skipped/special token starts a new word too
    breaks = [k == 0 or content[k] != content[k - 1] + 1 for k in range(len(content))]
    groups: list[list[int]] = []
    for k, start in enumerate(_word_starts(strings)):
        if start or breaks[k]:
            groups.append([])
        groups[-1].append(content[k])
    out = []
    for group in groups:
        text = tok.decode([segment.ids[i] for i in group]).strip()
        if any(ch.isalnum() for ch in text):  # punctuation is not a word one asks about
            out.append((text, [segment.positions[i] for i in group]))
    return out


def words_from_segments(segments: list[Segment], column: dict[int, int]) -> list[Word]:
    """The prompt's words, their tokens given as columns (`column`: sequence position → kept column).

    The words are those of the segment with the most words (the fullest view of the prompt); the same word
    (same text, same occurrence) in another segment adds that segment's columns.
    """
    per_segment = [[(text, [column[p] for p in pos if p in column]) for text, pos in segment_words(s)]
                   for s in segments]
    if not any(per_segment):
        return []
    main = max(range(len(segments)), key=lambda k: len(per_segment[k]))
    keyed: list[dict[tuple[str, int], list[int]]] = []
    for words in per_segment:
        seen: dict[str, int] = {}
        table = {}
        for text, cols in words:
            key = text.lower()
            table[(key, seen.get(key, 0))] = cols
            seen[key] = seen.get(key, 0) + 1
        keyed.append(table)
    out, seen = [], {}
    for text, _ in per_segment[main]:
        key = text.lower()
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        by_source = [(segments[k].source, tuple(keyed[k].get((key, occurrence), ()))) for k in range(len(segments))]
        by_source = [(name, cols) for name, cols in by_source if cols]
        positions = tuple(c for _, cols in by_source for c in cols)
        out.append(Word(text, positions, occurrence, tuple(by_source) if len(segments) > 1 else ()))
    return out


def words_from_ids(tokenizer, ids: list[int]) -> list[Word]:
    """Group one tokenised prompt (with its special tokens, as a CLIP-style encoder saw it) into words."""
    segment = whole("text", tokenizer, ids)
    return words_from_segments([segment], {p: p for p in range(len(ids))})


def split_list(text: str | None) -> list[str]:
    """'cat, red dog,,' -> ['cat', 'red dog']: the comma-separated lists the CLI and the demo take."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def ref_name(text: str, occurrence: int = 0) -> str:
    """How a word or phrase and which of its repeats is named: 'cat', then 'cat#1' for the second "cat"."""
    return text if occurrence == 0 else f"{text}#{occurrence}"


def word_ref(name: str) -> tuple[str, int]:
    """'cat#1' -> ('cat', 1): the inverse of `ref_name`."""
    if m := re.fullmatch(r"(.+?)#(\d+)", name.strip()):
        return m.group(1), int(m.group(2))
    return name.strip(), 0


SLUG_BYTES = 48  # file systems allow 255 bytes a name; callers add prefixes, a prompt stem and an extension


def slug(word: str) -> str:
    """A word as a file-name part: runs of anything but letters, digits, '_' and '-' become '_'. One longer
    than `SLUG_BYTES` (UTF-8) is cut and ends with a hash of the whole word, so two long words that begin
    alike still get different names."""
    text = re.sub(r"[^\w-]+", "_", word).strip("_") or "word"
    if len(text.encode()) <= SLUG_BYTES:
        return text
    tag = "_" + hashlib.sha1(word.encode()).hexdigest()[:8]
    head = text.encode()[: SLUG_BYTES - len(tag)].decode(errors="ignore")  # never half a character
    return head.rstrip("_") + tag


def truncation(tokenizer, prompt: str) -> str | None:
    """The words of `prompt` that the text encoder will not see (None when it sees them all)."""
    limit = tokenizer.model_max_length
    if limit > 100_000:  # tokenizers without a real limit
        return None
    full = tokenizer(prompt, truncation=False).input_ids
    if len(full) <= limit:
        return None
    cut = full[limit - 1 : -1] if full[-1] == tokenizer.eos_token_id else full[limit:]
    return tokenizer.decode(cut, skip_special_tokens=True).strip()


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids exactly as SD pipelines feed a CLIP text encoder (cut at its limit: the maps' notes say so)."""
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids


def prompt_words(tokenizer, prompt: str) -> list[Word]:
    """The words of `prompt` the text encoder sees, with their token positions (see module doc)."""
    limit = tokenizer.model_max_length
    if limit > 100_000:  # tokenizers without a real limit
        return words_from_ids(tokenizer, tokenizer(prompt).input_ids)
    return words_from_ids(tokenizer, tokenizer(prompt, truncation=True, max_length=limit).input_ids)


def find_word(words: list[Word], query: str, occurrence: int = 0) -> list[Word]:
    """The word(s) matching `query` (case-insensitive); a query of several words matches them in sequence.

    Raises UnknownWordError, listing the prompt's words, if there is no such (occurrence of the) word.
    """
    wanted = query.lower().split()
    texts = [w.text.lower() for w in words]
    exact = [i for i, t in enumerate(texts) if len(wanted) > 1 and t == " ".join(wanted)]  # one entry named so
    if 0 <= occurrence < len(exact):  # (a concept "a circle")
        return [words[exact[occurrence]]]
    matches = [i for i in range(len(words) - len(wanted) + 1) if wanted and texts[i : i + len(wanted)] == wanted]
    if 0 <= occurrence < len(matches):
        start = matches[occurrence]
        return words[start : start + len(wanted)]
    listing = ", ".join(repr(w.text) for w in words) or "(none)"
    if matches:
        raise UnknownWordError(
            f"{query!r} occurs {len(matches)} time(s) in the prompt; occurrence={occurrence} is out of range "
            f"(use 0..{len(matches) - 1})"
        )
    raise UnknownWordError(f"{query!r} is not a word of the prompt; its words are: {listing}")

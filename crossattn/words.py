"""Words ↔ token positions, through the pipeline's own tokenizer.

A *word* is a run of tokens that the tokenizer marks as one word: CLIP BPE ends a word's last token with
``</w>``, SentencePiece (T5) and byte-level GPT-2 tokenizers start a word with ``▁`` / ``Ġ``. Positions are
indices into the text encoder's input sequence (position 0 is CLIP's start token). Start, end and padding
tokens and pure punctuation are not words. A word's heat map is the *sum* of its tokens' maps, because a
word's share of the attention is the sum of its tokens' shares.

    >>> from transformers import CLIPTokenizer
    >>> tok = CLIPTokenizer.from_pretrained("assets/clip-tokenizer")
    >>> [(w.text, w.positions) for w in prompt_words(tok, "a cyan circle")]
    [('a', (1,)), ('cyan', (2, 3)), ('circle', (4,))]
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    text: str  # as the tokenizer decodes it (CLIP lower-cases)
    positions: tuple[int, ...]  # token positions in the text encoder's input
    occurrence: int  # 0 for the first "cat" of the prompt, 1 for the second, ...


class UnknownWordError(KeyError, ValueError):
    """A requested word is not in the prompt; the message lists the prompt's words."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


def _word_starts(tokens: list[str]) -> list[bool]:
    """For each content token: does a new word start here?"""
    if any(t.endswith("</w>") for t in tokens):  # CLIP BPE: a word *ends* with </w>
        return [i == 0 or tokens[i - 1].endswith("</w>") for i in range(len(tokens))]
    return [i == 0 or t.startswith(("▁", "Ġ")) for i, t in enumerate(tokens)]


def words_from_ids(tokenizer, ids: list[int]) -> list[Word]:
    """Group a tokenised prompt (with its special tokens, as the text encoder saw it) into words."""
    special = set(tokenizer.all_special_ids)
    content = [(i, t) for i, t in enumerate(ids) if t not in special]
    if not content:
        return []
    strings = tokenizer.convert_ids_to_tokens([t for _, t in content])
    groups: list[list[int]] = []
    for k, start in enumerate(_word_starts(strings)):
        if start:
            groups.append([])
        groups[-1].append(k)
    words, seen = [], {}
    for group in groups:
        text = tokenizer.decode([content[k][1] for k in group]).strip()
        if not any(ch.isalnum() for ch in text):
            continue  # punctuation is not a word one asks about
        key = text.lower()
        words.append(Word(text, tuple(content[k][0] for k in group), seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return words


def slug(word: str) -> str:
    """A word as a file-name part: runs of anything but letters, digits, '_' and '-' become '_'."""
    return re.sub(r"[^\w-]+", "_", word).strip("_") or "word"


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids exactly as SD pipelines feed the text encoder; warns when the prompt is truncated."""
    limit = tokenizer.model_max_length
    full = tokenizer(prompt, truncation=False).input_ids
    if len(full) > limit:
        kept = tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(full[limit - 1 : -1]))
        warnings.warn(
            f"prompt is {len(full)} tokens but the text encoder reads {limit}: heat maps cover only what the "
            f"model saw; this part was cut: {kept.strip()!r}",
            stacklevel=2,
        )
    return tokenizer(prompt, padding="max_length", max_length=limit, truncation=True).input_ids


def prompt_words(tokenizer, prompt: str) -> list[Word]:
    """The words of `prompt` with their token positions (see module doc)."""
    return words_from_ids(tokenizer, tokenize_prompt(tokenizer, prompt))


def find_word(words: list[Word], query: str, occurrence: int = 0) -> list[Word]:
    """The word(s) matching `query` (case-insensitive); a query of several words matches them in sequence.

    Raises UnknownWordError, listing the prompt's words, if there is no such (occurrence of the) word.
    """
    wanted = query.lower().split()
    texts = [w.text.lower() for w in words]
    matches = [i for i in range(len(words) - len(wanted) + 1) if wanted and texts[i : i + len(wanted)] == wanted]
    if occurrence < len(matches):
        start = matches[occurrence]
        return words[start : start + len(wanted)]
    listing = ", ".join(repr(w.text) for w in words) or "(none)"
    if matches:
        raise UnknownWordError(
            f"{query!r} occurs {len(matches)} time(s) in the prompt; occurrence={occurrence} is out of range "
            f"(use 0..{len(matches) - 1})"
        )
    raise UnknownWordError(f"{query!r} is not a word of the prompt; its words are: {listing}")

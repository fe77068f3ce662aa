"""Words <-> tokens through the real CLIP tokenizer shipped in assets/clip-tokenizer."""

from __future__ import annotations

import warnings

import pytest
from transformers import CLIPTokenizer

from crossattn.shapes.model import TOKENIZER_DIR
from crossattn.words import UnknownWordError, find_word, prompt_words, tokenize_prompt, truncation


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def test_real_clip_ids(tok):
    ids = tok("a dog").input_ids
    assert ids == [49406, 320, 1929, 49407]


def test_multi_token_words_are_merged(tok):
    words = prompt_words(tok, "a cyan hexagon")
    assert [(w.text, w.positions) for w in words] == [("a", (1,)), ("cyan", (2, 3)), ("hexagon", (4, 5))]


def test_repeated_words_case_and_punctuation(tok):
    words = prompt_words(tok, "A Cat, a dog and a CAT.")
    assert [w.text for w in words] == ["a", "cat", "a", "dog", "and", "a", "cat"]  # punctuation is no word
    first, second = find_word(words, "cat"), find_word(words, "Cat", occurrence=1)
    assert first[0].positions == (2,) and second[0].positions == (8,)
    assert [w.occurrence for w in words if w.text == "a"] == [0, 1, 2]
    with pytest.raises(UnknownWordError, match="occurs 2 time"):
        find_word(words, "cat", occurrence=2)


def test_unknown_word_lists_the_prompt_words(tok):
    words = prompt_words(tok, "a red circle")
    with pytest.raises(UnknownWordError) as err:
        find_word(words, "square")
    assert str(err.value) == "'square' is not a word of the prompt; its words are: 'a', 'red', 'circle'"


def test_multi_word_query(tok):
    words = prompt_words(tok, "a red circle left of a red square")
    match = find_word(words, "red square")
    assert [w.text for w in match] == ["red", "square"] and match[0].positions == (7,)


def test_long_prompt_keeps_what_the_model_saw_and_says_so_without_a_warning(tok):
    prompt = " ".join(["red"] * 80) + " elephant"
    words = prompt_words(tok, prompt)
    assert len(words) == 75 and words[-1].positions == (75,)
    assert "elephant" not in [w.text for w in words]
    assert truncation(tok, prompt) == "red red red red red elephant"  # readable words, not BPE pieces
    assert truncation(tok, "a red circle") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the maps' notes say it (crossattn.tracing), not a raw warning
        assert len(tokenize_prompt(tok, prompt)) == 77

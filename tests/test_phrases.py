"""Noun phrases and layout relations read from prompts written the way people write them."""

from __future__ import annotations

import pytest

from crossattn.phrases import Phrase, Relation, is_tag, parse_prompt, plain_words

# prompt -> the exact relation statements it makes, in prompt order
CASES = [
    # the three prompts the naive scan got wrong
    ("a photo of a cat to the left of a dog in a garden", ["cat left_of dog"]),
    ("a red circle left of a blue square with a yellow border", ["red circle left_of blue square"]),
    ("a red circle above a blue square, trending on artstation", ["red circle above blue square"]),
    # framing
    ("An oil painting of a lighthouse above a small boat", ["lighthouse above small boat"]),
    ("a close-up of a red apple to the right of a green pear", ["red apple right_of green pear"]),
    ("a 3d render of a blue cube on top of a red sphere, octane render, 8k", ["blue cube above red sphere"]),
    ("A picture of two dogs to the left of three cats", ["dogs left_of cats"]),
    ("a group of people on the left side of a bus", ["people left_of bus"]),
    # trailing context
    ("a cat on the left of a dog at sunset", ["cat left_of dog"]),
    ("a red ball to the right of a blue box on a white background", ["red ball right_of blue box"]),
    ("a cup of coffee left of a laptop on a wooden desk", ["cup left_of laptop"]),
    ("A woman wearing a red dress standing to the right of a man in a suit", ["woman right_of man"]),
    ("a dog with a ball in its mouth right of a kid", ["dog right_of kid"]),
    # style tags after commas
    ("a castle above a village, highly detailed, 4k, by greg rutkowski", ["castle above village"]),
    ("a cat left of a dog, cinematic lighting, top view", ["cat left_of dog"]),
    ("a bird flying over a lake, view from above", ["bird above lake"]),
    ("a cat on the left, aerial view over the city, masterpiece", ["cat on the left"]),
    ("a fox to the left of a tree, in the style of van gogh", ["fox left_of tree"]),
    # capitals, numerals, plurals, adjectives
    ("A SMALL WOODEN BOX LEFT OF A LARGE METAL BOWL", ["small wooden box left_of large metal bowl"]),
    ("3 apples below 2 bananas", ["apples below bananas"]),
    ("Two red apples on top of a wooden table, studio lighting", ["red apples above wooden table"]),
    ("a black and white cat to the left of a brown dog", ["black and white cat left_of brown dog"]),
    # multi-word relation phrases and single words
    ("a red cube on the right side of a green cone", ["red cube right_of green cone"]),
    ("a hat atop a snowman", ["hat above snowman"]),
    ("a teddy bear beneath a christmas tree", ["teddy bear below christmas tree"]),
    ("a cat under an umbrella", ["cat below umbrella"]),
    ("a sky over the city", ["sky above city"]),
    ("a lamp right above a desk", ["lamp above desk"]),
    ("a cat sitting directly underneath a table", ["cat below table"]),
    ("a castle at the top of a hill", ["castle above hill"]),
    # "and": the subject is the nearest phrase before the relation
    ("a cat and a dog left of a tree", ["dog left_of tree"]),
    ("a cat and a dog to the left of a tree and a bird above the tree", ["dog left_of tree", "bird above tree#1"]),
    ("a red circle left of a blue square left of a green triangle",
     ["red circle left_of blue square", "blue square left_of green triangle"]),
    ("a cat left of a cat", ["cat left_of cat#1"]),
    # sides of the picture
    ("a man with a hat on the left", ["man on the left"]),
    ("a bird to the right", ["bird on the right"]),
    ("the moon at the top, a city at the bottom", ["moon at the top", "city at the bottom"]),
    ("two dogs on the left and three cats on the right", ["dogs on the left", "cats on the right"]),
    ("the sun in the top half of the image and the sea in the bottom half", ["sun at the top", "sea at the bottom"]),
    ("a red ball in the lower right corner of the frame", ["red ball at the bottom", "red ball on the right"]),
    ("a cute corgi wearing sunglasses on the left side of the picture, digital art", ["cute corgi on the left"]),
    ("On the left, a red circle; on the right, a blue square", ["red circle on the left", "blue square on the right"]),
    ("on the left is a tall tree and on the right is a small house",
     ["tall tree on the left", "small house on the right"]),
    ("a cat, on the left, a dog on the right", ["cat on the left", "dog on the right"]),
    ("a cat on the left, a dog in the middle and a bird on the right", ["cat on the left", "bird on the right"]),
    ("a painting on the left wall", ["painting on the left"]),
    ("a man in a top hat on the far right", ["man on the right"]),
    # no relation, depth, scene settings
    ("an astronaut riding a horse on the moon", []),
    ("a cat in front of a dog", []),
    ("a dog behind a fence, next to a tree", []),
    ("a dog under the stars", []),
    ("a chest at the bottom of the ocean", []),
    ("a hat on top", []),
    ("a cat, top view", []),
    ("a photo of a cat to the left of it", []),
]


@pytest.mark.parametrize(("prompt", "expected"), CASES)
def test_relations(prompt, expected):
    assert [r.statement() for r in parse_prompt(prompt).relations] == expected


def test_table_is_large_and_varied():
    assert len(CASES) >= 45 and len({p for p, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("prompt", "objects"), [
    ("a photo of a small wooden chair left of a tall green plant in a garden, 4k",
     [("small wooden chair", "chair", ("small", "wooden")), ("tall green plant", "plant", ("tall", "green"))]),
    ("Two dogs and a cat under an umbrella", [("dogs", "dogs", ()), ("cat", "cat", ()), ("umbrella", "umbrella", ())]),
    ("a man with a hat on the left of the image, trending on artstation", [("man", "man", ())]),
    ("a close-up of a group of people at sunset", [("people", "people", ())]),
    ("highly detailed, 8k", []),
])
def test_objects(prompt, objects):
    assert [(p.text, p.head, p.attributes) for p in parse_prompt(prompt).objects] == objects


def test_occurrence_of_a_repeated_phrase():
    parse = parse_prompt("a cat left of a cat, and a red cat above the cat")
    assert [(p.text, p.occurrence) for p in parse.objects] == [("cat", 0), ("cat", 1), ("red cat", 0), ("cat", 3)]
    assert [r.statement() for r in parse.relations] == ["cat left_of cat#1", "red cat above cat#3"]


def test_start_indices_line_up_with_prompt_words():
    prompt = "A photo of a red circle, to the left of a blue square!"
    parse = parse_prompt(prompt)
    assert parse.words == plain_words(prompt) == ["a", "photo", "of", "a", "red", "circle", "to", "the", "left",
                                                   "of", "a", "blue", "square"]
    assert [p.start for p in parse.objects] == [4, 11]
    for p in parse.objects:
        assert parse.words[p.start : p.start + len(p.words)] == list(p.words)


def test_prompt_words():
    assert plain_words("A cat's TOY, 🙂 and 2 dogs & a close-up") == ["a", "cat's", "toy", "and", "2", "dogs", "a",
                                                                       "close", "up"]


def test_relation_fields():
    (relation,) = parse_prompt("a red circle left of a blue square").relations
    assert relation == Relation(Phrase(("red", "circle"), "circle", ("red",), 1, 0), "left_of",
                                Phrase(("blue", "square"), "square", ("blue",), 6, 0), None)
    (side,) = parse_prompt("the moon at the top").relations
    assert (side.relation, side.object, side.side, side.statement()) == ("side", None, "top", "moon at the top")


@pytest.mark.parametrize(("prompt", "notes"), [
    ("a cat in front of a dog", ["'in front of' states depth, which a 2-D map cannot check: skipped"]),
    ("a dog behind a fence", ["'behind' states depth, which a 2-D map cannot check: skipped"]),
    ("a cat next to a dog", ["'next to' names no direction (left, right, above or below): skipped"]),
    ("a vase beside a lamp", ["'beside' names no direction (left, right, above or below): skipped"]),
    ("a cat in the middle", ["'in the middle' names no side (left, right, top or bottom): skipped"]),
    ("a dog under the stars", ["'under the stars' sets the scene rather than a layout: skipped"]),
    ("left of a dog", ["'left of' has no noun phrase before it: skipped"]),
    ("a cat above", ["'above' has no noun phrase after it: skipped"]),
    ("on the left", ["'on the left' has no noun phrase to place: skipped"]),
    ("a cat left of a dog", []),
])
def test_notes_say_what_was_skipped(prompt, notes):
    parse = parse_prompt(prompt)
    assert parse.notes == notes
    assert parse.relations == [] or not notes


@pytest.mark.parametrize("prompt", [
    "", "🙂🙂", "left of", ", , ,", "of of of", "the the", "on the left of the", "& + &", "in the top left corner of",
    "above below under over", "a cat, , on the left,", "'''", "a" * 1000,
    " ".join(["a red cat to the left of a dog on the right, 4k, in front of"] * 40),  # about 500 words
])
def test_never_raises(prompt):
    parse = parse_prompt(prompt)
    assert parse.words == plain_words(prompt)
    for relation in parse.relations:
        assert relation.statement()


TAGS = "4k, 8k, 1080p, hd, uhd, f/1.8, 35mm, 16K, HDR, iso 100, 1/200s"


@pytest.mark.parametrize("tags", [TAGS, "4 k , 8 k , 1 0 8 0 p , hd , uhd , f / 1 . 8 , 3 5 mm , 1 6 k , hdr"])
def test_style_tags_are_never_objects(tags):
    """Resolution and camera tags, as written and as a CLIP tokenizer decodes them (what the trace names a prompt
    by), are single words that never make an object or join one."""
    for prompt in (f"a photo of a cyan circle to the right of a red square, {tags}",
                   f"a photo of a cyan circle to the right of a red square {tags.replace(',', '')}"):
        parse = parse_prompt(prompt)
        assert [p.text for p in parse.objects] == ["cyan circle", "red square"]
        assert [r.statement() for r in parse.relations] == ["cyan circle right_of red square"]
    assert [w for w in plain_words(tags) if not is_tag(w)] == []
    assert not any(map(is_tag, ["4", "k", "kittens", "people", "2", "hdd", "dk"]))
    assert [p.text for p in parse_prompt("3 apples and 2 people and 4 kittens in 8k").objects] == ["apples", "people",
                                                                                                "kittens"]

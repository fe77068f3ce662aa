"""Objects and layout relations read from a prompt as people write it, by closed word lists and a few rules.

No parser model: none can be downloaded here, and layout prompts are a narrow, formulaic English. The rules:

- The prompt is cut into clauses at punctuation. A clause after the first is a style tag, and is ignored, when
  it starts with "by" or has a style word or no article or numeral at all ("4k", "highly detailed", "trending
  on artstation", "by greg rutkowski", "octane render", "top view", "a masterpiece"); a clause with a relation
  phrase only when the words before it have a style word and no article or numeral ("aerial view over a
  city" is style, "a painting on the right" and "on the left" are not).
- In a clause, a noun phrase is a run of words between function words (articles, numerals, prepositions, the
  verbs listed below, conjunctions). Its last word is the head ("dogs", plural kept), the words before it are
  its attributes ("small wooden"); adjectives and particles are dropped from its end, so "highly detailed"
  names nothing.
- A phrase is an object unless it is framing ("a photo of", "a close-up of", "a group of": the object follows
  "of") or it follows a context preposition or verb ("in a garden", "with a yellow border", "wearing a hat"):
  such a phrase describes the object before it.
- Relation phrases are matched longest first ("to the left of" before "left of"). The subject is the nearest
  object before the relation, the object the phrase right after it ("red circle left_of blue square" in
  "a red circle left of a blue square with a yellow border"). A side ("on the left") of a clause with no
  object before it takes the object after it ("on the left, a cat"). "Left of the image" is a side.
- Depth ("behind", "in front of"), no direction ("next to", "near"), the centre, scene settings ("under the
  stars") and relations with a side missing are skipped with a note; nothing here raises.

    >>> parse = parse_prompt("A photo of a red circle to the left of a blue square in a garden, 4k")
    >>> [r.statement() for r in parse.relations]
    ['red circle left_of blue square']
    >>> [(o.text, o.head, o.attributes, o.start) for o in parse.objects]
    [('red circle', 'circle', ('red',), 4), ('blue square', 'square', ('blue',), 11)]
    >>> parse_prompt("a cat behind a dog").notes
    ["'behind' states depth, which a 2-D map cannot check: skipped"]
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, replace

from .words import ref_name


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ---- word lists ---------------------------------------------------------------------------------------------
# Articles, quantifiers and numerals open a phrase but are no part of it: "two dogs" is the phrase "dogs".
_DETERMINERS = _set(
    "a an the this that these those some any each every another my your his her its our their both all no "
    "several many few multiple various one two three four five six seven eight nine ten eleven twelve dozen "
    "dozens hundred hundreds"
)
# Pronouns, adverbs and verbs end a phrase too: "a cat sitting directly above ..." ends at "cat". The verbs are
# a closed list because nothing here tells the verb "sitting" from the noun "painting".
_STOP = _DETERMINERS | _set(
    "it them they he she him itself themselves something someone "
    "very really extremely highly super quite rather slightly directly just immediately exactly also only not "
    "sitting standing lying laying resting floating hovering flying hanging perched parked placed positioned "
    "located situated sleeping running walking swimming jumping dancing posing waiting leaning growing glowing "
    "shining looking smiling staring trending shown seen depicted sits stands lies rests floats hovers flies "
    "hangs walks runs grows"
)
# After a side that opens a clause, these say that the object follows: "on the left is a cat".
_COPULAS = _set("is are was were there sits stands lies rests hangs floats grows")
# After these a new object follows: "a cat and a dog", "there is a cat", "a cat which is ...".
_NEW_OBJECT = _set("and or plus then while but is are was were be being there here which who &")
# Prepositions and verbs that attach the phrase after them to the object before them: "in a garden", "with a
# yellow border", "wearing a hat", "a cup of coffee" describe that object, so the phrase is no object itself.
_CONTEXT = _set(
    "in on at to with of from for during against inside into onto across through around along among amongst "
    "amid within without by via like upon toward towards off outside made covered filled full surrounded "
    "wearing holding carrying riding eating drinking reading chasing hugging watching facing wielding using "
    "raising lifting throwing kicking pushing pulling touching has have having wears holds carries rides eats "
    "chases"
)
# Heads of framing and counting phrases: followed by "of", they name the picture or a number of things, and
# the object comes after ("a photo of a cat", "a close-up of a cat" (close-up is the two words "close up"),
# "a group of people").
_FRAMING = _set(
    "photo photograph picture pic image painting drawing sketch illustration render rendering portrait shot "
    "closeup up view scene snapshot artwork art poster watercolor watercolour cartoon depiction model "
    "group pair couple bunch herd flock crowd swarm pack set lot lots number pile stack row collection"
)
# The picture itself: "to the left of the image" puts the subject on the left, it relates it to no object.
_CANVAS = _set("image picture frame canvas photo photograph scene composition screen page")
# Words that do not name a thing: dropped from the end of a run, so that "highly detailed" or the "black" of
# "black and white" is no phrase, and "a cat up above" is "cat". Ambiguous words ("orange", "gold", "glass")
# are left out: they may be the object.
_ADJECTIVES = _set(
    "red yellow green blue purple violet pink brown black white gray grey cyan magenta teal golden beige "
    "crimson scarlet turquoise small large big tiny huge giant little tall short long wide narrow thin thick fat "
    "massive old young new shiny cute fluffy happy sad wooden metallic bright dark pale colorful colourful "
    "beautiful detailed realistic photorealistic hyperrealistic cinematic dramatic vibrant vivid intricate elegant"
)
_NON_HEAD = _ADJECTIVES | _set("and or up down away out together alone high low")

# Relation phrases that are not built from a side word (those are read by `_side_match`).
_RELATIONS = {
    ("above",): "above", ("over",): "above", ("atop",): "above",
    ("below",): "below", ("under",): "below", ("underneath",): "below", ("beneath",): "below",
}
# "A dog under the stars" sets the scene; it does not put stars in the upper part of the picture.
_AMBIENT = _set(
    "sky skies stars starlight sun sunlight sunshine moonlight sea ocean water waves surface rain snow night "
    "light lights spotlight ground earth ice sand blanket covers sheets"
)
_DEPTH = "states depth, which a 2-D map cannot check"
_NO_AXIS = "names no direction (left, right, above or below)"
_SKIPPED = {
    ("in", "front", "of"): _DEPTH, ("behind",): _DEPTH,
    ("next", "to"): _NO_AXIS, ("close", "to"): _NO_AXIS, ("beside",): _NO_AXIS, ("besides",): _NO_AXIS,
    ("near",): _NO_AXIS, ("alongside",): _NO_AXIS, ("between",): _NO_AXIS,
}
_CENTRE_NOTE = "names no side (left, right, top or bottom)"
_SIDES = {"left": "left", "right": "right", "top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_HORIZONTAL = _set("left right")
_CENTRE = _set("middle center centre")
_POSITIONS = _CENTRE | _SIDES.keys()
_SIDE_PREPS = _set("on at in to towards toward")
_SIDE_TAILS = _set("side half corner part edge portion area region third")
_SIDE_RELATION = {"left": "left_of", "right": "right_of", "top": "above", "bottom": "below"}
_RELATION_SIDE = {relation: side for side, relation in _SIDE_RELATION.items()}

# Words of style tags (see `_is_style`); "painting", "photo" are also framing or objects in the first clause.
_STYLE = _set(
    "4k 8k 16k hd uhd hdr quality masterpiece resolution detailed detail details realistic photorealistic "
    "hyperrealistic trending artstation deviantart pixiv behance cgsociety unreal engine octane render rendered "
    "rendering redshift blender vray lighting lit cinematic bokeh focus lens dslr shot view angle style art "
    "artwork painting illustration photo photograph photography sketch drawing watercolor watercolour oil "
    "digital concept aesthetic wallpaper award winning volumetric sharp intricate studio macro anime cartoon "
    "isometric minimalist surreal"
)

_MAIN, _DETAIL = "main", "detail"  # roles: a phrase naming an object / one that describes the object before it
# Resolution and camera tags ("4k", "1080p", "35mm", "f/1.8", "hd") are read as one word, also as a CLIP tokenizer
# decodes them ("4 k", "1 0 8 0 p", "f / 1 . 8"): the trace names a prompt by its decoded tokens. They are
# never objects (see `is_tag`).
_DIGITS = r"(?:\d(?: \d)+|\d+)"  # "1080", or one digit at a time as CLIP decodes it: "1 0 8 0"
_NUMBER = rf"{_DIGITS}(?: ?\. ?{_DIGITS})?"
_TAG = (rf"(?:{_NUMBER} ?(?:k|p|mm|fps|mp|px|d)|f ?/ ?{_NUMBER}|1 ?/ ?{_NUMBER} ?s|iso ?{_NUMBER}|[ufq]?hd|hdr)"
        r"(?![^\W_])")
_TOKEN = re.compile(rf"(?<![^\W_])(?P<tag>{_TAG})|(?P<word>[^\W_]+(?:['’][^\W_]+)*)|(?P<stop>[,;.!?|:()\[\]{{}}\n—])"
                    r"|(?P<conj>[&+])", re.IGNORECASE)


# ---- results ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrase:
    """A noun phrase of the prompt: its attribute words, then its head noun."""

    words: tuple[str, ...]  # lower-cased, in prompt order: ("red", "circle")
    head: str  # "circle"; a plural stays as written ("dogs")
    attributes: tuple[str, ...]  # ("red",): the words before the head
    start: int  # index of words[0] among `plain_words(prompt)`
    occurrence: int  # how many times this word sequence appears earlier in the prompt

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _name(phrase: Phrase) -> str:
    """'cat', or 'cat#1' for the second "cat" of the prompt: the names `crossattn.placement` reads."""
    return ref_name(phrase.text, phrase.occurrence)


@dataclass(frozen=True)
class Relation:
    subject: Phrase
    relation: str  # "left_of" | "right_of" | "above" | "below" | "side"
    object: Phrase | None  # None for "side"
    side: str | None  # "left" | "right" | "top" | "bottom" for "side", else None

    def statement(self) -> str:
        """'red circle left_of blue square', 'cat on the left', 'moon at the top', 'cat left_of cat#1'."""
        if self.side:
            return f"{_name(self.subject)} {'on' if self.side in _HORIZONTAL else 'at'} the {self.side}"
        return f"{_name(self.subject)} {self.relation} {_name(self.object)}"


@dataclass
class Parse:
    words: list[str]  # `plain_words(prompt)`
    objects: list[Phrase]  # the noun phrases naming objects, in prompt order
    relations: list[Relation]
    notes: list[str]  # what was skipped and why


# ---- reading ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Match:
    """A relation phrase: where it ends in its clause, its words and what it says."""

    end: int
    text: str
    relation: str | None = None  # "left_of", ...: it relates the phrase before to the one after
    sides: tuple[str, ...] = ()  # the sides of the picture it names (a relation: the side if its object is the picture)
    note: str | None = None  # why it is skipped
    needs_object: bool = False  # it ends in "of" or is a relation word: the phrase after it belongs to it
    then: str = _MAIN  # the role of the phrase after it
    looks_ahead: bool = False  # a side that names the object after it: "on the left, a cat", "on the left is a cat"
    first: int = -1  # index of its first word in the prompt's words
    clause: int = -1


@dataclass(frozen=True)
class _Candidate:
    phrase: Phrase
    role: str  # _MAIN or _DETAIL
    clause: int


def _clauses(prompt: str) -> tuple[list[str], list[list[tuple[int, str]]]]:
    """The prompt's words, and its clauses as (word index, word) pairs; "&" and "+" stand as "&" (index -1)."""
    words: list[str] = []
    clauses: list[list[tuple[int, str]]] = [[]]
    for m in _TOKEN.finditer(prompt):
        if m.lastgroup in ("word", "tag"):
            word = re.sub(r"\s", "", m.group()).lower()  # a tag as one word: "4 k" is "4k"
            clauses[-1].append((len(words), word))
            words.append(word)
        elif m.lastgroup == "conj":
            clauses[-1].append((-1, "&"))
        elif clauses[-1]:
            clauses.append([])
    return words, [c for c in clauses if c]


def plain_words(prompt: str) -> list[str]:
    """The prompt's words, lower-cased: runs of letters and digits, with apostrophes inside ("cat's"), and
    resolution and camera tags ("4k", "f/1.8"); punctuation and emoji are no words. `Phrase.start` counts these."""
    return _clauses(prompt)[0]


def is_tag(word: str) -> bool:
    """Whether a word of `plain_words` is a resolution or camera tag ("4k", "1080p", "35mm", "f/1.8", "uhd")."""
    return _TAG_WORD.fullmatch(word) is not None


_TAG_WORD = re.compile(_TAG, re.IGNORECASE)


def _is_function(word: str) -> bool:
    return word in _STOP or word in _NEW_OBJECT or word in _CONTEXT or word.isdigit() or is_tag(word)


def _side_match(ws: list[str], i: int) -> _Match | None:
    """'on the left', 'in the top left corner', 'to the left of', 'left of', 'on top of', 'in the middle', ..."""

    def takes(j: int, options: Collection[str]) -> bool:
        return j < len(ws) and ws[j] in options

    j = i + takes(i, _SIDE_PREPS)
    has_prep = j > i
    has_the = takes(j, ("the",))
    j += has_the
    j += takes(j, ("far",))
    named: list[str] = []
    while len(named) < 2 and takes(j, _POSITIONS):
        named.append(ws[j])
        j += 1
    j += 2 if ws[j : j + 2] == ["hand", "side"] else takes(j, _SIDE_TAILS)
    has_of = takes(j, ("of",))
    j += has_of
    if not named or (has_prep and not has_the and not has_of):  # "on top" alone names no side
        return None
    if not has_prep and not (has_of and named[0] in _HORIZONTAL):  # "top hat", "left hand": attributes
        return None
    text, sides = " ".join(ws[i:j]), tuple(_SIDES[w] for w in named if w in _SIDES)  # "top centre" is the top
    if not sides:
        return _Match(j, text, note=_CENTRE_NOTE, then=_DETAIL if has_of else _MAIN)
    if len(sides) == 2 and len(_HORIZONTAL.intersection(sides)) != 1:
        return None
    if not has_of:
        return _Match(j, text, sides=sides)
    if len(sides) == 1:
        return _Match(j, text, relation=_SIDE_RELATION[sides[0]], sides=sides, needs_object=True)
    return _Match(j, text, sides=sides, needs_object=True, then=_DETAIL)  # "in the top left corner of ..."


def _match(ws: list[str], i: int) -> _Match | None:
    """The relation phrase starting at ws[i], the longest one, or None."""
    if i >= len(ws) or (i > 0 and ws[i - 1] == "from"):  # "lit from above", "seen from the left": a viewpoint
        return None
    for key in (tuple(ws[i : i + n]) for n in (3, 2, 1) if i + n <= len(ws)):
        text, end = " ".join(key), i + len(key)
        if key in _RELATIONS:
            relation = _RELATIONS[key]
            return _Match(end, text, relation, (_RELATION_SIDE[relation],), needs_object=True)
        if key in _SKIPPED:
            return _Match(end, text, note=_SKIPPED[key])
    return _side_match(ws, i)


def _is_style(ws: list[str]) -> bool:
    """Whether a clause after the first is a style tag (see the module doc)."""
    first = next((i for i in range(len(ws)) if _match(ws, i)), None)
    lead = ws[:first]  # the words before its first relation phrase: "aerial view" of "aerial view over a city"
    styled = bool(_STYLE.intersection(lead)) or any(map(is_tag, lead))
    counted = any(w in _DETERMINERS or w.isdigit() for w in lead)
    if ws[0] == "by":  # "by greg rutkowski"
        return True
    return (styled or not counted) if first is None else (styled and not counted)


def _phrase(words: list[str], indices: list[int]) -> Phrase:
    seq, start = tuple(words[p] for p in indices), indices[0]
    occurrence = sum(tuple(words[s : s + len(seq)]) == seq for s in range(start))
    return Phrase(seq, seq[-1], seq[:-1], start, occurrence)


def _scan(clause: list[tuple[int, str]], number: int, words: list[str]) -> list[_Candidate | _Match]:
    """The noun phrases (with their role) and relation phrases of one clause, in order."""
    ws = [w for _, w in clause]
    entries: list[_Candidate | _Match] = []
    run: list[int] = []  # clause positions of the phrase being read
    role = _MAIN

    def flush() -> None:
        while run and ws[run[-1]] in _NON_HEAD:
            run.pop()
        if run:
            entries.append(_Candidate(_phrase(words, [clause[p][0] for p in run]), role, number))
        run.clear()

    i = 0
    while i < len(ws):
        w, m = ws[i], _match(ws, i)
        if m:
            flush()
            opens = i == 0 or ws[i - 1] in _NEW_OBJECT
            leads = m.end == len(ws) or ws[m.end] in _COPULAS
            entries.append(replace(m, first=clause[i][0], clause=number, looks_ahead=opens and leads))
            # "on the left wall": a side word right before a noun describes that noun, a detail
            glued = (_is_side(m) and m.end < len(ws) and not _is_function(ws[m.end])
                     and not _match(ws, m.end))
            role, i = _DETAIL if glued else m.then, m.end
            continue
        if w == "right" and _match(ws, i + 1):  # "right above": an adverb
            pass
        elif w in ("and", "or") and run and ws[run[-1]] in _ADJECTIVES and i + 1 < len(ws) and ws[i + 1] in _ADJECTIVES:
            run.append(i)  # "black and white cat" is one phrase
        elif w == "of" and role == _MAIN and run and ws[run[-1]] in _FRAMING:
            run.clear()  # "a photo of": framing; the object follows
        elif w in _NEW_OBJECT:
            flush()
            role = _MAIN
        elif w in _CONTEXT:
            flush()
            role = _DETAIL
        elif _is_function(w):
            flush()
        else:
            run.append(i)
        i += 1
    flush()
    return entries


def _is_side(m: _Match) -> bool:
    return bool(m.sides) and not m.needs_object


def _is_object(entry: _Candidate | _Match, dropped: set[int]) -> bool:
    return isinstance(entry, _Candidate) and entry.role == _MAIN and id(entry) not in dropped


def _before(entries: list, k: int, dropped: set[int]) -> _Candidate | None:
    """The nearest object before entries[k]."""
    return next((e for e in reversed(entries[:k]) if _is_object(e, dropped)), None)


def _after(entries: list, k: int, dropped: set[int]) -> _Candidate | None:
    """The first object after entries[k], before the next relation phrase, unless the next thing in its clause
    is a side that takes it ("a cat, on the left, a dog on the right": the first side is not the dog's)."""

    def marks(j: int) -> bool:  # an object or a relation phrase
        return isinstance(entries[j], _Match) or _is_object(entries[j], dropped)

    j = next((j for j in range(k + 1, len(entries)) if marks(j)), None)
    if j is None or isinstance(entries[j], _Match):
        return None
    nxt = next((e for n, e in enumerate(entries[j + 1 :], j + 1) if e.clause == entries[j].clause and marks(n)), None)
    claimed = isinstance(nxt, _Match) and _is_side(nxt) and not nxt.looks_ahead
    return None if claimed else entries[j]


def _side_subject(entries: list, k: int, dropped: set[int]) -> _Candidate | None:
    """Whose side entries[k] names: the object before it, or, for "on the left, a cat", the object after it
    (each the fallback of the other)."""
    before, after = _before(entries, k, dropped), _after(entries, k, dropped)
    return (after or before) if entries[k].looks_ahead else (before or after)


def _resolve(words: list[str], entries: list[_Candidate | _Match]) -> Parse:
    """Relations from the relation phrases, in prompt order, and the objects that remain."""
    dropped: set[int] = set()  # ids of phrases found not to be objects: the picture, the scene
    plans: list[tuple[int, _Match, _Candidate | None, str | None]] = []  # (position, match, its object, why skip)
    for k, m in enumerate(entries):  # objects first: a subject must not be one of those dropped later
        if not isinstance(m, _Match):
            continue
        after = entries[k + 1] if k + 1 < len(entries) else None
        target = after if isinstance(after, _Candidate) and after.clause == m.clause and m.needs_object else None
        why = m.note
        if target and target.phrase.head in _CANVAS:  # "to the left of the image": a side of the picture
            dropped.add(id(target))
            m, target = replace(m, relation=None, needs_object=False), None
        elif target and m.relation is None:
            why = "names a part of another object, not a side of the picture"
        elif target and m.relation == "below" and target.phrase.head in _AMBIENT:
            dropped.add(id(target))
            why = "sets the scene rather than a layout"
        plans.append((k, m, target, why))

    relations: list[Relation] = []
    notes: list[str] = []
    for k, m, target, why in plans:
        if why:
            span = " ".join(words[m.first : target.phrase.start + len(target.phrase.words)]) if target else m.text
            notes.append(f"'{span}' {why}: skipped")
        elif m.needs_object:
            subject = _before(entries, k, dropped)
            missing = [where for where, found in (("before", subject), ("after", target)) if found is None]
            if missing:
                notes.append(f"'{m.text}' has no noun phrase {' or '.join(missing)} it: skipped")
            else:
                relations.append(Relation(subject.phrase, m.relation, target.phrase, None))
        elif subject := _side_subject(entries, k, dropped):
            relations += [Relation(subject.phrase, "side", None, side) for side in m.sides]
        else:
            notes.append(f"'{m.text}' has no noun phrase to place: skipped")
    return Parse(words, [e.phrase for e in entries if _is_object(e, dropped)], relations, notes)


def parse_prompt(prompt: str) -> Parse:
    """The objects of the prompt, the layout relations between them, and notes on what was skipped."""
    words, clauses = _clauses(prompt)
    entries: list[_Candidate | _Match] = []
    for number, clause in enumerate(clauses):
        if number == 0 or not _is_style([w for _, w in clause]):
            entries += _scan(clause, number, words)
    return _resolve(words, entries)

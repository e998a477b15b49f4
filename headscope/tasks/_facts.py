"""Needles along the realism axis: natural facts, templated relations, symbolic key/values.

A :class:`Fact` is one needle sentence, a question about it, and the answer, which is a
substring of the sentence (so a model can copy it). Natural facts use a dozen hand-written
sentence frames, each with its own wording and question; templated facts all read
"The {relation} of {subject} is {value}."; symbolic facts read "{key}.{field} = {value}." with
UUID-like keys. Questions echo their needle sentence so that small models can answer them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from headscope.errors import TaskError
from headscope.tasks._documents import symbol

__all__ = ["Fact", "bridge_fact", "make_facts"]

_FIRST = ["Elena", "Marco", "Priya", "Tobias", "Amara", "Felix", "Ingrid", "Kenji", "Lucia", "Omar"]
_FIRST += ["Saskia", "Dmitri", "Noor", "Rafael", "Hana", "Oskar", "Leila", "Mateo", "Yara", "Anton"]
_LAST = ["Vasquez", "Bellini", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Kowalski", "Brennan"]
_LAST += ["Castillo", "Sorensen", "Ferreira", "Nakamura", "Petrov", "Abernathy", "Quist", "Delacroix", "Ivanova"]

_SPICES = ["smoked paprika", "saffron", "cardamom", "star anise", "lemongrass", "nutmeg", "tamarind", "sumac"]
_BOATS = ["Biscuit", "Marigold", "Pepperoni", "Waffles", "Noodle", "Dumpling", "Pickle", "Muffin"]
_CODEWORDS = ["pumpkin", "tangerine", "moonbeam", "cobblestone", "pinwheel", "butterscotch", "gumdrop", "kazoo"]
_NORTH = ["Tromso", "Reykjavik", "Yellowknife", "Fairbanks", "Kiruna", "Rovaniemi", "Abisko", "Murmansk"]
_INSTRUMENTS = ["accordion", "banjo", "cello", "harmonica", "ukulele", "bagpipes", "mandolin", "xylophone"]
_PIES = ["rhubarb", "gooseberry", "pecan", "blackberry", "quince", "apricot", "cherry", "peach"]
_ANIMALS = ["snow leopard", "pangolin", "red panda", "okapi", "platypus", "axolotl", "wolverine", "ocelot"]
_OBJECTS = ["flowerpot", "garden gnome", "doormat", "stone frog", "watering can", "boot scraper"]
_LANGUAGES = ["Portuguese", "Swahili", "Icelandic", "Tagalog", "Hungarian", "Welsh", "Finnish", "Basque"]
_PLANTS = ["orchids", "tomatoes", "chili peppers", "begonias", "strawberries", "zucchini", "dahlias"]
_COLORS = ["turquoise", "crimson", "mustard yellow", "lavender", "teal", "tangerine orange", "emerald green"]
_TOWNS = ["Kelmora", "Brightwater", "Ashford", "Dunmere", "Valtoria", "Pinecrest", "Oakhaven", "Marlow"]
_FRUITS = ["mango", "papaya", "lychee", "kiwi", "guava", "persimmon", "plum", "fig"]
_JOBS = ["baker", "pilot", "florist", "carpenter", "librarian", "dentist", "glassblower", "locksmith"]
_NUMBERS = [str(n) for n in range(13, 98)]

# (needle sentence, question, values): {s} is the subject, {v} the value.
_NATURAL = [
    (
        "The secret ingredient in the famous soup made by {s} is {v}.",
        "What is the secret ingredient in the famous soup made by {s}?",
        _SPICES,
    ),
    ("{s} named the new sailboat {v} after a childhood dog.", "What name did {s} give the new sailboat?", _BOATS),
    ("The password to the garden shed of {s} is {v}.", "What is the password to the garden shed of {s}?", _CODEWORDS),
    (
        "Every winter, {s} travels to {v} to watch the northern lights.",
        "Where does {s} travel every winter to watch the northern lights?",
        _NORTH,
    ),
    (
        "At family gatherings, {s} always plays the {v}.",
        "What instrument does {s} always play at family gatherings?",
        _INSTRUMENTS,
    ),
    (
        "The small bakery run by {s} is famous for its {v} pie.",
        "What kind of pie is the small bakery run by {s} famous for?",
        _PIES,
    ),
    (
        "On the first day of the expedition, {s} spotted a rare {v} near the river.",
        "What rare animal did {s} spot near the river on the first day of the expedition?",
        _ANIMALS,
    ),
    (
        "{s} keeps the spare house key under the {v} by the front door.",
        "What does {s} keep the spare house key under?",
        _OBJECTS,
    ),
    (
        "The lucky number that {s} always picks in the lottery is {v}.",
        "What lucky number does {s} always pick in the lottery?",
        _NUMBERS,
    ),
    (
        "{s} learned to speak {v} while working on a farm abroad.",
        "What language did {s} learn while working on a farm abroad?",
        _LANGUAGES,
    ),
    (
        "In the greenhouse behind the cottage, {s} grows prize-winning {v}.",
        "What does {s} grow in the greenhouse behind the cottage?",
        _PLANTS,
    ),
    (
        "{s} painted the front door of the old farmhouse bright {v}.",
        "What color did {s} paint the front door of the old farmhouse?",
        _COLORS,
    ),
]
_RELATIONS = [
    ("favorite color", _COLORS),
    ("hometown", _TOWNS),
    ("favorite fruit", _FRUITS),
    ("job", _JOBS),
    ("lucky number", _NUMBERS),
    ("favorite instrument", _INSTRUMENTS),
    ("native language", _LANGUAGES),
    ("favorite spice", _SPICES),
]
# Person-to-person links for multi-hop questions: (sentence with {a} and {b}, description of {b} via {a}).
_NATURAL_LINKS = [
    ("{a} learned to paint from {b}.", "the person who taught {a} to paint"),
    ("{a} shares an apartment with {b}.", "the person who shares an apartment with {a}"),
    ("During the first year at the observatory, {a} was mentored by {b}.", "the mentor of {a} at the observatory"),
    ("{a} sold an old bicycle to {b} last spring.", "the person who bought an old bicycle from {a}"),
    ("{a} married {b} in a small ceremony by the lake.", "the spouse of {a}"),
]
_TEMPLATED_LINKS = ["mentor", "neighbor", "manager", "cousin", "landlord"]


@dataclass(frozen=True)
class Fact:
    """A needle: ``sentence`` holds ``value`` at ``value_start``; ``question`` asks for ``value``."""

    sentence: str
    question: str
    value: str
    value_start: int
    subject: str

    @property
    def value_end(self) -> int:
        return self.value_start + len(self.value)

    @property
    def lead_in(self) -> str:
        """The sentence up to its value, as an answer would start: ``"The hometown of X is"``."""
        return self.sentence[: self.value_start].rstrip()


def _fill(sentence: str, question: str, subject: str, value: str) -> Fact:
    head, _, tail = sentence.partition("{v}")
    head = head.format(s=subject)
    text = head + value + tail.format(s=subject)
    return Fact(text, question.format(s=subject), value, len(head), subject)


def _person(rng: random.Random, used: set[str]) -> str:
    while True:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if name not in used:
            used.add(name)
            return name


def _key(rng: random.Random) -> str:
    return f"{symbol(rng, 8)}-{symbol(rng, 4)}"


def make_facts(
    rng: random.Random, realism: str, n: int, *, same_relation: bool, subject: str | None = None
) -> list[Fact]:
    """``n`` facts with distinct subjects and values (or about one ``subject`` with distinct relations).

    ``same_relation=True`` gives facts that share a frame or relation (distractor needles);
    otherwise each fact uses a different frame.
    """
    used: set[str] = set()
    if realism == "symbolic":
        field = symbol(rng, 3)
        facts = []
        for _ in range(n):
            key = subject or _key(rng)
            name = field if same_relation else symbol(rng, 3)
            value = symbol(rng, 6)
            facts.append(_fill(f"{key}.{name} = {{v}}.", f"What is the value of {key}.{name}?", key, value))
        return facts
    frames = (
        _NATURAL
        if realism == "natural"
        else [(f"The {rel} of {{s}} is {{v}}.", f"What is the {rel} of {{s}}?", vals) for rel, vals in _RELATIONS]
    )
    if not same_relation and n > len(frames):
        raise TaskError(f"at most {len(frames)} different {realism} relations; asked for {n}")
    chosen = [rng.choice(frames)] * n if same_relation else rng.sample(frames, n)
    facts, values = [], set()
    for sentence, question, pool in chosen:
        value = rng.choice([v for v in pool if v not in values])
        values.add(value)
        facts.append(_fill(sentence, question, subject or _person(rng, used), value))
    return facts


def bridge_fact(rng: random.Random, realism: str) -> tuple[Fact, Fact, str, str]:
    """Two linked facts for a multi-hop question: ``a -> b`` then ``b -> value``.

    Returns (hop1, hop2, question, lead-in); the lead-in is hop2's sentence up to the value with
    ``b`` described through ``a``, as in the question (``"The hometown of the mentor of A is"``),
    so that it does not give the bridge entity away.
    """
    used: set[str] = set()
    if realism == "symbolic":
        a, b, field, value = _key(rng), _key(rng), symbol(rng, 3), symbol(rng, 6)
        hop1 = _fill(f"{a}.link = {{v}}.", "", a, b)
        hop2 = _fill(f"{b}.{field} = {{v}}.", "", b, value)
        return hop1, hop2, f"Let x be the value of {a}.link. What is the value of x.{field}?", f"x.{field} ="
    a, b = _person(rng, used), _person(rng, used)
    if realism == "natural":
        link, description = rng.choice(_NATURAL_LINKS)
        sentence, question, pool = rng.choice(_NATURAL)
    else:
        relation = rng.choice(_TEMPLATED_LINKS)
        link, description = f"The {relation} of {{a}} is {{b}}.", f"the {relation} of {{a}}"
        rel, pool = rng.choice(_RELATIONS)
        sentence, question = f"The {rel} of {{s}} is {{v}}.", f"What is the {rel} of {{s}}?"
    hop1 = _fill(link.replace("{b}", "{v}").replace("{a}", "{s}"), "", a, b)
    hop2 = _fill(sentence, question, b, rng.choice(pool))
    asked = question.format(s=description.format(a=a))
    lead_in = sentence.partition("{v}")[0].format(s=description.format(a=a)).rstrip()
    return hop1, hop2, asked[0].upper() + asked[1:], lead_in[0].upper() + lead_in[1:]

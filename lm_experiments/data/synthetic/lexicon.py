"""The lexicon of the English grammar: word lists, their classes and the weights of choices.

Deliberately regular: words of one category are interchangeable (uniform choice), each quality
adjective and each verb belongs to one class of subject, so a model that groups words into
classes and tracks a few features (sentence type, subject class and number, what is missing) can
reach the oracle from 200k tokens, while a model that sees only the last few words cannot.
No word is two parts of speech and no noun is the same in both numbers.
"""

from __future__ import annotations

from typing import NamedTuple

CLASSES = ("animal", "person", "machine", "food", "thing", "place")
AGENTS = ("animal", "person", "machine")  # classes with verbs other than "is"/"are"
ANIMATE = ("animal", "person")
INANIMATE = ("machine", "food", "thing", "place")

# Prior weight of each class where nouns of several classes may follow (subjects, objects).
CLASS_WEIGHT = {"animal": 3, "person": 3, "machine": 2, "food": 1.5, "thing": 1.5, "place": 1}
PLURAL_PROB = 0.4  # P(plural noun) where the determiner left the number open

# (singular, plural); no noun is the same in both numbers, no word is two parts of speech.
NOUNS = {
    "animal": [
        ("cat", "cats"), ("dog", "dogs"), ("horse", "horses"), ("mouse", "mice"),
        ("rabbit", "rabbits"), ("bird", "birds"), ("fox", "foxes"), ("goat", "goats"),
        ("cow", "cows"), ("pig", "pigs"), ("wolf", "wolves"), ("bear", "bears"),
        ("duck", "ducks"), ("frog", "frogs"), ("owl", "owls"), ("lion", "lions"),
    ],
    "person": [
        ("man", "men"), ("woman", "women"), ("child", "children"), ("girl", "girls"),
        ("boy", "boys"), ("teacher", "teachers"), ("farmer", "farmers"), ("doctor", "doctors"),
        ("king", "kings"), ("queen", "queens"), ("baker", "bakers"), ("sailor", "sailors"),
        ("nurse", "nurses"), ("painter", "painters"), ("soldier", "soldiers"),
        ("pilot", "pilots"),
    ],
    "machine": [
        ("truck", "trucks"), ("train", "trains"), ("boat", "boats"), ("car", "cars"),
        ("robot", "robots"), ("bus", "buses"), ("tractor", "tractors"), ("plane", "planes"),
        ("crane", "cranes"), ("wagon", "wagons"), ("ship", "ships"), ("van", "vans"),
        ("rocket", "rockets"), ("engine", "engines"),
    ],
    "food": [
        ("apple", "apples"), ("cake", "cakes"), ("carrot", "carrots"), ("cookie", "cookies"),
        ("egg", "eggs"), ("pie", "pies"), ("banana", "bananas"), ("orange", "oranges"),
        ("sandwich", "sandwiches"), ("potato", "potatoes"), ("lemon", "lemons"),
        ("pear", "pears"), ("plum", "plums"), ("onion", "onions"),
    ],
    "thing": [
        ("book", "books"), ("ball", "balls"), ("box", "boxes"), ("hat", "hats"),
        ("cup", "cups"), ("key", "keys"), ("bag", "bags"), ("chair", "chairs"),
        ("lamp", "lamps"), ("letter", "letters"), ("stone", "stones"), ("basket", "baskets"),
        ("coin", "coins"), ("drum", "drums"),
    ],
    "place": [
        ("hill", "hills"), ("river", "rivers"), ("garden", "gardens"), ("house", "houses"),
        ("road", "roads"), ("field", "fields"), ("bridge", "bridges"), ("table", "tables"),
        ("mat", "mats"), ("forest", "forests"), ("lake", "lakes"), ("farm", "farms"),
        ("tower", "towers"), ("island", "islands"),
    ],
}  # fmt: skip


class Forcing(NamedTuple):
    """A determiner or question auxiliary: the number it forces on its noun, and its weight."""

    number: str  # "sg", "pl" or "any" (leaves the number to the noun)
    weight: float


# Determiners; "a" becomes "an" before a vowel.
DETERMINERS = {
    "the": Forcing("any", 8.0), "my": Forcing("any", 1.0), "our": Forcing("any", 0.6),
    "a": Forcing("sg", 3.0), "this": Forcing("sg", 1.0), "every": Forcing("sg", 0.8),
    "these": Forcing("pl", 1.0), "some": Forcing("pl", 1.2), "many": Forcing("pl", 0.6),
    "two": Forcing("pl", 0.6),
}  # fmt: skip

# Up to two prenominal adjectives, in English order: a size/age adjective (fits every noun),
# then a quality adjective, which belongs to one class and so announces the noun's class.
# Quality and size adjectives are also the predicates of "is"/"are".
SIZE_ADJECTIVES = ("big", "small", "little", "huge", "tiny", "old")
QUALITY_ADJECTIVES = {
    "animal": ("furry", "wild", "fierce", "spotted", "sleepy"),
    "person": ("happy", "tired", "kind", "clever", "brave"),
    "machine": ("noisy", "rusty", "fast", "electric", "broken"),
    "food": ("ripe", "sweet", "fresh", "juicy", "sour"),
    "thing": ("heavy", "shiny", "empty", "wooden", "precious"),
    "place": ("quiet", "muddy", "sunny", "distant", "narrow"),
}
P_SIZE_ADJECTIVE = 0.2  # right after the determiner
P_QUALITY_ADJECTIVE = 0.3  # after the determiner and any size adjective


class Verb(NamedTuple):
    """One verb of the lexicon. A singular subject takes `singular`; a plural subject, a
    question's auxiliary and a wh-gap take `bare`."""

    singular: str  # "eats"
    bare: str  # "eat"
    subject: str  # the one class of subject it takes
    frame: str  # "intr" (nothing follows), "obj" (an object of `objects`), "loc" (prep + place)
    objects: tuple[str, ...]  # classes of its object ("obj" frame)
    weight: float


VERBS = [
    Verb("sleeps", "sleep", "animal", "intr", (), 1.0),
    Verb("runs", "run", "animal", "intr", (), 1.0),
    Verb("jumps", "jump", "animal", "intr", (), 1.0),
    Verb("swims", "swim", "animal", "intr", (), 1.0),
    Verb("eats", "eat", "animal", "obj", ("food",), 2.0),
    Verb("chases", "chase", "animal", "obj", ("animal",), 2.0),
    Verb("bites", "bite", "animal", "obj", ("person",), 1.5),
    Verb("smells", "smell", "animal", "obj", ("thing",), 1.5),
    Verb("sits", "sit", "animal", "loc", (), 1.5),
    Verb("hides", "hide", "animal", "loc", (), 1.5),
    Verb("sings", "sing", "person", "intr", (), 1.0),
    Verb("laughs", "laugh", "person", "intr", (), 1.0),
    Verb("dances", "dance", "person", "intr", (), 1.0),
    Verb("cooks", "cook", "person", "obj", ("food",), 1.5),
    Verb("buys", "buy", "person", "obj", ("thing",), 1.5),
    Verb("reads", "read", "person", "obj", ("thing",), 1.0),
    Verb("feeds", "feed", "person", "obj", ("animal",), 1.5),
    Verb("helps", "help", "person", "obj", ("person",), 1.5),
    Verb("visits", "visit", "person", "obj", ("place",), 1.5),
    Verb("drives", "drive", "person", "obj", ("machine",), 1.5),
    Verb("lives", "live", "person", "loc", (), 1.5),
    Verb("waits", "wait", "person", "loc", (), 1.0),
    Verb("stops", "stop", "machine", "intr", (), 1.0),
    Verb("moves", "move", "machine", "intr", (), 1.0),
    Verb("crashes", "crash", "machine", "intr", (), 1.0),
    Verb("carries", "carry", "machine", "obj", ("thing",), 2.0),
    Verb("pulls", "pull", "machine", "obj", ("machine",), 1.5),
    Verb("hits", "hit", "machine", "obj", ("animal",), 1.5),
    Verb("passes", "pass", "machine", "obj", ("person",), 1.5),
    Verb("stands", "stand", "machine", "loc", (), 1.5),
]
COPULA_WEIGHT = 3.0  # weight of "is"/"are" + predicate beside an agent's verbs
PREPOSITIONS = ("on", "in", "near", "under", "behind")  # of places, after nouns and "loc" verbs

# Post-nominal modifiers of a noun: weights of (none, prepositional phrase, "with" phrase,
# relative clause). The subject of the sentence takes them often, which puts words between it and
# its verb; other nouns take only short, right-branching phrases ("the cat near the house on the
# hill"), whose nouns take them in turn. A relative clause is "that" + a verb phrase agreeing with
# the modified noun ("the cat that chases the dog"); the nouns inside it are "other" nouns, so
# clauses never nest and the set of machine states stays finite.
MODIFIER_WEIGHTS = {"subject": (0.35, 0.35, 0.08, 0.22), "other": (0.80, 0.15, 0.05, 0.0)}
SENTENCE_WEIGHTS = {"decl": 0.6, "yn": 0.22, "what": 0.1, "who": 0.08}
QUESTION_AUX = {
    "does": Forcing("sg", 3.0), "do": Forcing("pl", 2.0), "can": Forcing("any", 2.0),
    "will": Forcing("any", 1.5), "did": Forcing("any", 1.5),
}  # fmt: skip

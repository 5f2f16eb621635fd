"""What the English grammar knows about each token it emits: which earlier word decided it (and
how far back), its word class, and labels of the whole sentence.

All of it is read off the derivation of the sentence (`Grammar.derivation`), so it is exact and
agrees with the text by construction.

**Distance.** The grammar's memory is the features its nonterminals carry: the sentence type
(fixed by the first word), the wh-word's gap, a noun phrase's allowed classes (fixed by a verb,
a preposition, "with", a question's auxiliary or wh-word, or a quality adjective) and number (a
determiner or auxiliary), the a/an onset, and a subject's class and number (its noun). Each
feature's *origin* is the word that fixed its current value. A token is decided by the origins
of the features that restrict it (`_deciding`) on the nonterminals expanded to emit it: the main
verb by its subject noun (agreement, class) and by the first word (a statement's verb is finite,
a question's is bare), the object noun by its verb, a wh-question's verb by the wh-word, the
final "." or "?" by the first word, `<eos>` by the final mark. Its distance is how many tokens
back the farthest of those words is; `0` means nothing earlier decided it (the first word, a
noun after "the", a size adjective, "the" itself).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lm_experiments.data.synthetic.engine import EOS, Grammar
from lm_experiments.data.synthetic.english import (
    NONE,
    Clause,
    GapVerb,
    Modifiers,
    NounBody,
    NounPhrase,
    Predicate,
    Preposition,
    Sentence,
    VerbPhrase,
    WhAux,
)
from lm_experiments.data.synthetic.lexicon import (
    AGENTS,
    CLASSES,
    NOUNS,
    QUALITY_ADJECTIVES,
    QUESTION_AUX,
    SIZE_ADJECTIVES,
    VERBS,
)

NO_DECIDER = 0  # the distance of a token no earlier word decided
DISTANCE_BUCKETS = ("none", "1-3", "4-6", "7-10", "11+")
_BUCKET_STARTS = np.array([1, 4, 7, 11])  # the first distance of every bucket after "none"


def distance_bucket(distance):
    """Index into DISTANCE_BUCKETS of a distance (an int or an integer array, elementwise)."""
    return np.searchsorted(_BUCKET_STARTS, distance, side="right")


# -- word classes ------------------------------------------------------------------------------

VERB_NUMBERS = ("sg", "pl", "bare")  # "eats"; "eat" after a plural subject; "eat" after "does"
TAGS = (
    "det", "aux", "wh", "adj", "noun_sg", "noun_pl",
    *(f"verb_{n}_{c}" for n in VERB_NUMBERS for c in AGENTS),
    "copula_sg", "copula_pl", "prep", "rel", "punct", "eos",
)  # fmt: skip
QUESTION_LABELS = ("statement", "question")
NUMBER_LABELS = ("sg", "pl")
VERB_CLASSES = (*AGENTS, "copula")  # the class of subject the main verb belongs to, or is/are

_NOUN_NUMBER = {word: n for forms in NOUNS.values() for sg, pl in forms for word, n in ((sg, "sg"), (pl, "pl"))}  # fmt: skip
_VERB = {word: verb for verb in VERBS for word in (verb.singular, verb.bare)}
_QUALITY = {word for words in QUALITY_ADJECTIVES.values() for word in words}


def _verb_tag(word: str, number: str) -> str:
    if word in ("is", "are"):
        return f"copula_{number}"
    return f"verb_{number}_{_VERB[word].subject}"


def _tag(emitter, word: str) -> str:
    """The word class of `word`, emitted by a rule of `emitter` (None: it was on the stack)."""
    if emitter is None:
        return "eos" if word == EOS else "punct"
    if isinstance(emitter, Sentence):
        return "wh" if word in ("what", "who") else "aux" if word in QUESTION_AUX else "det"
    if isinstance(emitter, NounBody):
        return f"noun_{_NOUN_NUMBER[word]}" if word in _NOUN_NUMBER else "adj"
    if isinstance(emitter, VerbPhrase):
        number = "bare" if emitter.form == "bare" else emitter.number
        return _verb_tag(word, number)
    simple = {WhAux: "aux", NounPhrase: "det", Preposition: "prep", Predicate: "adj"}
    if type(emitter) in simple:
        return simple[type(emitter)]
    if isinstance(emitter, GapVerb):
        return _verb_tag(word, "bare")
    if isinstance(emitter, Modifiers):
        return "rel" if word == "that" else "prep"
    raise ValueError(f"no word class for {word!r} from {emitter!r}")


# -- where each feature came from ----------------------------------------------------------------


def _kept(child, parent, origins: dict, field: str, t: int):
    """The origin of `field`: the parent's if passed on unchanged, else the word at `t`."""
    if getattr(parent, field, None) == getattr(child, field):
        return origins.get(field)
    return t


def _origins(child, parent, origins: dict, t: int) -> dict:
    """Which word fixed each feature of `child`, pushed at token `t` by a rule of `parent`
    (whose features were fixed at `origins`). Open values (any class, any number) have none."""
    if isinstance(child, NounPhrase):
        if isinstance(parent, WhAux):  # the wh-word's gap restricts the subject
            return {"classes": origins["gap"], "number": t, "then": origins["gap"]}
        out = {"classes": t if child.classes != CLASSES else None}
        out["number"] = t if child.number != "any" else None
        out["then"] = t if child.then != NONE else None
        return out
    if isinstance(child, NounBody):
        out = {field: _kept(child, parent, origins, field, t) for field in ("classes", "number")}
        out |= {"then": origins.get("then"), "onset": t if child.onset else None}
        return out
    if isinstance(child, Modifiers):
        return {"cls": t, "number": t}
    if isinstance(child, Clause):
        return {"then": origins.get("then"), "cls": t, "number": t}
    if isinstance(child, VerbPhrase):  # the main verb's form comes from the sentence type
        form = origins["then"] if isinstance(parent, Clause) else t  # ... a relative's from "that"
        return {"cls": origins["cls"], "number": origins["number"], "form": form}
    if isinstance(child, GapVerb):
        return {"cls": origins["cls"], "gap": origins["then"]}
    if isinstance(child, Predicate):
        return {"cls": origins["cls"]}
    if isinstance(child, WhAux):
        return {"gap": t}
    if child in (".", "?"):  # the final mark, decided by the sentence type
        return {"sentence": origins["then"]}
    return {}  # Preposition, and words emitted at once


def _deciding(symbol, word: str) -> tuple[str, ...]:
    """The features of `symbol` that restrict `word`, which it (or what it expands to) emits."""
    if isinstance(symbol, NounPhrase):  # the classes only weigh "a" against "an"
        return ("number", "classes") if word in ("a", "an") else ("number",)
    if isinstance(symbol, NounBody):
        if word in SIZE_ADJECTIVES:
            return ("onset",)
        return ("onset", "classes") if word in _QUALITY else ("onset", "classes", "number")
    deciding = {Modifiers: ("cls",), Clause: ("then", "cls", "number"), GapVerb: ("cls", "gap")}
    deciding |= {VerbPhrase: ("cls", "number", "form"), Predicate: ("cls",)}
    return deciding.get(type(symbol), ())


# -- a sentence ----------------------------------------------------------------------------------


class Annotation(NamedTuple):
    """One sentence: per token (words and the final <eos>) and per sentence (label indices)."""

    distance: list[int]  # tokens back to the farthest word that decided it; 0: none
    tag: list[int]  # into TAGS
    question: int  # into QUESTION_LABELS
    subject_number: int  # into NUMBER_LABELS
    verb_class: int  # into VERB_CLASSES


def annotate(grammar: Grammar, words: list[str]) -> Annotation:
    """Walk the derivation of one sentence of the English grammar, tracking feature origins."""
    state = grammar.initial_state()
    stack = [({}, symbol) for symbol in reversed(state)]  # (origins, symbol), top last
    distances, tags, subject, verb_class = [], [], None, None
    for t, word in enumerate([*words, EOS]):
        path = grammar.derivation(state, word)
        decided_at = {t - 1} if word == EOS else set()
        for symbol, rhs in path:
            origins, _ = stack.pop()  # the origins of `symbol`, the top of the stack
            decided_at |= {origins.get(f) for f in _deciding(symbol, word)}
            stack.extend((_origins(c, symbol, origins, t), c) for c in reversed(rhs))
            if isinstance(symbol, Clause):  # the main verb
                subject = symbol
                verb_class = "copula" if word in ("is", "are") else symbol.cls
        origins, _ = stack.pop()  # the word itself; a final mark was pushed with an origin
        decided_at.add(origins.get("sentence"))
        earlier = [at for at in decided_at if at is not None and at < t]
        distances.append(t - min(earlier) if earlier else NO_DECIDER)
        emitter = path[-1][0] if path and path[-1][1][:1] == (word,) else None
        tags.append(TAGS.index(_tag(emitter, word)))
        state = grammar.advance(state, word)
    return Annotation(
        distance=distances,
        tag=tags,
        question=QUESTION_LABELS.index(
            "statement" if subject.then.sentence == "decl" else "question"
        ),
        subject_number=NUMBER_LABELS.index(subject.number),
        verb_class=VERB_CLASSES.index(verb_class),
    )

"""The English grammar: its nonterminals (named features) and the rules that expand them.

The grammar is built so that a fixed window misses information a model with memory can use: the
subject head noun decides the main verb's number (agreement) and the verb's semantic class
(which in turn decides the object's class) across prepositional phrases and relative clauses
whose own nouns act as attractors; a wh-word at the start of a question decides, many tokens
later, which verbs are possible and that the object is missing; and the first word alone decides
whether the sentence ends in "." or "?".

Latent choices are always made at the token that reveals them (a noun reveals its class and
number, a determiner may reveal the number, a quality adjective the class), which keeps the
grammar unambiguous token by token. A nonterminal is a NamedTuple of features (strings, ints and
tuples, never sets: their iteration order would depend on the hash seed) ending in its `kind`,
which keeps two kinds with equal features apart. `RULES` maps each kind to the function that
lists its productions.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from typing import NamedTuple

from lm_experiments.data.synthetic.engine import Grammar, Rule
from lm_experiments.data.synthetic.lexicon import (
    AGENTS,
    ANIMATE,
    CLASS_WEIGHT,
    CLASSES,
    COPULA_WEIGHT,
    DETERMINERS,
    INANIMATE,
    MODIFIER_WEIGHTS,
    NOUNS,
    P_QUALITY_ADJECTIVE,
    P_SIZE_ADJECTIVE,
    PLURAL_PROB,
    PREPOSITIONS,
    QUALITY_ADJECTIVES,
    QUESTION_AUX,
    SENTENCE_WEIGHTS,
    SIZE_ADJECTIVES,
    VERBS,
    Verb,
)


def _compact_repr(symbol) -> str:
    """`(kind, *features)`: short in a stack dump, and the form the grammar fingerprint hashes
    (the plain tuples these symbols were before they had names)."""
    return repr((symbol.kind, *symbol[:-1]))


class Continuation(NamedTuple):
    """What a noun phrase's head noun still owes the sentence: the rest of a clause whose subject
    it is ("decl", "yn", or "wh" with the classes the missing object may have), or "none"."""

    sentence: str
    gap: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return repr((self.sentence, self.gap) if self.gap else (self.sentence,))


NONE = Continuation("none")  # a noun phrase whose class nothing downstream depends on


class Sentence(NamedTuple):
    """The start symbol: the first word decides the sentence type (and its final "." or "?")."""

    kind: str = "S"
    __repr__ = _compact_repr


class WhAux(NamedTuple):
    """After "what"/"who": an auxiliary, then a subject with a verb that can leave the gap."""

    gap: tuple[str, ...]
    kind: str = "WHAUX"
    __repr__ = _compact_repr


class NounPhrase(NamedTuple):
    """A noun phrase before its determiner (which may fix the number)."""

    classes: tuple[str, ...]
    number: str  # "sg", "pl" or "any"
    then: Continuation
    kind: str = "NP"
    __repr__ = _compact_repr


class NounBody(NamedTuple):
    """Adjectives, then the noun that fixes class and number. `stage` 0: right after the
    determiner; 1: after a size adjective; 2: after a quality one. `onset`: right after "a"/"an",
    "consonant" or "vowel"."""

    classes: tuple[str, ...]
    number: str
    then: Continuation
    stage: int
    onset: str
    kind: str = "NPB"
    __repr__ = _compact_repr


class Modifiers(NamedTuple):
    """Post-nominal modifiers of a noun of class `cls` and number `number` (`role`: "subject"
    or "other")."""

    cls: str
    number: str
    role: str
    kind: str = "POST"
    __repr__ = _compact_repr


class Clause(NamedTuple):
    """The rest of the clause, which needs its subject's class and number."""

    then: Continuation
    cls: str
    number: str
    kind: str = "K"
    __repr__ = _compact_repr


class VerbPhrase(NamedTuple):
    """A verb agreeing with a subject of class `cls`; `form` "fin" (finite) or "bare"."""

    cls: str
    number: str
    form: str
    kind: str = "VP"
    __repr__ = _compact_repr


class GapVerb(NamedTuple):
    """After "what/who + aux + subject": a bare verb whose object is the gap."""

    cls: str
    gap: tuple[str, ...]
    kind: str = "VGAP"
    __repr__ = _compact_repr


class Preposition(NamedTuple):
    kind: str = "PREP"
    __repr__ = _compact_repr


class Predicate(NamedTuple):
    """The adjective after "is"/"are", of the subject's class."""

    cls: str
    kind: str = "PRED"
    __repr__ = _compact_repr


def _normalised(weighted: list[tuple[float, tuple]]) -> list[Rule]:
    total = math.fsum(w for w, _ in weighted)
    return [(w / total, rhs) for w, rhs in weighted if w > 0]


def _verbs(subject: str) -> list[Verb]:
    return [verb for verb in VERBS if verb.subject == subject]


def _gap_verbs(subject: str, gap: tuple[str, ...]) -> list[Verb]:
    """Verbs of `subject` whose object (or place) can be the gap, of a class in `gap`."""
    return [
        verb
        for verb in _verbs(subject)
        if (verb.frame == "obj" and any(c in gap for c in verb.objects))
        or (verb.frame == "loc" and "place" in gap)
    ]


def _gap_subjects(gap: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in AGENTS if _gap_verbs(c, gap))


def onset(word: str) -> str:
    return "vowel" if word[0] in "aeio" else "consonant"


# -- the rules, one function a kind of nonterminal -----------------------------------------------


def _sentence(_: Sentence) -> list[Rule]:
    aux_total = math.fsum(aux.weight for aux in QUESTION_AUX.values())
    out = [(SENTENCE_WEIGHTS["decl"], (NounPhrase(CLASSES, "any", Continuation("decl")),))]
    for word, aux in QUESTION_AUX.items():
        subject = NounPhrase(AGENTS, aux.number, Continuation("yn"))
        out.append((SENTENCE_WEIGHTS["yn"] * aux.weight / aux_total, (word, subject)))
    out.append((SENTENCE_WEIGHTS["what"], ("what", WhAux(INANIMATE))))
    out.append((SENTENCE_WEIGHTS["who"], ("who", WhAux(ANIMATE))))
    return _normalised(out)


def _wh_aux(symbol: WhAux) -> list[Rule]:
    subjects = _gap_subjects(symbol.gap)
    then = Continuation("wh", symbol.gap)
    return _normalised(
        [
            (aux.weight, (word, NounPhrase(subjects, aux.number, then)))
            for word, aux in QUESTION_AUX.items()
        ]
    )


def _noun_phrase(symbol: NounPhrase) -> list[Rule]:
    out = []
    for word, det in DETERMINERS.items():
        if symbol.number != "any" and det.number not in ("any", symbol.number):
            continue
        number = symbol.number if det.number == "any" else det.number
        body = NounBody(symbol.classes, number, symbol.then, 0, "")
        if word != "a":
            out.append((det.weight, (word, body)))
            continue
        # The indefinite article takes its form from the next word: "a" or "an" is chosen with
        # the probability that the next word starts with a consonant or a vowel.
        for article, sound in (("a", "consonant"), ("an", "vowel")):
            mass = math.fsum(p for p, rhs in _noun_body_words(body) if onset(rhs[0]) == sound)
            out.append((det.weight * mass, (article, body._replace(onset=sound))))
    return _normalised(out)


def _noun_body_words(symbol: NounBody) -> list[Rule]:
    """Productions of a NounBody before the a/an restriction: an adjective or the noun."""
    classes, number, then, stage = symbol.classes, symbol.number, symbol.then, symbol.stage
    class_total = math.fsum(CLASS_WEIGHT[c] for c in classes)
    p_size = P_SIZE_ADJECTIVE if stage == 0 else 0.0
    p_quality = (1 - p_size) * P_QUALITY_ADJECTIVE if stage < 2 else 0.0
    p_noun = 1 - p_size - p_quality
    out = []
    for word in SIZE_ADJECTIVES if p_size else ():
        rhs = (word, NounBody(classes, number, then, 1, ""))
        out.append((p_size / len(SIZE_ADJECTIVES), rhs))
    for c in classes if p_quality else ():
        for word in QUALITY_ADJECTIVES[c]:  # the class is chosen with its prior weight
            p = p_quality * CLASS_WEIGHT[c] / class_total / len(QUALITY_ADJECTIVES[c])
            out.append((p, (word, NounBody((c,), number, then, 2, ""))))
    numbers = {"sg": (("sg", 1.0),), "pl": (("pl", 1.0),)}.get(
        number, (("sg", 1 - PLURAL_PROB), ("pl", PLURAL_PROB))
    )
    role = "subject" if then.sentence in ("decl", "yn", "wh") else "other"
    for c in classes:
        forms = NOUNS[c]
        for num, p_num in numbers:
            for sg, pl in forms:
                p = p_noun * CLASS_WEIGHT[c] / class_total * p_num / len(forms)
                after = (Modifiers(c, num, role),)
                if then != NONE:
                    after += (Clause(then, c, num),)
                out.append((p, (sg if num == "sg" else pl, *after)))
    return out


def _noun_body(symbol: NounBody) -> list[Rule]:
    productions = _noun_body_words(symbol)
    if symbol.onset:  # right after "a"/"an": keep the words with that onset, renormalised
        productions = _normalised([(p, r) for p, r in productions if onset(r[0]) == symbol.onset])
    return productions


def _modifiers(symbol: Modifiers) -> list[Rule]:
    w_none, w_pp, w_with, w_rc = MODIFIER_WEIGHTS[symbol.role]
    out = [(w_none, ())]
    for prep in PREPOSITIONS:
        out.append((w_pp / len(PREPOSITIONS), (prep, NounPhrase(("place",), "any", NONE))))
    if symbol.cls != "food":
        out.append((w_with, ("with", NounPhrase(("thing",), "any", NONE))))
    out.append((w_rc, ("that", VerbPhrase(symbol.cls, symbol.number, "fin"))))
    return _normalised(out)


def _clause(symbol: Clause) -> list[Rule]:
    sentence = symbol.then.sentence
    if sentence == "decl":
        return [(1.0, (VerbPhrase(symbol.cls, symbol.number, "fin"), "."))]
    if sentence == "yn":
        return [(1.0, (VerbPhrase(symbol.cls, symbol.number, "bare"), "?"))]
    if sentence == "wh":
        return [(1.0, (GapVerb(symbol.cls, symbol.then.gap), "?"))]
    raise ValueError(f"unknown continuation {symbol.then!r}")


def _verb_phrase(symbol: VerbPhrase) -> list[Rule]:
    out = []
    for verb in _verbs(symbol.cls):
        word = verb.singular if (symbol.form == "fin" and symbol.number == "sg") else verb.bare
        if verb.frame == "intr":
            out.append((verb.weight, (word,)))
        elif verb.frame == "obj":
            out.append((verb.weight, (word, NounPhrase(verb.objects, "any", NONE))))
        else:
            place = NounPhrase(("place",), "any", NONE)
            out.append((verb.weight, (word, Preposition(), place)))
    if symbol.form == "fin":  # questions are built with an auxiliary, which "is" cannot follow
        copula = "is" if symbol.number == "sg" else "are"
        out.append((COPULA_WEIGHT, (copula, Predicate(symbol.cls))))
    return _normalised(out)


def _gap_verb(symbol: GapVerb) -> list[Rule]:
    out = []
    for verb in _gap_verbs(symbol.cls, symbol.gap):
        rhs = (verb.bare, Preposition()) if verb.frame == "loc" else (verb.bare,)
        out.append((verb.weight, rhs))
    return _normalised(out)


def _preposition(_: Preposition) -> list[Rule]:
    return [(1 / len(PREPOSITIONS), (p,)) for p in PREPOSITIONS]


def _predicate(symbol: Predicate) -> list[Rule]:
    predicates = QUALITY_ADJECTIVES[symbol.cls] + SIZE_ADJECTIVES
    return [(1 / len(predicates), (word,)) for word in predicates]


RULES = {
    Sentence: _sentence,
    WhAux: _wh_aux,
    NounPhrase: _noun_phrase,
    NounBody: _noun_body,
    Modifiers: _modifiers,
    Clause: _clause,
    VerbPhrase: _verb_phrase,
    GapVerb: _gap_verb,
    Preposition: _preposition,
    Predicate: _predicate,
}


def english_rules() -> dict[tuple, list[Rule]]:
    """The rule table of the English grammar: every nonterminal reachable from `Sentence()`."""
    rules: dict[tuple, list[Rule]] = {}
    queue: deque = deque([Sentence()])
    while queue:
        symbol = queue.popleft()
        if symbol in rules:
            continue
        rules[symbol] = RULES[type(symbol)](symbol)
        for _, rhs in rules[symbol]:
            queue.extend(s for s in rhs if not isinstance(s, str) and s not in rules)
    return rules


@lru_cache(maxsize=1)
def default_grammar() -> Grammar:
    """The English grammar (one shared instance: its state cache makes generation fast)."""
    return Grammar(english_rules(), start=Sentence())

"""The embedded default corpus: a generated English-like language whose true perplexity is known.

A user with no network still gets a meaningful experiment, and every experiment gets a ruler: the
oracle perplexity, i.e. the perplexity of the process that generated the text. No model can beat it
on average, so "how far above the oracle" is an absolute measure of what a model failed to learn.

The language is a probabilistic context-free grammar run as a stack machine (an LL(1) pushdown
automaton). The machine state is the stack of symbols still to be expanded; the next-token
distribution is read off by expanding the leftmost nonterminal until terminals appear. The grammar
is *unambiguous token by token*: from any state, each token is produced by exactly one path, so
the state after a token is a function of the text so far and the probability of every token given
its whole sentence prefix is exact. The same `Grammar` samples and re-scores, so the recorded
oracle NLLs and the text cannot disagree.

Sentences are independent draws, so the oracle NLL of a token depends only on its own sentence;
"<eos>" ends every sentence and is scored like a word (here with probability 1: the sentence-final
"." or "?" already announces the end).

The English grammar is built so that a fixed window misses information a model with memory can
use: the subject head noun decides the main verb's number (agreement) and the verb's semantic class
(which in turn decides the object's class) across prepositional phrases and relative clauses whose
own nouns act as attractors; a wh-word at the start of a question decides, many tokens later,
which verbs are possible and that the object is missing; and the first word alone decides whether
the sentence ends in "." or "?".
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import deque
from collections.abc import Hashable, Iterator, Mapping, Sequence
from functools import lru_cache

import datasets

EOS = "<eos>"

Symbol = Hashable  # a terminal is a str that is not a key of the rule table; anything else a key
Rule = tuple[float, tuple[Symbol, ...]]
State = tuple[Symbol, ...]  # the stack of symbols still to expand, top (leftmost) first

# Bump when the generation code changes in a way the rule table does not show (e.g. how a token
# is drawn from a distribution): it is part of the cache fingerprint of generated splits.
GENERATOR_VERSION = 1


class Grammar:
    """A PCFG run as an unambiguous stack machine.

    `rules` maps each nonterminal to its productions `[(probability, right-hand side), ...]`;
    every other symbol is a terminal (a token). The machine starts from the stack
    `(start, "<eos>")`, so "<eos>" is emitted (and scored) after the start symbol's yield, and the
    state after "<eos>" is the empty stack.

    The next-token distribution of a state is found by expanding the top of the stack (recursively,
    through epsilon productions) until a terminal is on top; the product of the production
    probabilities along each path is that path's probability. If one token can be reached by two
    paths that leave different stacks, the text would not determine the state, so we refuse the
    grammar (ValueError) instead of silently computing a wrong oracle.
    """

    def __init__(self, rules: Mapping[Symbol, Sequence[Rule]], start: Symbol = "S"):
        self.rules: dict[Symbol, tuple[Rule, ...]] = {}
        for lhs, productions in rules.items():
            cleaned = tuple((float(p), tuple(rhs)) for p, rhs in productions if p > 0)
            total = math.fsum(p for p, _ in cleaned)
            if not cleaned or abs(total - 1.0) > 1e-12:
                raise ValueError(f"productions of {lhs!r} sum to {total}, not 1")
            self.rules[lhs] = cleaned
        if start not in self.rules:
            raise ValueError(f"start symbol {start!r} has no productions")
        self.start = start
        # state -> (tokens, cumulative probabilities, {token: (probability, next state)})
        self._cache: dict[State, tuple[tuple[str, ...], tuple[float, ...], dict]] = {}

    # -- the state machine -------------------------------------------------------------------

    def initial_state(self) -> State:
        return (self.start, EOS)

    def is_final(self, state: State) -> bool:
        return len(state) == 0

    def distribution(self, state: State) -> dict[str, float]:
        """Next-token probabilities in `state` (a fresh dict, in a fixed order; sums to one)."""
        return {token: p for token, (p, _) in self._transitions(state)[2].items()}

    def advance(self, state: State, token: str) -> State:
        step = self._transitions(state)[2].get(token)
        if step is None:
            raise ValueError(f"token {token!r} has probability 0 in this state")
        return step[1]

    def _transitions(self, state: State):
        cached = self._cache.get(state)
        if cached is not None:
            return cached
        if not state:
            raise ValueError("the sentence is complete: no token can follow <eos>")
        paths: list[tuple[str, float, State]] = []
        self._expand(state, 1.0, paths, budget=0)
        steps: dict[str, tuple[float, State]] = {}
        for token, p, next_state in paths:
            if token in steps:
                if steps[token][1] != next_state:
                    raise ValueError(f"ambiguous grammar: {token!r} reachable by two paths")
                p += steps[token][0]  # two rule paths to the same stack: one event
            steps[token] = (p, next_state)
        tokens = tuple(steps)
        cumulative, running = [], 0.0
        for token in tokens:
            running += steps[token][0]
            cumulative.append(running)
        cached = (tokens, tuple(cumulative), steps)
        self._cache[state] = cached
        return cached

    def _expand(self, stack: State, p: float, out: list, budget: int) -> None:
        top = stack[0]
        productions = self.rules.get(top)
        if productions is None:  # a terminal: this path emits it
            out.append((top, p, stack[1:]))
            return
        if budget > 100:
            raise ValueError(f"left recursion or an epsilon cycle at {top!r}")
        rest = stack[1:]
        for q, rhs in productions:
            self._expand(rhs + rest, p * q, out, budget + 1)

    # -- sentences -------------------------------------------------------------------------------

    def sample_sentence(self, rng) -> tuple[list[str], list[float]]:
        """Draw one sentence. `rng` is anything with `.random() -> float in [0, 1)`.

        Returns the words (without "<eos>") and the natural-log NLL of each word and of the
        final "<eos>" (so len(nlls) == len(words) + 1). Only `random()`, IEEE additions and
        multiplications decide the text, so a seeded `random.Random` gives the same text on any
        machine.
        """
        state = self.initial_state()
        words: list[str] = []
        nlls: list[float] = []
        while state:
            tokens, cumulative, steps = self._transitions(state)
            index = min(bisect.bisect_right(cumulative, rng.random()), len(tokens) - 1)
            token = tokens[index]
            p, state = steps[token]
            nlls.append(-math.log(p))
            if token != EOS:
                words.append(token)
        return words, nlls

    def score(self, words: Sequence[str]) -> list[float]:
        """Exact NLL (nats) of each word and of the final "<eos>" of one sentence.

        Raises ValueError if the grammar cannot produce the sentence.
        """
        state = self.initial_state()
        nlls = []
        for token in [*words, EOS]:
            step = self._transitions(state)[2].get(token)
            if step is None:
                raise ValueError(f"the grammar cannot produce {' '.join(words)!r} (at {token!r})")
            p, state = step
            nlls.append(-math.log(p))
        if state:
            raise ValueError(f"{' '.join(words)!r} ends before the grammar allows it")
        return nlls

    # -- whole-grammar views ---------------------------------------------------------------------

    def vocabulary(self) -> list[str]:
        """Every token the grammar can emit (including "<eos>"), sorted.

        Found by reachability over the rule table: every production here has positive probability
        and every nonterminal derives some string, so each terminal in a reachable production is
        emitted with positive probability.
        """
        seen, tokens, queue = {self.start}, {EOS}, deque([self.start])
        while queue:
            for _, rhs in self.rules[queue.popleft()]:
                for symbol in rhs:
                    if symbol not in self.rules:
                        tokens.add(symbol)
                    elif symbol not in seen:
                        seen.add(symbol)
                        queue.append(symbol)
        return sorted(tokens)

    def reachable_states(self, limit: int = 1_000_000) -> Iterator[State]:
        """Breadth-first walk over every state reachable from the initial state (for checks)."""
        seen, queue = {self.initial_state()}, deque([self.initial_state()])
        while queue:
            state = queue.popleft()
            yield state
            if not state:
                continue
            for _, next_state in self._transitions(state)[2].values():
                if next_state not in seen:
                    if len(seen) >= limit:
                        raise ValueError(f"more than {limit} reachable states")
                    seen.add(next_state)
                    queue.append(next_state)

    def fingerprint(self) -> str:
        """A digest of the rule table (symbols, order and exact probabilities).

        Used as the cache key of generated splits, so any change to the grammar regenerates them.
        """
        digest = hashlib.sha256(f"v{GENERATOR_VERSION};start={self.start!r};".encode())
        for lhs, productions in self.rules.items():
            digest.update(repr((lhs, productions)).encode())
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The English grammar. Latent choices are always made at the token that reveals them (a noun
# reveals its class and number, a determiner may reveal the number, a quality adjective the
# class), which keeps the grammar unambiguous token by token. Nonterminals are tuples
# (name, *features) of strings, ints and tuples (never sets: their iteration order would depend
# on the hash seed).
#
# The lexicon is deliberately regular: words of one category are interchangeable (uniform
# choice), each quality adjective and each verb belongs to one class of subject, so a model that
# groups words into classes and tracks a few features (sentence type, subject class and number,
# what is missing) can reach the oracle from 200k tokens, while a model that sees only the last
# few words cannot.
# ---------------------------------------------------------------------------------------------

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

# Determiners: word -> (number it forces, weight). "any" leaves the number to the noun; "a"
# becomes "an" before a vowel.
DETERMINERS = {
    "the": ("any", 8.0), "my": ("any", 1.0), "our": ("any", 0.6), "a": ("sg", 3.0),
    "this": ("sg", 1.0), "every": ("sg", 0.8), "these": ("pl", 1.0), "some": ("pl", 1.2),
    "many": ("pl", 0.6), "two": ("pl", 0.6),
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

# Verbs: (3rd person singular, bare/plural, subject class, frame, object classes, weight).
# Frames: "intr" (nothing follows), "obj" (an object noun phrase of the object classes),
# "loc" (a preposition and a place). A singular subject takes the first form.
VERBS = [
    ("sleeps", "sleep", "animal", "intr", (), 1.0),
    ("runs", "run", "animal", "intr", (), 1.0),
    ("jumps", "jump", "animal", "intr", (), 1.0),
    ("swims", "swim", "animal", "intr", (), 1.0),
    ("eats", "eat", "animal", "obj", ("food",), 2.0),
    ("chases", "chase", "animal", "obj", ("animal",), 2.0),
    ("bites", "bite", "animal", "obj", ("person",), 1.5),
    ("smells", "smell", "animal", "obj", ("thing",), 1.5),
    ("sits", "sit", "animal", "loc", (), 1.5),
    ("hides", "hide", "animal", "loc", (), 1.5),
    ("sings", "sing", "person", "intr", (), 1.0),
    ("laughs", "laugh", "person", "intr", (), 1.0),
    ("dances", "dance", "person", "intr", (), 1.0),
    ("cooks", "cook", "person", "obj", ("food",), 1.5),
    ("buys", "buy", "person", "obj", ("thing",), 1.5),
    ("reads", "read", "person", "obj", ("thing",), 1.0),
    ("feeds", "feed", "person", "obj", ("animal",), 1.5),
    ("helps", "help", "person", "obj", ("person",), 1.5),
    ("visits", "visit", "person", "obj", ("place",), 1.5),
    ("drives", "drive", "person", "obj", ("machine",), 1.5),
    ("lives", "live", "person", "loc", (), 1.5),
    ("waits", "wait", "person", "loc", (), 1.0),
    ("stops", "stop", "machine", "intr", (), 1.0),
    ("moves", "move", "machine", "intr", (), 1.0),
    ("crashes", "crash", "machine", "intr", (), 1.0),
    ("carries", "carry", "machine", "obj", ("thing",), 2.0),
    ("pulls", "pull", "machine", "obj", ("machine",), 1.5),
    ("hits", "hit", "machine", "obj", ("animal",), 1.5),
    ("passes", "pass", "machine", "obj", ("person",), 1.5),
    ("stands", "stand", "machine", "loc", (), 1.5),
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
QUESTION_AUX = {"does": ("sg", 3.0), "do": ("pl", 2.0), "can": ("any", 2.0), "will": ("any", 1.5),
                "did": ("any", 1.5)}  # fmt: skip

NONE = ("none",)  # continuation key of a noun phrase whose class nothing downstream depends on


def _normalised(weighted: list[tuple[float, tuple]]) -> list[Rule]:
    total = math.fsum(w for w, _ in weighted)
    return [(w / total, rhs) for w, rhs in weighted if w > 0]


def _restrict(classes: tuple[str, ...], allowed: Sequence[str]) -> tuple[str, ...]:
    return tuple(c for c in classes if c in allowed)


def _verbs(subject: str) -> list[tuple]:
    return [v for v in VERBS if v[2] == subject]


def _gap_verbs(subject: str, gap: tuple[str, ...]) -> list[tuple]:
    """Verbs of `subject` whose object (or place) can be the gap, of a class in `gap`."""
    return [
        v
        for v in _verbs(subject)
        if (v[3] == "obj" and _restrict(v[4], gap)) or (v[3] == "loc" and "place" in gap)
    ]


def _gap_subjects(gap: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in AGENTS if _gap_verbs(c, gap))


def _onset(word: str) -> str:
    return "vowel" if word[0] in "aeio" else "consonant"


def _noun_phrase_body(symbol: tuple) -> list[Rule]:
    """Productions of ("NPB", ...) before the a/an restriction: an adjective or the noun.

    stage 0: right after the determiner; 1: after a size adjective; 2: after a quality one.
    """
    _, classes, number, cont, stage, _ = symbol
    class_total = math.fsum(CLASS_WEIGHT[c] for c in classes)
    p_size = P_SIZE_ADJECTIVE if stage == 0 else 0.0
    p_quality = (1 - p_size) * P_QUALITY_ADJECTIVE if stage < 2 else 0.0
    p_noun = 1 - p_size - p_quality
    out = []
    for word in SIZE_ADJECTIVES if p_size else ():
        rhs = (word, ("NPB", classes, number, cont, 1, ""))
        out.append((p_size / len(SIZE_ADJECTIVES), rhs))
    for c in classes if p_quality else ():
        for word in QUALITY_ADJECTIVES[c]:  # the class is chosen with its prior weight
            p = p_quality * CLASS_WEIGHT[c] / class_total / len(QUALITY_ADJECTIVES[c])
            out.append((p, (word, ("NPB", (c,), number, cont, 2, ""))))
    numbers = {"sg": (("sg", 1.0),), "pl": (("pl", 1.0),)}.get(
        number, (("sg", 1 - PLURAL_PROB), ("pl", PLURAL_PROB))
    )
    role = "subject" if cont[0] in ("decl", "yn", "wh") else "other"
    for c in classes:
        forms = NOUNS[c]
        for num, p_num in numbers:
            for sg, pl in forms:
                p = p_noun * CLASS_WEIGHT[c] / class_total * p_num / len(forms)
                after = (("POST", c, num, role),)
                if cont != NONE:
                    after += (("K", cont, c, num),)
                out.append((p, (sg if num == "sg" else pl, *after)))
    return out


def _productions(symbol: tuple) -> list[Rule]:
    """Productions of one (feature-carrying) nonterminal of the English grammar."""
    name, *f = symbol
    if name == "S":  # the first word decides the sentence type (and its final "." or "?")
        aux_total = math.fsum(w for _, w in QUESTION_AUX.values())
        out = [(SENTENCE_WEIGHTS["decl"], (("NP", CLASSES, "any", ("decl",)),))]
        for aux, (number, w) in QUESTION_AUX.items():
            subject = ("NP", AGENTS, number, ("yn",))
            out.append((SENTENCE_WEIGHTS["yn"] * w / aux_total, (aux, subject)))
        out.append((SENTENCE_WEIGHTS["what"], ("what", ("WHAUX", INANIMATE))))
        out.append((SENTENCE_WEIGHTS["who"], ("who", ("WHAUX", ANIMATE))))
        return _normalised(out)
    if name == "WHAUX":  # wh-word said; the subject must have a verb that can leave that gap
        (gap,) = f
        subjects = _gap_subjects(gap)
        return _normalised(
            [
                (w, (aux, ("NP", subjects, number, ("wh", gap))))
                for aux, (number, w) in QUESTION_AUX.items()
            ]
        )
    if name == "NP":  # determiner: may fix the number
        classes, number, cont = f
        out = []
        for det, (det_number, w) in DETERMINERS.items():
            if number != "any" and det_number not in ("any", number):
                continue
            new_number = number if det_number == "any" else det_number
            body = ("NPB", classes, new_number, cont, 0, "")
            if det != "a":
                out.append((w, (det, body)))
                continue
            # The indefinite article takes its form from the next word: "a" or "an" is chosen with
            # the probability that the next word starts with a consonant or a vowel.
            for article, onset in (("a", "consonant"), ("an", "vowel")):
                mass = math.fsum(p for p, rhs in _noun_phrase_body(body) if _onset(rhs[0]) == onset)
                out.append((w * mass, (article, body[:-1] + (onset,))))
        return _normalised(out)
    if name == "NPB":  # adjectives, then the noun that fixes class and number
        productions = _noun_phrase_body(symbol)
        onset = f[-1]
        if onset:  # right after "a"/"an": keep the words with that onset, renormalised
            productions = _normalised([(p, r) for p, r in productions if _onset(r[0]) == onset])
        return productions
    if name == "POST":  # post-nominal modifier of a noun of class c and number n
        c, n, role = f
        w_none, w_pp, w_with, w_rc = MODIFIER_WEIGHTS[role]
        out = [(w_none, ())]
        for prep in PREPOSITIONS:
            out.append((w_pp / len(PREPOSITIONS), (prep, ("NP", ("place",), "any", NONE))))
        if c != "food":
            out.append((w_with, ("with", ("NP", ("thing",), "any", NONE))))
        out.append((w_rc, ("that", ("VP", c, n, "fin"))))
        return _normalised(out)
    if name == "K":  # the rest of the clause, which needs its subject's class and number
        cont, c, n = f
        kind = cont[0]
        if kind == "decl":
            return [(1.0, (("VP", c, n, "fin"), "."))]
        if kind == "yn":
            return [(1.0, (("VP", c, n, "bare"), "?"))]
        if kind == "wh":
            return [(1.0, (("VGAP", c, cont[1]), "?"))]
        raise ValueError(f"unknown continuation {cont!r}")
    if name == "VP":
        c, n, form = f
        out = []
        for sg, bare, _, frame, objects, w in _verbs(c):
            word = sg if (form == "fin" and n == "sg") else bare
            if frame == "intr":
                out.append((w, (word,)))
            elif frame == "obj":
                out.append((w, (word, ("NP", objects, "any", NONE))))
            else:
                out.append((w, (word, ("PREP",), ("NP", ("place",), "any", NONE))))
        if form == "fin":  # questions are built with an auxiliary, which "is" cannot follow
            out.append((COPULA_WEIGHT, ("is" if n == "sg" else "are", ("PRED", c))))
        return _normalised(out)
    if name == "VGAP":  # after "what/who + aux + subject": a bare verb whose object is the gap
        c, gap = f
        out = []
        for _, bare, _, frame, _, w in _gap_verbs(c, gap):
            out.append((w, (bare, ("PREP",)) if frame == "loc" else (bare,)))
        return _normalised(out)
    if name == "PREP":
        return [(1 / len(PREPOSITIONS), (p,)) for p in PREPOSITIONS]
    if name == "PRED":
        (c,) = f
        predicates = QUALITY_ADJECTIVES[c] + SIZE_ADJECTIVES
        return [(1 / len(predicates), (word,)) for word in predicates]
    raise ValueError(f"unknown nonterminal {symbol!r}")


def english_rules() -> dict[tuple, list[Rule]]:
    """The rule table of the English grammar: every nonterminal reachable from ("S",)."""
    rules: dict[tuple, list[Rule]] = {}
    queue = deque([("S",)])
    while queue:
        symbol = queue.popleft()
        if symbol in rules:
            continue
        rules[symbol] = _productions(symbol)
        for _, rhs in rules[symbol]:
            queue.extend(s for s in rhs if isinstance(s, tuple) and s not in rules)
    return rules


@lru_cache(maxsize=1)
def default_grammar() -> Grammar:
    """The English grammar (one shared instance: its state cache makes generation fast)."""
    return Grammar(english_rules(), start=("S",))


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")


def split_seed(seed: int, split: str) -> int:
    """Independent sampling seed per split, derived by hashing (seed, split).

    Hashing rather than seed+1, seed+2 keeps seed 0's validation split from being seed 1's train.
    """
    digest = hashlib.sha256(f"lm-experiments/synthetic/{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate_split(grammar: Grammar, seed: int, num_tokens: int) -> Iterator[dict]:
    """Sentences `{"text", "oracle_nll"}` until at least `num_tokens` tokens (words + <eos>)."""
    rng = random.Random(seed)
    emitted = 0
    while emitted < num_tokens:
        words, nlls = grammar.sample_sentence(rng)
        emitted += len(nlls)
        yield {"text": " ".join(words), "oracle_nll": nlls}


def _generate_default_split(seed: int, num_tokens: int, grammar_fingerprint: str) -> Iterator[dict]:
    """`generate_split` over the default grammar, with arguments `datasets` can fingerprint.

    `datasets` hashes a module-level generator by its name only, so the grammar's own fingerprint
    travels in gen_kwargs: editing the grammar gives a new cache entry instead of stale splits.
    """
    grammar = default_grammar()
    if grammar.fingerprint() != grammar_fingerprint:
        raise ValueError("grammar changed between fingerprinting and generation")
    yield from generate_split(grammar, seed, num_tokens)


FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "oracle_nll": datasets.List(datasets.Value("float64"))}
)


def build_synthetic_splits(
    seed: int = 0,
    train_tokens: int = 200_000,
    valid_tokens: int = 20_000,
    test_tokens: int = 20_000,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """The default corpus as a DatasetDict (train/validation/test; columns text, oracle_nll).

    Built with `Dataset.from_generator`, so it is cached under `cache_dir` like any corpus; the
    cache key covers the seed, the sizes and the grammar's fingerprint.
    """
    fingerprint = default_grammar().fingerprint()
    sizes = {"train": train_tokens, "validation": valid_tokens, "test": test_tokens}
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_generator(
                _generate_default_split,
                features=FEATURES,
                cache_dir=cache_dir,
                split=split,
                gen_kwargs={
                    "seed": split_seed(seed, split),
                    "num_tokens": sizes[split],
                    "grammar_fingerprint": fingerprint,
                },
            )
            for split in SPLITS
        }
    )


def oracle_perplexity(dataset_split) -> float:
    """exp(total oracle NLL / number of tokens), tokens = words + one <eos> per sentence."""
    total, count = 0.0, 0
    for nlls in dataset_split["oracle_nll"]:
        total += math.fsum(nlls)
        count += len(nlls)
    return math.exp(total / count)

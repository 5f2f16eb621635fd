"""The grammar engine: a PCFG run as an unambiguous stack machine, with an exact per-token oracle.

The machine state is the stack of symbols still to be expanded; the next-token distribution is
read off by expanding the leftmost nonterminal until terminals appear. The grammar must be
*unambiguous token by token*: from any state, each token is produced by exactly one path, so the
state after a token is a function of the text so far and the probability of every token given
its whole sentence prefix is exact. The same `Grammar` samples and re-scores, so the recorded
oracle NLLs and the text cannot disagree; `derivation` gives the path itself, from which the
English grammar reads each token's word class and what decided it (`annotations.py`).

Sentences are independent draws, so the oracle NLL of a token depends only on its own sentence;
"<eos>" ends every sentence and is scored like a word.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import deque
from collections.abc import Hashable, Iterator, Mapping, Sequence

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
        self._derivations: dict[State, dict[str, tuple]] = {}  # state -> {token: path}, lazily

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
        paths: list[tuple[str, float, State, tuple]] = []
        self._expand(state, 1.0, paths, budget=0)
        steps: dict[str, tuple[float, State]] = {}
        for token, p, next_state, _ in paths:
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

    def _expand(self, stack: State, p: float, out: list, budget: int, path: tuple = ()) -> None:
        """Append (token, probability, next state, path) for every path from `stack` to a token;
        `path` is the productions (lhs, rhs) expanded on the way, leftmost first."""
        top = stack[0]
        productions = self.rules.get(top)
        if productions is None:  # a terminal: this path emits it
            out.append((top, p, stack[1:], path))
            return
        if budget > 100:
            raise ValueError(f"left recursion or an epsilon cycle at {top!r}")
        rest = stack[1:]
        for q, rhs in productions:
            self._expand(rhs + rest, p * q, out, budget + 1, (*path, (top, rhs)))

    def derivation(self, state: State, token: str) -> tuple[tuple[Symbol, tuple[Symbol, ...]], ...]:
        """The productions (lhs, rhs) expanded, leftmost first, when `state` emits `token`.

        Empty when `token` is already on top of the stack. The path is unique up to paths that
        leave the same stack (one event, see `_transitions`); those give the first.
        """
        paths = self._derivations.get(state)
        if paths is None:
            found: list = []
            self._expand(state, 1.0, found, budget=0)
            paths = {}
            for emitted, _, _, path in found:
                paths.setdefault(emitted, path)
            self._derivations[state] = paths
        if token not in paths:
            raise ValueError(f"token {token!r} has probability 0 in this state")
        return paths[token]

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
        Symbols enter through their `repr`: the English grammar's named nonterminals print as the
        plain tuples `(kind, *features)` they were before they had names, so the fingerprint of
        the default grammar survived that refactoring unchanged (and proves its table did).
        """
        digest = hashlib.sha256(f"v{GENERATOR_VERSION};start={self.start!r};".encode())
        for lhs, productions in self.rules.items():
            digest.update(repr((lhs, productions)).encode())
        return digest.hexdigest()[:16]

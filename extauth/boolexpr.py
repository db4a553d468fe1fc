"""`booleanExpr` over named `configs[]` entries, as in Solo's AuthConfig: `a || (b && !c)`.

A tiny recursive-descent parser: identifiers (`[A-Za-z0-9_.-]+`), `!`, `&&`, `||` and
parentheses, with the usual precedence (`!` over `&&` over `||`). Parsed once when the
AuthConfig is validated (`resources`) and again when it is compiled (`building`);
evaluation, a walk over a few nested tuples, is `deciding.evaluate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Deeper than this (`!` or parentheses inside one another, or a chain of operators) is
# refused: parsing and evaluation recurse once per level, and no real expression needs it.
MAX_DEPTH = 64

_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|([A-Za-z0-9_.\-]+))")

# ("name", str) | ("not", node) | ("and", node, node) | ("or", node, node)
Node = tuple[object, ...]


class ExprError(ValueError):
    pass


@dataclass(frozen=True)
class BoolExpr:
    source: str
    tree: Node

    @property
    def names(self) -> frozenset[str]:
        found: set[str] = set()
        stack = [self.tree]
        while stack:
            node = stack.pop()
            if node[0] == "name":
                found.add(str(node[1]))
            else:
                stack.extend(n for n in node[1:] if isinstance(n, tuple))
        return frozenset(found)


def parse(source: str) -> BoolExpr:
    tokens = _tokenize(source)
    parser = _Parser(tokens, source)
    tree = parser.expression()
    if parser.position != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.position]!r} in booleanExpr {source!r}")
    _check_depth(tree)
    return BoolExpr(source, tree)


def _too_deep() -> ExprError:
    return ExprError(f"booleanExpr is nested more than {MAX_DEPTH} levels deep")


def _check_depth(tree: Node) -> None:
    """Chains (`a && b && c ...`) nest one level per operator; evaluation recurses."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        stack.extend((n, depth + 1) for n in node[1:] if isinstance(n, tuple))


def _tokenize(source: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    source = source.rstrip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            raise ExprError(f"cannot read booleanExpr {source!r} at position {position}")
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
    if not tokens:
        raise ExprError("booleanExpr is empty")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], source: str) -> None:
        self.tokens = tokens
        self.source = source
        self.position = 0
        self.depth = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ExprError(f"booleanExpr {self.source!r} ends too early")
        self.position += 1
        return token

    def expression(self) -> Node:
        return self._chain("||", "or", self._conjunction)

    def _conjunction(self) -> Node:
        return self._chain("&&", "and", self._unary)

    def _chain(self, symbol: str, operator: str, operand: Callable[[], Node]) -> Node:
        """`a op b op c` as ((a op b) op c): both operators associate to the left and
        differ only in their symbol and in what binds tighter (`operand`)."""
        node = operand()
        while self._peek() == symbol:
            self._take()
            node = (operator, node, operand())
        return node

    def _unary(self) -> Node:
        symbol = self._take()
        if symbol in ("!", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _too_deep()
            node: Node
            if symbol == "!":
                node = ("not", self._unary())
            else:
                node = self.expression()
                if self._peek() != ")":
                    raise ExprError(f"missing ')' in booleanExpr {self.source!r}")
                self._take()
            self.depth -= 1
            return node
        if symbol in ("&&", "||", ")"):
            raise ExprError(f"unexpected {symbol!r} in booleanExpr {self.source!r}")
        return ("name", symbol)

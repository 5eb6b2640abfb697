"""The permissions question of `POST /api/keys/verify`: a small and/or expression over
permission names, checked against the permissions a key holds (docs/api-keys.md).

Grammar (keywords are case-insensitive; `and` binds tighter than `or`):

    expression := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := NAME | "(" expression ")"
    NAME       := [A-Za-z0-9_.:*-]+

At most `MAX_LENGTH` characters and `MAX_DEPTH` nested parentheses. Anything else is the
caller's mistake: `InvalidPermissionsExpression` (422), never a key outcome.

Wildcards live in the key's permissions only: `*` grants every name, and a permission ending
in `.*` or `:*` grants every longer name that starts with what comes before the `*`
(`documents.*` grants `documents.read` and `documents.drafts.read`, not `documents`). A `*`
anywhere else is an ordinary character. Names in the expression are matched literally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from authkeep.errors import ValidationFailed

MAX_LENGTH = 1000
MAX_DEPTH = 20
WILDCARD_ENDINGS = (".*", ":*")
_TOKEN = re.compile(r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<name>[A-Za-z0-9_.:*-]+))")
_KEYWORDS = {"and", "or"}


class InvalidPermissionsExpression(ValidationFailed):
    code = "invalid_permissions_expression"
    detail = "permissions is not a valid expression."


@dataclass(frozen=True, slots=True)
class Granted:
    """A key's permissions, split once into exact names and wildcard prefixes."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, permissions: Iterable[str]) -> Granted:
        exact: set[str] = set()
        prefixes: list[str] = []
        for permission in permissions:
            if permission == "*":
                prefixes.append("")
            elif permission.endswith(WILDCARD_ENDINGS):
                prefixes.append(permission[:-1])
            exact.add(permission)
        return cls(frozenset(exact), tuple(prefixes))

    def covers(self, name: str) -> bool:
        if name in self.exact:
            return True
        return any(len(name) > len(p) and name.startswith(p) for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class Require:
    name: str

    def allows(self, granted: Granted) -> bool:
        return granted.covers(self.name)


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Expression, ...]

    def allows(self, granted: Granted) -> bool:
        return all(part.allows(granted) for part in self.parts)


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Expression, ...]

    def allows(self, granted: Granted) -> bool:
        return any(part.allows(granted) for part in self.parts)


Expression = Require | AllOf | AnyOf


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(", ")", "and", "or", "name", "end"
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip() == "":
                break
            at = position + len(text[position:]) - len(text[position:].lstrip())
            raise InvalidPermissionsExpression(f"permissions: unexpected character at {at}.")
        kind = match.lastgroup or "name"
        value = match[kind]
        start = match.start(kind)
        if kind == "open":
            tokens.append(_Token("(", value, start))
        elif kind == "close":
            tokens.append(_Token(")", value, start))
        elif value.lower() in _KEYWORDS:
            tokens.append(_Token(value.lower(), value, start))
        else:
            tokens.append(_Token("name", value, start))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str) -> _Token:
        token = self.peek()
        if token.kind != kind:
            raise self.unexpected(token)
        self.index += 1
        return token

    @staticmethod
    def unexpected(token: _Token) -> InvalidPermissionsExpression:
        what = "end of expression" if token.kind == "end" else f"{token.text!r}"
        return InvalidPermissionsExpression(f"permissions: unexpected {what} at {token.at}.")

    def expression(self, depth: int) -> Expression:
        parts = [self.term(depth)]
        while self.peek().kind == "or":
            self.index += 1
            parts.append(self.term(depth))
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def term(self, depth: int) -> Expression:
        parts = [self.factor(depth)]
        while self.peek().kind == "and":
            self.index += 1
            parts.append(self.factor(depth))
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def factor(self, depth: int) -> Expression:
        token = self.peek()
        if token.kind == "name":
            self.index += 1
            return Require(token.text)
        if token.kind != "(":
            raise self.unexpected(token)
        if depth >= MAX_DEPTH:
            raise InvalidPermissionsExpression(
                f"permissions: more than {MAX_DEPTH} nested parentheses."
            )
        self.index += 1
        inner = self.expression(depth + 1)
        self.take(")")
        return inner


@lru_cache(maxsize=1024)
def parse_permissions(text: str) -> Expression:
    """The expression in `text`, or `InvalidPermissionsExpression`. Results are cached: the same
    few expressions arrive on every verify."""
    if len(text) > MAX_LENGTH:
        raise InvalidPermissionsExpression(f"permissions: longer than {MAX_LENGTH} characters.")
    parser = _Parser(_tokens(text))
    expression = parser.expression(0)
    parser.take("end")
    return expression

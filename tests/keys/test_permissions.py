"""The permissions expression of verify: properties of the parser and of the wildcard rule
(RELIABILITY BI-03 spirit: hypothesis, 0 counter-examples)."""

from __future__ import annotations

from typing import TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authkeep.keys.permissions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Granted,
    InvalidPermissionsExpression,
    parse_permissions,
)

# A leaf is a name; a branch is ("and" | "or", children).
Tree: TypeAlias = "str | tuple[str, list[Tree]]"

names = st.from_regex(r"[A-Za-z0-9_.:-]{1,10}", fullmatch=True).filter(
    lambda name: name.lower() not in {"and", "or"}
)
trees: st.SearchStrategy[Tree] = st.recursive(
    names,
    lambda children: st.tuples(
        st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=4)
    ),
    max_leaves=12,
)
spaces = st.sampled_from([" ", "  ", "\t", " \n "])
keyword_case = st.sampled_from([str.lower, str.upper, str.title])


def leaves(tree: Tree) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    return [name for child in tree[1] for name in leaves(child)]


def holds(tree: Tree, granted: set[str]) -> bool:
    """The meaning of a tree, by definition."""
    if isinstance(tree, str):
        return tree in granted
    operator, children = tree
    results = [holds(child, granted) for child in children]
    return all(results) if operator == "and" else any(results)


def render(tree: Tree, draw: st.DrawFn, top: bool = True) -> str:
    """Text for the tree: every branch in parentheses, keywords in any case, any spacing."""
    if isinstance(tree, str):
        return tree
    operator, children = tree
    joiner = draw(spaces) + draw(keyword_case)(operator) + draw(spaces)
    text = joiner.join(render(child, draw, top=False) for child in children)
    return text if top else "(" + draw(st.sampled_from(["", " "])) + text + ")"


@st.composite
def rendered(draw: st.DrawFn) -> tuple[Tree, str, set[str]]:
    tree = draw(trees)
    granted = set(draw(st.lists(st.sampled_from(leaves(tree)), unique=True)))
    return tree, render(tree, draw), granted


@given(rendered())
@settings(max_examples=400, deadline=None)
def test_a_parsed_expression_means_what_it_says(case: tuple[Tree, str, set[str]]) -> None:
    """Any and/or tree, written with any keyword case and spacing, evaluates like the tree."""
    tree, text, granted = case
    assert parse_permissions(text).allows(Granted.of(granted)) is holds(tree, granted)


@given(names, names, names, st.sets(st.sampled_from(["a", "b", "c"])))
@settings(max_examples=200, deadline=None)
def test_and_binds_tighter_than_or(a: str, b: str, c: str, picked: set[str]) -> None:
    granted = Granted.of({"a": a, "b": b, "c": c}[p] for p in picked)
    for loose, explicit in [
        (f"{a} or {b} and {c}", f"{a} or ({b} and {c})"),
        (f"{a} and {b} or {c}", f"({a} and {b}) or {c}"),
    ]:
        assert parse_permissions(loose).allows(granted) is parse_permissions(explicit).allows(
            granted
        )


tokens = st.sampled_from(["a", "b.c", "and", "OR", "(", ")", " ", "  ", "*", "x:y"])


@given(st.one_of(st.text(max_size=200), st.lists(tokens, max_size=30).map("".join)))
@settings(max_examples=500, deadline=None)
def test_any_text_parses_or_is_refused_as_a_caller_error(text: str) -> None:
    """Arbitrary text (and arbitrary token soup) never raises anything but the 422 error."""
    refusal: InvalidPermissionsExpression | None = None
    try:
        expression = parse_permissions(text)
    except InvalidPermissionsExpression as error:
        refusal = error
    if refusal is not None:
        assert (refusal.status_code, refusal.code) == (422, "invalid_permissions_expression")
    else:
        assert isinstance(expression.allows(Granted.of(["a"])), bool)


def test_nesting_and_length_limits() -> None:
    deepest = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse_permissions(deepest).allows(Granted.of(["a"]))
    with pytest.raises(InvalidPermissionsExpression, match="nested"):
        parse_permissions("(" + deepest + ")")
    longest = ("a" + " or a" * ((MAX_LENGTH - 1) // 5)).ljust(MAX_LENGTH)
    assert len(longest) == MAX_LENGTH
    assert parse_permissions(longest).allows(Granted.of(["a"]))
    with pytest.raises(InvalidPermissionsExpression, match="longer"):
        parse_permissions(longest + " ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a and", "unexpected end of expression at 5"),
        ("a b", "unexpected 'b' at 2"),
        ("(a", "unexpected end of expression at 2"),
        ("a)", "unexpected ')' at 1"),
        ("a & b", "unexpected character at 2"),
        ("", "unexpected end of expression at 0"),
    ],
)
def test_errors_say_where(text: str, message: str) -> None:
    with pytest.raises(InvalidPermissionsExpression) as caught:
        parse_permissions(text)
    assert message in caught.value.detail


segment = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)


@given(st.lists(segment, min_size=1, max_size=3), st.sampled_from([".", ":"]), segment, segment)
@settings(max_examples=300, deadline=None)
def test_wildcards_grant_longer_names_only(
    parts: list[str], separator: str, child: str, other: str
) -> None:
    """`<p>.*` (or `<p>:*`) grants every longer name under `<p>.`, at any depth; not `<p>`
    itself, not a sibling that only shares a text prefix; `*` grants everything; a `*`
    elsewhere in a permission is an ordinary character."""
    base = separator.join(parts)
    granted = Granted.of([f"{base}{separator}*"])
    assert granted.covers(f"{base}{separator}{child}")
    assert granted.covers(f"{base}{separator}{child}{separator}{other}")
    assert not granted.covers(base)
    assert not granted.covers(f"{base}{child}")
    assert Granted.of(["*"]).covers(f"{base}{separator}{child}")
    literal = Granted.of([f"{base}*{child}"])
    assert literal.covers(f"{base}*{child}")
    assert not literal.covers(f"{base}x{child}")

"""Static rules over src/authkeep for how secrets are made and compared (AST, no imports run).

CHK-CR-02 (ASVS5 11.2.4): a secret is compared in constant time (`hmac.compare_digest`,
`core.security.same_secret`) or looked up by its digest in the database — never with `==` or
`!=` in Python. Every `==`/`!=` whose side is a name, attribute or subscript named like a secret
is a finding, unless one of the documented exclusions below says why it is not a secret.

CHK-CR-01 (ASVS5 11.5.1): secrets come from `secrets` or `os.urandom`. The `random` module is
allowed only where `RANDOM_ALLOWED` says why, and `uuid4()` is never used as a secret (a UUID
has 122 random bits and a public format: ids only).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import authkeep
from authkeep.models import Base
from support.secrets_scan import FIGURES

SRC = Path(authkeep.__file__).parent
SECRET_NAME = re.compile(r"token|secret|signature|csrf|digest|password|hash|code", re.I)
# Mapped classes: `ApiKey.key_hash == digest` builds a SQL WHERE clause, i.e. the lookup by
# digest that CHK-CR-02 names as the other correct way. Their names come from the registry,
# so a plain variable that happens to be capitalised does not get this exclusion.
MODELS = frozenset(mapper.class_.__name__ for mapper in Base.registry.mappers)
# Identifiers that match the pattern but never hold a secret, and why.
NOT_SECRETS = {
    "status_code": "an HTTP status number (`response.status_code != 200`)",
    "returncode": "a process exit status",
}
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
# Files that may import `random`, the only functions they may call on it, and why.
RANDOM_ALLOWED = {
    "plans/webhooks.py": (
        {"uniform"},
        "jitter between webhook retries: spreads load, not a secret",
    ),
}
UUID_SECRET_NAME = re.compile(
    r"token|secret|code|key|password|passwd|nonce|salt|otp|csrf|signature", re.I
)


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # Alembic scripts: DDL only
        yield str(path.relative_to(SRC)), ast.parse(path.read_text(), str(path))


def identifier(node: ast.expr) -> str | None:
    """The name a comparison side goes by: `token`, `x.token_hash`, `body["token"]`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        return identifier(node.value)
    return None  # literals and calls (`len(signature)`: a length, not the secret)


def is_column(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in MODELS
    )


def exclusion(side: ast.expr, name: str, other: ast.expr) -> str | None:
    """Why this side is not a secret, or None (a finding)."""
    if is_column(side) or is_column(other):
        return "SQL lookup by digest"  # the whole comparison is a WHERE clause
    if name in NOT_SECRETS:
        return name
    if name.isupper():
        return "module constant (a size or a fixed name, e.g. SIGNATURE_BYTES)"
    if (
        name == "code"
        and isinstance(other, ast.Constant)
        and isinstance(other.value, str)
        and ERROR_CODE.match(other.value)
    ):
        return "an error's stable public code (`error.code == 'internal_error'`)"
    return None


@dataclass
class ComparisonScan:
    comparisons: int = 0
    candidates: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


def scan_comparisons(trees: Iterable[tuple[str, ast.AST]]) -> ComparisonScan:
    scan = ComparisonScan()
    for where, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            for index, op in enumerate(node.ops):
                if not isinstance(op, ast.Eq | ast.NotEq):
                    continue
                scan.comparisons += 1
                pair = (sides[index], sides[index + 1])
                suspects = []
                for side, other in (pair, pair[::-1]):
                    name = identifier(side)
                    if name is not None and SECRET_NAME.search(name):
                        suspects.append(exclusion(side, name, other))
                if not suspects:
                    continue
                scan.candidates += 1
                reasons = [reason for reason in suspects if reason is not None]
                if len(reasons) < len(suspects):
                    scan.findings.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
                else:
                    for reason in set(reasons):
                        scan.excluded[reason] = scan.excluded.get(reason, 0) + 1
    return scan


def test_secrets_are_never_compared_with_eq_CHK_CR_02() -> None:
    scan = scan_comparisons(sources())
    FIGURES.append(
        f"CHK-CR-02 AST: {scan.comparisons} ==/!= comparisons scanned, {scan.candidates} name a "
        f"secret-like identifier, {sum(scan.excluded.values())} excluded "
        f"({'; '.join(f'{n} {r}' for r, n in sorted(scan.excluded.items()))}), "
        f"{len(scan.findings)} findings"
    )
    assert scan.comparisons > 100, "the scan found almost no comparisons: is SRC right?"
    assert scan.findings == []


def snippets(*lines: str) -> list[tuple[str, ast.AST]]:
    return [(f"snippet {i}", ast.parse(line)) for i, line in enumerate(lines)]


def test_the_rules_catch_what_they_are_for() -> None:
    """The detectors themselves, on snippets: what they exist to catch is caught, and the
    documented exclusions are not."""
    caught = snippets(
        "ok = presented == token",
        "ok = body['csrf'] != expected",
        "ok = stored.password_hash == candidate",
        "ok = signature == computed",
        "ok = code == expected",
    )
    excluded = snippets(
        "ok = response.status_code != 200",
        "q = select(Session).where(Session.token_hash == digest)",
        "ok = len(signature) != SIGNATURE_BYTES",
        "ok = error.code == 'internal_error'",
    )
    assert len(scan_comparisons(caught).findings) == len(caught)
    assert scan_comparisons(excluded).findings == []
    as_secrets = snippets(
        "token = str(uuid.uuid4())",
        "make(secret=uuid4().hex)",
        "row = {'api_key': uuid.uuid4()}",
        "def new_code():\n    return uuid.uuid4().hex",
    )
    as_ids = snippets(
        "row = {'id': uuid.uuid4(), 'token_hash': token_digest(token)}",
        "id: Mapped[uuid.UUID] = mapped_column(Uuid, default=uuid.uuid4)",
        "event = Event(id=uuid.uuid4())",
    )
    assert len(uuid4_uses(as_secrets)[1]) == len(as_secrets)
    assert uuid4_uses(as_ids) == (len(as_ids), [])


def random_module_uses() -> tuple[list[str], list[str]]:
    """(allowed uses, findings) of the `random` module in src."""
    allowed, findings = [], []
    for where, tree in sources():
        imports = [
            node
            for node in ast.walk(tree)
            if (isinstance(node, ast.Import) and any(a.name == "random" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and node.module == "random")
        ]
        if not imports:
            continue
        functions, _ = RANDOM_ALLOWED.get(where, (set(), ""))
        if any(isinstance(node, ast.ImportFrom) for node in imports):
            findings.append(f"{where}: `from random import …`")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id != "random":
                    continue
                use = f"{where}:{node.lineno}: random.{node.attr}"
                (allowed if node.attr in functions else findings).append(use)
    return allowed, findings


def uuid4_uses(trees: Iterable[tuple[str, ast.AST]]) -> tuple[int, list[str]]:
    """(uuid4 references, findings): a reference whose value is named like a secret — the
    assignment target, keyword, dict key or function it ends up in."""
    count, findings = 0, []

    def visit(node: ast.AST, names: tuple[str, ...], where: str) -> None:
        nonlocal count
        if (isinstance(node, ast.Name) and node.id == "uuid4") or (
            isinstance(node, ast.Attribute) and node.attr == "uuid4"
        ):
            count += 1
            if any(UUID_SECRET_NAME.search(name) for name in names):
                findings.append(f"{where}:{node.lineno}: uuid4 as {names[-1]}")
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names = (*names, node.name)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = [n for t in targets if (n := identifier(t)) is not None]
            names = (*names, *found)
        elif isinstance(node, ast.keyword) and node.arg:
            names = (*names, node.arg)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                label = key.value if isinstance(key, ast.Constant) else None
                visit(value, (*names, str(label)) if label else names, where)
                if key is not None:
                    visit(key, names, where)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, names, where)

    for where, tree in trees:
        visit(tree, (), where)
    return count, findings


def test_secrets_come_from_a_csprng_CHK_CR_01() -> None:
    allowed, random_findings = random_module_uses()
    uuid_count, uuid_findings = uuid4_uses(sources())
    FIGURES.append(
        f"CHK-CR-01 AST: `random` used {len(allowed)} times, all allowed "
        f"({', '.join(f'{f}: {why}' for f, (_, why) in RANDOM_ALLOWED.items())}), "
        f"{len(random_findings)} findings; {uuid_count} uuid4 references, "
        f"{len(uuid_findings)} used as a secret"
    )
    assert random_findings == []
    assert uuid_findings == []

"""The layers hold: no import goes upward, no modules import each other in a cycle, no source
file grows past a reader's reach, and no app names a higher one by string.

Read from the source with `ast`, so a function-local import, one under TYPE_CHECKING or a dotted
path in a string (import_string, a task name, apps.get_model) counts like a top-level import.
Settings are the one place allowed to name any app: that is where hooks are wired
(portal/settings/, which is the top layer anyway). There is no allowlist.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top: each layer imports only from the layers before it (docs/layers.md). Apps on
# one line share a layer and may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("accounts",),
    ("capacity",),
    ("billing",),
    ("backoffice",),
    ("portal",),
)
MAX_LINES = 600
SKIPPED_DIRS = {"migrations", "tests", "bench", "bin", "templates", "static", "__pycache__"}
# Calls whose string argument names an app or a module by its dotted path.
NAMING_CALLS = {
    "get_model",
    "get_app_config",
    "import_string",
    "import_module",
    "signature",
    "send_task",
    "__import__",
}
NAMING_KEYWORDS = {"app_label", "package", "name"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _rank(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {app: rank for rank, apps in enumerate(layers) for app in apps}


def source_files(root: Path, layers: tuple[tuple[str, ...], ...]) -> Iterator[Path]:
    for app in _rank(layers):
        for path in sorted((root / app).rglob("*.py")):
            if not SKIPPED_DIRS.intersection(path.relative_to(root).parts):
                yield path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every module this one imports (the named submodule where `from x import y` names one)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno
                yield target, node.lineno


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of string constants that are docstrings or bare string statements (prose)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def _text(node: ast.AST) -> tuple[str, bool]:
    """The string an expression starts with as far as it is written out, and whether that is
    all of it: "billing.x", f"billing.{name}" (prefix "billing."), "bill" + "ing.x"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return text, False
            text += part.value
        return text, True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, whole = _text(node.left)
        if not whole:
            return left, False
        right, whole = _text(node.right)
        return left + right, whole
    return "", False


def _names_app(text: str, whole: bool, apps: set[str]) -> str | None:
    head, dot, rest = text.partition(".")
    if dot and head in apps and (rest[:1].isidentifier() or not (whole or rest)):
        return head
    return None


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Call):  # getattr(importlib, "import_module")("billing")
        for argument in func.args:
            text, _ = _text(argument)
            if text in NAMING_CALLS:
                return text
        return _call_name(func)
    return getattr(func, "attr", None) or getattr(func, "id", None)


def _named_apps(tree: ast.AST, apps: set[str]) -> Iterator[tuple[str, int]]:
    """Apps named by a dotted string ("billing.tasks.x", f"billing.{task}", "bill" + "ing.x")
    or as an app label or package in a call such as apps.get_model("billing", "Invoice"),
    import_module(".tasks", package="billing") or __import__("billing")."""
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if id(node) in prose or not isinstance(node, ast.Constant | ast.JoinedStr | ast.BinOp):
            if isinstance(node, ast.Call) and _call_name(node) in NAMING_CALLS:
                arguments = [*node.args[:1]]
                arguments += [k.value for k in node.keywords if k.arg in NAMING_KEYWORDS]
                for argument in arguments:
                    text, whole = _text(argument)
                    if text in apps and whole:
                        yield text, node.lineno
            continue
        text, whole = _text(node)
        app = _names_app(text, whole, apps)
        if app:
            yield app, node.lineno


def check(root: Path, layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[Finding]:
    rank = _rank(layers)
    files = {module_name(root, path): path for path in source_files(root, layers)}
    graph: dict[str, set[str]] = {module: set() for module in files}
    findings: list[Finding] = []
    for module, path in files.items():
        text = path.read_text()
        where = str(path.relative_to(root))
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_LINES:
            findings.append(Finding(where, 1, f"{lines} lines (at most {MAX_LINES})"))
        tree = ast.parse(text, filename=where)
        app = module.split(".")[0]
        for target, line in _imports(tree, module, path.name == "__init__.py"):
            other = target.split(".")[0]
            if other in rank and other != app and rank[other] >= rank[app]:
                findings.append(Finding(where, line, f"imports {target} ({other} is not below)"))
            if target in files and target != module:
                graph[module].add(target)
        if not module.startswith("portal.settings"):
            higher = {a for a in rank if rank[a] >= rank[app] and a != app}
            for other, line in _named_apps(tree, higher):
                findings.append(Finding(where, line, f"names {other} by string"))
    for cycle in cycles(graph):
        first = cycle[0]
        findings.append(
            Finding(str(files[first].relative_to(root)), 1, "import cycle: " + " -> ".join(cycle))
        )
    return sorted(set(findings), key=lambda f: (f.path, f.line, f.message))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_project_keeps_its_layers():
    findings = check(ROOT)
    assert [str(f) for f in findings] == []


def test_every_package_is_in_a_layer():
    """A new app or package must be placed in LAYERS (and docs/layers.md), or the check would
    skip it and an import through it would go unseen."""
    packages = {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in SKIPPED_DIRS
    }
    assert packages == set(_rank(LAYERS))


# --- The check itself finds what it is for ----------------------------------------------------
FAKE_LAYERS = (("low",), ("high",))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for app in ("low", "high"):
        (tmp_path / app).mkdir(exist_ok=True)
        (tmp_path / app / "__init__.py").touch()
    return tmp_path


def _messages(root: Path) -> list[str]:
    return [f"{f.path}:{f.line}: {f.message}" for f in check(root, FAKE_LAYERS)]


def test_a_clean_tree_passes(tmp_path):
    root = _tree(tmp_path, {"high/a.py": "from low import b\n", "low/b.py": "X = 1\n"})
    assert _messages(root) == []


@pytest.mark.parametrize(
    "source",
    [
        "from high import a\n",
        "import high.a\n",
        "def f():\n    from high.a import x\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from high import a\n",
    ],
    ids=["from-import", "import", "function-local", "type-checking"],
)
def test_an_upward_import_fails(tmp_path, source):
    root = _tree(tmp_path, {"low/b.py": source, "high/a.py": "x = 1\n"})
    line = source.count("\n")
    assert any(m.startswith(f"low/b.py:{line}: imports high") for m in _messages(root))


@pytest.mark.parametrize(
    "source",
    [
        'import_string("high.hooks.run")\n',
        'send("high.settle_reservation")\n',
        'apps.get_model("high", "Thing")\n',
        'apps.get_model(app_label="high", model_name="Thing")\n',
        'send(f"high.{task}")\n',
        'send(f"high.settle_{kind}")\n',
        'send("hi" + "gh.settle")\n',
        '__import__("high")\n',
        'importlib.import_module(".tasks", package="high")\n',
        'getattr(importlib, "import_module")("high")\n',
    ],
    ids=[
        "import-string",
        "task-name",
        "get-model",
        "get-model-keyword",
        "f-string-at-the-dot",
        "f-string",
        "concatenated",
        "dunder-import",
        "package-keyword",
        "indirect-call",
    ],
)
def test_naming_a_higher_app_by_string_fails(tmp_path, source):
    root = _tree(tmp_path, {"low/b.py": source})
    assert _messages(root) == ["low/b.py:1: names high by string"]


def test_prose_may_mention_a_higher_app(tmp_path):
    root = _tree(tmp_path, {"low/b.py": '"""high.tasks settles it, via a hook."""\n'})
    assert _messages(root) == []


def test_a_module_cycle_fails(tmp_path):
    root = _tree(
        tmp_path,
        {"low/a.py": "from low import b\n", "low/b.py": "def f():\n    from low.a import x\n"},
    )
    assert _messages(root) == ["low/a.py:1: import cycle: low.a -> low.b"]


def test_a_long_file_fails(tmp_path):
    root = _tree(tmp_path, {"low/big.py": "x = 1\n" * (MAX_LINES + 1)})
    assert _messages(root) == [f"low/big.py:1: {MAX_LINES + 1} lines (at most {MAX_LINES})"]
    (root / "low" / "big.py").write_text("x = 1\n" * MAX_LINES)
    assert _messages(root) == []


def test_migrations_and_tests_are_not_read(tmp_path):
    root = _tree(
        tmp_path,
        {"low/migrations/0001.py": "from high import a\n", "low/tests/t.py": "import high\n"},
    )
    assert _messages(root) == []

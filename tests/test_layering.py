"""Layering rules, checked on the source tree (the way diffusers checks its copies):

* `generation/` is the model library: no module in it imports `bot` or `plugins` (anywhere in the file,
  lazily or not).
* A channel adapter turns platform events into messages and sends what it is asked to: no module under
  `bot/channels/` imports the app (`bot.app`, `bot.serve`, `bot.cli`) or a plugin.
* No import cycle among `bot`, `plugins` and `generation`, lazy imports inside functions included (a
  lazy import only hides a circle); imports under `if TYPE_CHECKING:` do not count (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "plugins", "generation")


def _modules(package: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, *, top_level_only: bool, skip_typing: bool | None = None) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    skip_typing = top_level_only if skip_typing is None else skip_typing

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, is_package)
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if skip_typing and "TYPE_CHECKING" in test:
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif not top_level_only:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


def _all_modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        mods.update(_modules(package))
    return mods


def test_generation_imports_nothing_from_the_product() -> None:
    offenders = []
    for module, path in _modules("generation").items():
        for name in _imports(module, path, top_level_only=False):
            if name.split(".")[0] in ("bot", "plugins"):
                offenders.append(f"{module} imports {name}")
    assert not offenders, "generation/ must not import bot/ or plugins/:\n" + "\n".join(sorted(offenders))


def test_channel_adapters_do_not_build_the_app() -> None:
    forbidden = ("bot.app", "bot.serve", "bot.cli", "plugins")
    offenders = []
    for module, path in _modules("bot").items():
        if not module.startswith("bot.channels."):
            continue
        for name in _imports(module, path, top_level_only=False):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                offenders.append(f"{module} imports {name}")
    assert not offenders, "channel adapters must not import the app:\n" + "\n".join(sorted(offenders))


def test_no_import_cycles() -> None:
    mods = _all_modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        deps = set()
        for name in _imports(module, path, top_level_only=False, skip_typing=True):
            # `from a.b import c` names a.b.c, which is a module only if it exists
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        graph[module] = deps

    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The walker sees lazy imports inside functions (a rule that sees nothing proves nothing)."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from bot.store import db\n    return db\n", encoding="utf-8")
    assert "bot.store" in _imports("generation.m", path, top_level_only=False)
    assert "bot.store" not in _imports("generation.m", path, top_level_only=True)

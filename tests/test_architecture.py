"""The shape of the code (issue 9): no import cycles, one seam between the core and each
domain package, no network in the domain, names that say what they hold.

The import graph is read from the source with `ast`, counting imports inside functions;
only imports under `if TYPE_CHECKING:` are left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mailer", "lists", "meetings")
DOMAIN = ("lists", "meetings")

# What a domain package may import from the core: the contract modules.
CONTRACTS = {"mailer.addresses", "mailer.admin", "mailer.config", "mailer.events",
             "mailer.inbound", "mailer.jobs",
             "mailer.models", "mailer.outbox", "mailer.rawmail", "mailer.robot_mail",
             "mailer.templates", "mailer.tokens", "mailer.web"}
CONTRACTS |= {"mailer.dates"}     # dates and times in a reader's language (Babel)
CONTRACTS |= {"mailer.webauth", "mailer.dashboard"}   # who is at a page; the dashboard frame
CONTRACTS |= {"mailer.arc"}   # the ARC set of a post's list copies (RFC 8617), asked by lists
# ... and what only its command group may add (the CLI's context, without the daemon).
CLI_CONTRACT = {"mailer.console"}
# The engine: only the composition root and the wiring modules may name these.
ENGINE = {"mailer.backup", "mailer.daemon", "mailer.db", "mailer.delivery", "mailer.dns",
          "mailer.domainkeys", "mailer.health",
          "mailer.http_server", "mailer.intake", "mailer.logs", "mailer.metrics",
          "mailer.router", "mailer.scheduler", "mailer.screen",
          "mailer.transport", "mailer.workers", "mailer.cli"}
ENGINE |= {"mailer.tls"}    # the listener's certificate, the smarthost's TLS and credentials
ENGINE |= {"mailer.check"}  # `alliance check`: the site as Gmail and Yahoo see it
ENGINE |= {"mailer.postfix"}  # `alliance postfix`: the lines that put Postfix in front
ENGINE |= {"mailer.pipelining"}  # the transport's SMTP transactions, pipelined (RFC 2920)
ENGINE |= {"mailer.queues"}  # the queues as `alliance queue` and the queue page show them
ENGINE |= {"mailer.queue_pages"}  # the dashboard's queue page, handed the Access by the daemon
# Modules of the core that may import the domain, and what.
COMPOSITION_ROOT = "mailer.daemon"
CLI_ENTRY = "mailer.cli"
# Imports that mean network I/O.
NETWORK = ("socket", "ssl", "dns", "aiosmtplib", "aiosmtpd", "smtplib", "h11", "http.client",
           "urllib.request", "asyncio.streams", "psycopg")
# Module names that every package may have once, each holding the same kind of thing.
SAME_KIND = {"__init__", "__main__", "models", "cli", "wiring",
             "personal"}   # each package's part of a person's data (GDPR export, erasure)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for child in node.body for inner in ast.walk(child))
    return skipped


def imported(module: str, path: Path) -> Iterator[str]:
    """Every module name an import statement of `module` names, at any depth."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    """Module -> the modules of our three packages it imports (`from mailer import outbox`
    names mailer.outbox, not the empty package itself)."""
    found = modules()
    return {name: {other for other in imported(name, path)
                   if other in found and other != name and other not in PACKAGES}
            for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    return module.split(".")[0]


# -- the checks -----------------------------------------------------------------------

def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_are_counted_and_type_checking_ones_are_not(
        tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from lists import service\n"
                      "def f():\n    from meetings import ical\n")
    names = set(imported("mailer.probe", source))
    assert "meetings.ical" in names
    assert "lists.service" not in names


def test_there_are_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_core_does_not_import_the_domain() -> None:
    wrong = {module: sorted(other for other in imports if package_of(other) in DOMAIN)
             for module, imports in graph().items()
             if package_of(module) == "mailer" and module not in (COMPOSITION_ROOT, CLI_ENTRY)}
    assert {module: found for module, found in wrong.items() if found} == {}


def test_the_cli_entry_only_adds_each_packages_own_command_group() -> None:
    domain = {other for other in graph()[CLI_ENTRY] if package_of(other) in DOMAIN}
    assert domain == {"lists.cli", "meetings.cli"}


def test_the_composition_root_asks_only_the_wiring_modules() -> None:
    domain = {other for other in graph()[COMPOSITION_ROOT] if package_of(other) in DOMAIN}
    assert domain == {"lists.wiring", "meetings.wiring"}


@pytest.mark.parametrize("package", DOMAIN)
def test_a_domain_package_imports_only_contract_modules_of_the_core(package: str) -> None:
    wrong = {}
    for module, imports in graph().items():
        if package_of(module) != package:
            continue
        allowed = CONTRACTS | (CLI_CONTRACT if module.endswith(".cli") else set())
        if module.endswith(".wiring"):
            allowed |= ENGINE - {"mailer.daemon", "mailer.cli"}
        found = sorted(other for other in imports
                       if package_of(other) == "mailer" and other not in allowed)
        if found:
            wrong[module] = found
    assert wrong == {}


def test_the_contract_and_engine_lists_name_every_core_module() -> None:
    core = {module for module in modules() if package_of(module) == "mailer"}
    named = CONTRACTS | CLI_CONTRACT | ENGINE | {"mailer", "mailer.__main__",
                                                 "mailer.smtp_replies"}
    assert core == named, "a new core module: say whether it is a contract or the engine"


@pytest.mark.parametrize("package", DOMAIN)
def test_no_network_io_in_a_domain_package(package: str) -> None:
    found = {module: sorted(name for name in imported(module, path)
                            if name.split(".")[0] in NETWORK or name in NETWORK)
             for module, path in modules().items() if package_of(module) == package}
    assert {module: names for module, names in found.items() if names} == {}


def test_no_two_modules_share_a_name_for_different_things() -> None:
    seen: dict[str, list[str]] = {}
    for module in modules():
        seen.setdefault(module.rpartition(".")[2], []).append(module)
    shared = {name: found for name, found in seen.items()
              if len(found) > 1 and name not in SAME_KIND and name not in PACKAGES}
    assert shared == {}


def test_no_two_public_classes_share_a_name() -> None:
    seen: dict[str, list[str]] = {}
    for module, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(module)
    assert {name: found for name, found in seen.items() if len(found) > 1} == {}


def test_the_readme_module_map_names_every_module_once() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- `([a-z_]+/[a-z_]+\.py)`", section, flags=re.M)
    expected = sorted(str(path.relative_to(ROOT)) for module, path in modules().items()
                      if path.name not in ("__init__.py", "__main__.py"))
    assert sorted(listed) == expected


def test_a_misspelt_handler_option_is_refused() -> None:
    from mailer.inbound import HandlerOptions

    with pytest.raises(TypeError):
        HandlerOptions(bach=50)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        HandlerOptions(batch=0)


def test_test_modules_import_helpers_only_from_tests_helpers() -> None:
    """Shared helpers live in tests/helpers.py; fixtures come by injection (issue 9)."""
    borrowed = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
                if node.module in (None, "tests"):
                    names = [f"{names[0]}.{alias.name}".replace("..", ".")
                             for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                local = name.startswith(".") or name == "tests" or name.startswith("tests.")
                if local and name.lstrip(".").removeprefix("tests.") != "helpers":
                    borrowed.append(f"{path.name}: {name}")
    assert borrowed == []

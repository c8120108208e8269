"""Documentation that cannot rot: every command shown in README.md and docs/ names existing scripts
and options (read from their own `--help`), every run-config key it sets exists in pyproject.toml,
every relative link resolves, and measured figures carry their date."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

from eurosat.fl.config import override_pairs, project_defaults

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CONFIG_FLAGS = ("-c", "--run-config", "--set")
PYTHONS = ("python", "python3", ".venv/bin/python", "$PY", "${PY}")
MAX_README_LINES = 250


def bash_blocks(path: Path) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang in ("bash", "sh", "shell", "console")]


def commands(block: str) -> list[list[str]]:
    """Simple commands of a bash block: continuations joined, comments dropped, split at ; && || |."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise AssertionError(f"cannot read the command {line!r}: {exc}") from None
        command: list[str] = []
        for token in tokens + [";"]:
            if token in (";", "&&", "||", "|", "&"):
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


def invocation(command: list[str]) -> tuple[list[str], list[str]] | None:
    """(how to run the script, its arguments) when `command` runs one of this project's commands."""
    while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
        command = command[1:]  # VAR=value prefixes
    for i, token in enumerate(command):
        if token in PYTHONS or token.endswith("/python"):
            rest = command[i + 1:]
            if rest[:1] == ["-m"] and len(rest) > 1 and rest[1].startswith("eurosat"):
                return [sys.executable, "-m", rest[1]], rest[2:]
            if rest and rest[0].endswith(".py"):
                return [sys.executable, rest[0]], rest[1:]
            return None
        if token.endswith(".sh") and i == 0:
            return [token], command[1:]
        if token == "flwr" and i == 0 and command[1:2] == ["run"]:
            return None  # Flower's own command line; its run-config keys are still checked below
        return None
    return None


@cache
def help_text(script: tuple[str, ...], subcommand: str | None) -> str:
    argv = [*script, *([subcommand] if subcommand else []), "--help"]
    if not argv[0].startswith(("/", "-")) and argv[0] != sys.executable:
        argv[0] = str(ROOT / argv[0])
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {proc.stderr[-500:]}"
    return proc.stdout + proc.stderr


def shown_commands() -> list[tuple[str, list[str]]]:
    return [(path.relative_to(ROOT).as_posix(), c) for path in DOCS for block in bash_blocks(path)
            for c in commands(block)]


def test_the_docs_exist_and_the_readme_is_a_guide():
    assert (ROOT / "docs").is_dir()
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def test_every_command_names_an_existing_script_and_its_options():
    problems = []
    for where, command in shown_commands():
        found = invocation(command)
        if found is None:
            continue
        script, args = found
        if script[0] != sys.executable and not (ROOT / script[0]).is_file():
            problems.append(f"{where}: {script[0]} does not exist")
            continue
        if script[1:2] != ["-m"] and script[0] == sys.executable and not (ROOT / script[1]).is_file():
            problems.append(f"{where}: {script[1]} does not exist")
            continue
        positional = [a for a in args if not a.startswith("-")]
        listed = re.search(r"\{([\w,-]+)\}", help_text(tuple(script), None))  # argparse's {sub,commands}
        subcommand = positional[0] if listed and positional and positional[0] in listed.group(1).split(",") else None
        text = help_text(tuple(script), subcommand)
        for arg in args:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option != "--" and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                problems.append(f"{where}: {' '.join(command)}: {option} is not an option of {' '.join(script[-1:])}")
    assert not problems, "\n".join(problems)


def test_every_run_config_key_shown_exists():
    keys = set(project_defaults())
    problems = []
    for where, command in shown_commands():
        for flag, value in zip(command, command[1:]):
            if flag not in CONFIG_FLAGS:
                continue
            if value.endswith(".toml"):
                if not (ROOT / value).is_file():
                    problems.append(f"{where}: {flag} {value}: no such preset")
                continue
            if "=" not in value or value.startswith("$"):
                continue
            for key, _ in override_pairs(value):
                if key not in keys:
                    problems.append(f"{where}: {flag} {value!r}: {key} is not a run-config key")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_resolves():
    problems = []
    for path in DOCS:
        for target in LINK.findall(FENCE.sub("", path.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                problems.append(f"{path.relative_to(ROOT)}: link {target} does not resolve")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{path.relative_to(ROOT)}: link {target}: no heading #{anchor}")
    assert not problems, "\n".join(problems)


DATE = re.compile(r"20\d\d-\d\d-\d\d")
FIGURE = re.compile(r"\d\.\d+ ?%|±")


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_measured_figures_carry_their_date(doc):
    """A table row with a measured figure (a percentage with decimals, or a ± spread) carries a date:
    in the row, in a date column of its table (the archive table has one), or in the line that
    introduces the table."""
    problems = []
    lines = (ROOT / doc).read_text().splitlines()
    header = caption = ""
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = ""
            continue
        if not header:
            header = line
            caption = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            continue
        if set(line) <= set("|-: "):
            continue
        dated = DATE.search(line) or DATE.search(caption) or "date" in header.lower()
        if FIGURE.search(line) and not dated:
            problems.append(f"{doc}:{i + 1}: {line[:120]}")
    assert not problems, "figures without a date:\n" + "\n".join(problems)

"""The README stands alone: its links stay inside the repository, and its command synopsis is checked against the
real argparse definitions (every subcommand, every option of each), so neither can drift. A subcommand added later
is picked up from the parser by itself."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from sftc_jobs.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Options every writing command takes, said once in the synopsis instead of on every line.
SAID_ONCE = {"--force", "--help"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _synopsis() -> dict[str, str]:
    """The README's `sftc ...` block: each subcommand's lines (a line indented under one continues it)."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index("## Command line") :]
    block = block[block.index("```\n") + 4 :]
    block = block[: block.index("```")]
    lines: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"sftc ([a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            lines[current] = lines.get(current, "") + " " + line
        elif current and line.startswith(" "):
            lines[current] += " " + line
    return lines


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_the_synopsis_shows_every_subcommand_with_every_option(name):
    synopsis = _synopsis()
    assert name in synopsis, f"README.md's command synopsis has no `sftc {name}` line"
    parser = _subcommands()[name]
    # A hidden option (help=SUPPRESS) is the command talking to its own child process, not a user's.
    options = {
        o
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for o in action.option_strings
        if o.startswith("--")
    } - SAID_ONCE
    missing = sorted(o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", synopsis[name]))
    assert not missing, f"README.md's `sftc {name}` lines omit {missing}"


def test_every_subcommand_says_what_it_does():
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    for name, parser in subparsers.choices.items():
        assert helps.get(name), f"sftc {name} has no help line in `sftc --help`"
        assert parser.description, f"sftc {name} --help has no description"


def test_the_synopsis_names_no_subcommand_that_does_not_exist():
    assert set(_synopsis()) <= set(_subcommands())


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))])
def test_links_stay_inside_the_repository_and_resolve(doc):
    path = REPO / doc
    for link in _links(path):
        if re.match(r"[a-z]+://", link):
            continue
        target = (path.parent / link).resolve()
        assert target.is_relative_to(REPO), f"{doc} links {link}, outside the repository"
        assert target.exists(), f"{doc} links {link}, which does not exist"


def test_no_text_points_at_specs_the_repository_does_not_have():
    """Help texts, descriptions and docs cite the contracts in docs/, not a spec/ folder the repository lacks."""
    cited = []
    for path in [*REPO.glob("sftc_*/**/*.py"), *REPO.glob("configs/**/*.yaml"), README, *(REPO / "docs").glob("*.md")]:
        for reference in re.findall(
            r"(?<![\w/.])((?:\.\./)?(?:shared/)?spec/[\w.-]+\.md)", path.read_text(encoding="utf-8")
        ):
            cited.append(f"{path.relative_to(REPO)}: {reference}")
    assert not cited, cited

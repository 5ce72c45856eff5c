"""One argparse style for every `infermesh` command: defaults shown in help, an Examples section, and "did you mean"
for a mistyped verb, choice or option.

Every command builds its parser with `Parser` (subcommand parsers inherit it), so `tests/test_cli_help.py` can walk
them all and refuse an option without help text or a default that the help hides.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs kept as written (examples line up); "(default: X)" added where the help text does
    not already say it and the default is worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if shows_default(action) or "%(default)" in help_ or "default" in help_.lower():
            return help_
        return f"{help_} (default: %(default)s)"


def shows_default(action: argparse.Action) -> bool:
    """True when the default needs no mention: none, off, a positional, or help and version actions."""
    if not action.option_strings or action.default in (None, False, argparse.SUPPRESS, [], ""):
        return True
    return isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._StoreConstAction)


def examples(*lines: str) -> str:
    """An epilog: "examples:" and one indented command (or `# comment`) per line."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser with the project's help formatter and "did you mean" in its errors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        hint = None
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = [c.strip().strip("'") for c in m.group(2).split(",")]
            hint = suggest(m.group(1), choices)
        m2 = _UNRECOGNIZED.search(message)
        if m2 and hint is None:
            # argparse reports a verb's unknown option from the top parser: look through the verbs' options too
            options = sorted({s for _, p in walk(self) for a in p._actions for s in a.option_strings})
            for word in m2.group(1).split():
                if word.startswith("-"):
                    hint = suggest(word.split("=", 1)[0], options)
                    if hint:
                        break
        if hint:
            message = f"{message}; did you mean {hint!r}?"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Each verb's parser below `parser` (one level), once per parser even when it has aliases."""
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def walk(
    parser: argparse.ArgumentParser, path: Sequence[str] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of a command tree with its verb path, the root first."""
    yield tuple(path), parser
    for name, sub in subparsers(parser):
        yield from walk(sub, [*path, name])


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def capture_parser(main: object, argv: Sequence[str] = ()) -> argparse.ArgumentParser | None:
    """The parser a command's main builds, taken when it first parses (every command builds its parser before it
    does anything else); None for a command that has no argparse parser of its own."""
    original = argparse.ArgumentParser.parse_known_args

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = grab  # type: ignore[method-assign, assignment]
    try:
        main(list(argv))  # type: ignore[operator]
    except _Captured as got:
        return got.parser
    except SystemExit:
        return None
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]
    return None

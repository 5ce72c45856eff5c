"""`infermesh completion bash|zsh|fish`: shell completion scripts generated from the commands' own parsers, so a
new verb or option completes without editing a script."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from agents.argparsing import Parser, examples, subparsers, walk

SHELLS = ("bash", "zsh", "fish")


def tree() -> dict[str, tuple[list[str], list[str], str]]:
    """Verb path ("" for the top, "ctl store" ...) -> (verbs, options, help line)."""
    from meshweb.cli import BUILTINS, COMMANDS, command_parsers

    top_verbs = sorted([*COMMANDS, *BUILTINS])
    out: dict[str, tuple[list[str], list[str], str]] = {"": (top_verbs, ["--help", "--version"], "")}
    out["completion"] = (list(SHELLS), ["--help"], BUILTINS["completion"])
    out["help"] = (sorted(COMMANDS), [], BUILTINS["help"])
    parsers = command_parsers()
    for name in COMMANDS:
        parser = parsers.get(name)
        if parser is None:
            out[name] = ([], ["--help"], COMMANDS[name][1])
            continue
        for path, p in walk(parser, [name]):
            verbs = [v for v, _ in subparsers(p)]
            options = sorted({s for a in p._actions for s in a.option_strings if s.startswith("--")})
            helps = {
                choice.dest: choice.help or ""
                for action in p._actions
                if isinstance(action, argparse._SubParsersAction)
                for choice in action._choices_actions
            }
            out[" ".join(path)] = (verbs, options, COMMANDS[name][1] if len(path) == 1 else "")
            for verb, text in helps.items():
                out.setdefault(" ".join([*path, verb]), ([], [], text))
    return out


def bash() -> str:
    entries = "\n".join(
        f"  [{shlex.quote(' '.join(['_', *path.split()]))}]={shlex.quote(' '.join([*verbs, *options]))}"
        for path, (verbs, options, _) in sorted(tree().items())
    )
    return f"""# infermesh bash completion: source <(infermesh completion bash)
declare -gA _infermesh_words=(
{entries}
)
_infermesh() {{
  # keys: "_" for the top, "_ ctl", "_ ctl store", ... (bash arrays have no empty key)
  local cur=${{COMP_WORDS[COMP_CWORD]}} path="_" next i
  for ((i = 1; i < COMP_CWORD; i++)); do
    next="$path ${{COMP_WORDS[i]}}"
    if [[ ${{COMP_WORDS[i]}} != -* && -n ${{_infermesh_words[$next]+x}} ]]; then path=$next; fi
  done
  COMPREPLY=($(compgen -W "${{_infermesh_words[$path]}}" -- "$cur"))
}}
complete -o default -F _infermesh infermesh
"""


def zsh() -> str:
    return "#compdef infermesh\n# infermesh zsh completion: source <(infermesh completion zsh)\n" + (
        "autoload -U +X bashcompinit && bashcompinit\n" + bash()
    )


def fish() -> str:
    lines = ["# infermesh fish completion: infermesh completion fish | source", "complete -c infermesh -f"]
    data = tree()
    for path, (verbs, options, _) in sorted(data.items()):
        words = path.split()
        if not words:
            cond = "__fish_use_subcommand"
        else:
            # Every word of the path typed, and no verb of this level yet.
            cond = " && ".join(f"__fish_seen_subcommand_from {w}" for w in words)
            if verbs:
                cond += f" && not __fish_seen_subcommand_from {' '.join(verbs)}"
        for verb in verbs:
            text = data.get(f"{path} {verb}".strip(), ([], [], ""))[2]
            desc = f" -d {shlex.quote(text)}" if text else ""
            lines.append(f"complete -c infermesh -n {shlex.quote(cond)} -a {shlex.quote(verb)}{desc}")
        for option in options:
            lines.append(f"complete -c infermesh -n {shlex.quote(cond)} -l {shlex.quote(option[2:])}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="infermesh completion",
        description="Print a shell completion script for infermesh.",
        epilog=examples(
            "source <(infermesh completion bash)          # this bash session",
            "infermesh completion bash > ~/.local/share/bash-completion/completions/infermesh   # every session",
            "source <(infermesh completion zsh)           # zsh",
            "infermesh completion fish > ~/.config/fish/completions/infermesh.fish",
        ),
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


def completion_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    sys.stdout.write({"bash": bash, "zsh": zsh, "fish": fish}[args.shell]())
    return 0

"""The CLI reference (``docs/cli.md``), generated from the commands' ``--help``.

``python -m provenance.cli.reference > docs/cli.md`` regenerates it; a test fails when the file
is stale or a command lacks help.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from provenance.cli.main import main as root


def walk(command: click.Command, path: tuple[str, ...] = ("prov",)) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from walk(command.commands[name], (*path, name))


def help_text(path: tuple[str, ...], command: click.Command) -> str:
    with click.Context(
        command, info_name=" ".join(path), terminal_width=100, max_content_width=100, help_option_names=["-h", "--help"]
    ) as ctx:
        return command.get_help(ctx)


def render() -> str:
    parts = [
        "# CLI reference",
        "",
        "Generated from `--help` by `python -m provenance.cli.reference`; do not edit by hand.",
        "",
    ]
    for path, command in walk(root):
        parts += [f"## `{' '.join(path)}`", "", "```text", help_text(path, command).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")

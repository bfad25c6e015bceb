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
        "## Exit status",
        "",
        "| status | meaning |",
        "| --- | --- |",
        "| 0 | success; the pre-merge gate passed; `prov verify` found nothing damaged |",
        "| 1 | a policy broke: the pre-merge gate failed (`prov audit merge`, `prov merge --gate`), "
        "`prov verify` found damage |",
        "| 2 | a usage error: a missing or malformed argument or option (click's own) |",
        "| 3 | not found: a dataset, version, tag, run, audit or ledger that does not exist |",
        "| 4 | any other error: bad input (a file, line, parameter or record, named), a damaged or "
        "read-only ledger |",
        "| 130 | interrupted (Ctrl-C): `Aborted!`; a registration or commit cut short leaves the ledger as it was; one "
        "that had landed when the interrupt came is kept, and `Aborted!` names it |",
        "| 141 | the reader of the output went away (`prov ... \\| head`): stopped quietly |",
        "",
        "Errors are one line on stderr, `Error: ...`. With `--json` they are JSON on stderr instead, "
        '`{"error": "...", "kind": "not_found"}`, where `kind` names the error\'s class '
        "(`not_found`, `invalid_parameter`, `source`, `ledger_damaged`, `ledger_read_only`, `usage`, ...). "
        "Warnings are lines `warning: ...` on stderr.",
        "",
    ]
    for path, command in walk(root):
        parts += [f"## `{' '.join(path)}`", "", "```text", help_text(path, command).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")

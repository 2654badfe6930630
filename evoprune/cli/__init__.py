"""The ``evoprune`` command line: a thin typer layer over the Python API.

This module builds the typer ``app`` and registers every command on it, in the order ``--help``
lists them; the commands themselves live in one module per group:

- ``search``: ``search`` and ``resume``
- ``choice``: ``pareto``, ``plan`` and ``compare``
- ``export``: ``export``, ``measure`` and ``evaluate``
- ``report``: ``report``, ``runs`` and ``surrogate report``
- ``recover``: ``recover``
- ``cache``: ``cache list`` and ``cache clear``

over ``common`` (consoles, errors, figure texts, tables, progress) and ``views`` (the front and its
per-layer allocation). The command modules import nothing from this one.
"""

from __future__ import annotations

import re
import sys
import warnings

import typer

from evoprune.cli import cache, choice, export, recover, report, search
from surrogates import SurrogatePluginWarning


def _flags_without_a_type(params: list) -> list:
    # typer 0.29 shows every flag (--json, --help) as taking a "<bool>"; a flag takes no value.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx) -> list:
        return _flags_without_a_type(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx) -> list:
        return _flags_without_a_type(super().get_params(ctx))


app = typer.Typer(
    name="evoprune",
    cls=_Group,
    help="Decide how much to prune in each layer of a causal LM, with a surrogate-assisted multi-objective search.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("search", cls=_Command)(search.search_command)
app.command("resume", cls=_Command)(search.resume_command)
app.command("pareto", cls=_Command)(choice.pareto_command)
app.command("export", cls=_Command, help=export.EXPORT_HELP)(export.export_command)
app.command("measure", cls=_Command)(export.measure_command)
app.command("compare", cls=_Command)(choice.compare_command)
app.command("plan", cls=_Command)(choice.plan_command)
app.command("report", cls=_Command)(report.report_command)
app.command("runs", cls=_Command)(report.runs_command)
app.command("evaluate", cls=_Command)(export.evaluate_command)
app.command("recover", cls=_Command)(recover.recover_command)

surrogate_app = typer.Typer(
    cls=_Group, help="Judge the surrogate models on the real evaluations in a store.", no_args_is_help=True
)
surrogate_app.command("report", cls=_Command, help=report.SURROGATE_REPORT_HELP)(report.surrogate_report_command)
app.add_typer(surrogate_app, name="surrogate")

cache_app = typer.Typer(
    cls=_Group,
    help="See and clear the cache of converted models, importance scores and latency tables.",
    no_args_is_help=True,
)
cache_app.command("list", cls=_Command)(cache.cache_list_command)
cache_app.command("clear", cls=_Command)(cache.cache_clear_command)
app.add_typer(cache_app, name="cache")


def _click_exceptions():
    """The exceptions module of the click that typer runs on: recent typer vendors its own copy."""
    return sys.modules[typer.BadParameter.__module__]


def _command_path(argv: list[str]) -> str:
    """``evoprune cache clear`` for ``argv`` ``["cache", "clear", ...]``: the command the words name,
    for errors click raises without a context (an option missing its value)."""
    command, path = typer.main.get_command(app), ["evoprune"]
    for word in argv:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command, path = sub, [*path, word]
    return " ".join(path)


def _show_warning(message, category, filename, lineno, file=None, line=None, _python=warnings.showwarning) -> None:
    """An installed surrogate plugin that failed to load (while another surrogate is used): one
    ``note:`` line, not Python's warning with a line of source code. Other warnings unchanged."""
    if issubclass(category, SurrogatePluginWarning):
        typer.echo(f"note: {message}", err=True)
    else:
        _python(message, category, filename, lineno, file, line)


def _plain_number_text(message: str, argv: list[str]) -> str:
    """Click's message for a number option given something else, in evoprune's words: the value
    given and the form wanted, not pydantic's "Input should be a valid number, unable to parse
    string as a number"."""
    found = re.match(r"Invalid value for '(--[\w-]+)'[^:]*: Input should be a valid (number|integer)", message)
    if not found:
        return message
    option, kind = found.groups()
    given = next((a.split("=", 1)[1] for a in argv if a.startswith(option + "=")), None)
    if given is None and option in argv and argv.index(option) + 1 < len(argv):
        given = argv[argv.index(option) + 1]
    what, example = ("an integer", "a whole number such as 8") if kind == "integer" else (
        "a number", "a plain number such as 0.8, 30 or 90e6")  # fmt: skip
    return f"Invalid value for '{option}': {given!r} is not {what}: give {example}"


def main() -> None:
    """The ``evoprune`` script: the app, with click's usage errors (an unknown option, a value of the
    wrong type, a missing one) as one ``error:`` line and exit code 2, like evoprune's own."""
    errors = _click_exceptions()
    no_args_is_help = getattr(errors, "NoArgsIsHelpError", ())
    warnings.showwarning = _show_warning
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:  # outside a command; inside one, typer (like click) exits 1 without a word
        sys.exit(0)
    except no_args_is_help as exc:  # `evoprune` or `evoprune cache` alone: the help, as typer shows it
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except errors.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        message = _plain_number_text(" ".join(exc.format_message().split()), sys.argv[1:])
        path = ctx.command_path if ctx else _command_path(sys.argv[1:])
        typer.echo(f"error: {message} (see '{path} --help')", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

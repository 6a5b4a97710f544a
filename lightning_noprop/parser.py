"""The CLI's argument parser: each error as one ``error:`` line that names the option, and a pointer to ``--help``."""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

#: The exit status of a user error (the argument parser's own errors exit with 2 as well).
USER_ERROR_EXIT_CODE = 2
_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
#: The alternatives of an Optional or of a class given by name, which say nothing about what went wrong.
_NOT_THE_CAUSE = ("Expected a <class 'NoneType'>", "Expected a path but", "Expected a dot import path string")


def distil(message: str) -> str:
    """jsonargparse's message for a wrong value nested in classes and unions (a dozen indented lines) as one line:
    the option's full key, the class it belongs to, and the innermost cause (a union's branches joined with "or")
    with the value given, e.g. ``model.strategy.init_args.backbone.init_args.depth (lightning_noprop.nn.ResNet):
    Expected a typing.Literal[18, 34, 50, 101, 152]. Got value: 20``. A message without a cause comes back as it
    was."""
    lines = [(len(line) - len(line.lstrip()), line.strip().removeprefix("- ")) for line in message.splitlines()]
    lines = [(indent, _cause_of(text)) for indent, text in lines if text]
    causes = [i for i, (_, text) in enumerate(lines) if text.startswith(("Expected", "Option '", _NAMED)) and
              not text.startswith(_NOT_THE_CAUSE)]  # fmt: skip
    if len(lines) < 2:
        return message
    if not causes:
        return _unknown_class(lines) or message
    deepest = max(lines[i][0] for i in causes)  # what the innermost option expected
    first = next(i for i in causes if lines[i][0] == deepest)
    ancestors: list[tuple[int, str]] = []
    for indent, text in lines[:first]:
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        ancestors.append((indent, text))
    keys = [key for _, text in ancestors for key in _KEY.findall(text)]
    classes = [name for _, text in ancestors for name in _CLASS.findall(text)]
    branches = [lines[first][1]]  # and the same union's other branches, the lines that follow at the same depth
    for indent, text in lines[first + 1:]:
        if indent != deepest:
            break
        if text.startswith("Expected") and not text.startswith(_NOT_THE_CAUSE):
            branches.append(text)
    text = " or ".join([branches[0], *(b.removeprefix("Expected ") for b in branches[1:])])
    if text.startswith("Expected") and "Got value" not in text:  # a union's: the value is given once, below
        given = next((t for i, t in lines[first:] if t.startswith("Given value:") and i < deepest), None)
        if given is not None:
            text = f"{text}. Got value: {given.removeprefix('Given value: ')}"
    where = f" ({classes[-1]})" if classes else ""
    return f"{'.init_args.'.join(keys)}{where}: {_strip_namespace(text)}" if keys else message


_NAMED = "no such class: "


def _cause_of(text: str) -> str:
    """A callable option's failure ("Type ... expects a function or a callable class: module 'torch.optim' has no
    attribute 'Foo'") as its cause alone; a nested option's ("...: Parser key ...") and other lines as they are."""
    _, found, cause = text.partition("expects a function or a callable class: ")
    if not found or _KEY.search(cause):
        return text
    return _NAMED + _strip_namespace(cause).split(". Got value:")[0]


def _strip_namespace(text: str) -> str:
    """Without the trailing ". Got value: Namespace(...)" (the whole parsed class) after the value itself."""
    return re.sub(r"\. Got value: Namespace\(.*$", "", text)


def _unknown_class(lines: list[tuple[int, str]]) -> str | None:
    """A class option given a name that is neither a class it takes nor an import path (e.g. --model.strategy DT)."""
    keys = [key for _, text in lines for key in _KEY.findall(text)]
    value = next((t.split(": ", 1)[1] for _, t in lines if t.startswith("Expected a dot import path string: ")), None)
    if not keys or value is None:
        return None
    key = ".init_args.".join(keys)
    if key == "model.strategy":
        from lightning_noprop import strategies

        methods = [name for name in strategies.__all__ if _is_method(getattr(strategies, name), strategies.Strategy)]
        takes = f": the methods are {', '.join(methods)}"
    else:
        bases = [b for t in lines if t[1].startswith("Subtypes:") for b in re.findall(r"<class '([^']+)'>", t[1])]
        bases = [base for base in bases if base != "NoneType"]
        takes = f": it takes a {bases[0].rsplit('.', 1)[-1]} (a subclass's name or import path)" if bases else ""
    return f"{key}: {value} is neither a class that this option takes nor an import path{takes}."


def _is_method(obj: Any, base: type) -> bool:
    return inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj)


def explain_required(message: str) -> tuple[str, str] | None:
    """For a run with no model: its subcommand and the advice (a config of configs/ or ``--model.strategy``);
    None for other messages."""
    found = re.search(rf"required: ({'|'.join(LightningCLI.subcommands())})\.model\.strategy", message)
    if found is None:
        return None
    command = found.group(1)
    return command, (f"no model chosen ({command}.model.strategy is required): give a config of configs/, e.g. "
                     f"`main.py {command} --config configs/noprop_dt.yaml`, or a method with --model.strategy NoPropDT.")


class NoPropArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one ``error:`` line and a pointer to ``--help`` (not the whole usage,
    some 90 lines), and which takes options only as spelt out (an abbreviation such as ``--trainer.max_epoch`` is an
    error, not silently another option)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        required = explain_required(message)
        if required is not None:  # the main parser's message: point at the subcommand's help
            command, message = required
            prog = f"{prog} {command}"
        sys.stderr.write(f"error: {distil(message)}\n(`{prog} --help` lists the options)\n")
        self.exit(USER_ERROR_EXIT_CODE)

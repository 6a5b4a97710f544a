"""The parser's errors: one line that names the option and what it takes (jsonargparse's own run to a dozen)."""

import pytest

from lightning_noprop.parser import distil

from .conftest import REPO
from .helpers import user_error

#: jsonargparse 4.53's message for --model.strategy.init_args.backbone.init_args.depth 20 (configs/bwbpf.yaml).
NESTED = """Parser key "model.strategy":
  Problem with given class_path 'lightning_noprop.strategies.BWBPF':
    Parser key "backbone":
      Does not validate against any of the Union subtypes
      Subtypes: [<class 'lightning_noprop.nn.backbones.Backbone'>, <class 'NoneType'>]
      Errors:
        - Problem with given class_path 'lightning_noprop.nn.ResNet':
            Parser key "depth":
              Expected a typing.Literal[18, 34, 50, 101, 152]. Got value: 20
        - Expected a <class 'NoneType'>
      Given value type: <class 'jsonargparse._util.NestedArg'>
      Given value: NestedArg(key='depth', val='20')"""
#: --model.optimizer.init_args.lr abc: the cause sits in a union whose value is given once, below its branches.
UNION = """Parser key "model.optimizer":
  Type typing.Callable[[collections.abc.Iterable], torch.optim.optimizer.Optimizer] expects a function or a callable class: Parser key "lr":

    - Expected a path but abc either not accessible or invalid
    - Does not validate against any of the Union subtypes
    Subtypes: [<class 'float'>, <class 'torch.Tensor'>]
    Errors:
      - Expected a <class 'float'>
      - Expected a dot import path string: abc
    Given value type: <class 'str'>
    Given value: abc. Got value: Namespace(class_path='torch.optim.AdamW', init_args=Namespace(lr='abc'))"""
UNKNOWN_CLASS = """Parser key "model.strategy":

  - Expected a path but NoPropXX either not accessible or invalid
  - Expected a dot import path string: NoPropXX"""

#: --trainer.limit_train_batches abc: every branch of the union but None is the cause.
BRANCHES = """Parser key "trainer.limit_train_batches":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'int'>, <class 'float'>, <class 'NoneType'>]
  Errors:
    - Expected a <class 'int'>
    - Expected a <class 'float'>
    - Expected a <class 'NoneType'>
  Given value type: <class 'str'>
  Given value: abc"""
#: --model.optimizer torch.optim.Foo
NO_SUCH_CLASS = """Parser key "model.optimizer":

  - Expected a path but torch.optim.Foo either not accessible or invalid
  - Type typing.Callable[[collections.abc.Iterable], torch.optim.optimizer.Optimizer] expects a function or a callable class: module 'torch.optim' has no attribute 'Foo'. Got value: torch.optim.Foo"""

@pytest.mark.parametrize(("message", "line"), [
    (NESTED, ("model.strategy.init_args.backbone.init_args.depth (lightning_noprop.nn.ResNet): Expected a "
             "typing.Literal[18, 34, 50, 101, 152]. Got value: 20")),
    (UNION, "model.optimizer.init_args.lr: Expected a <class 'float'>. Got value: abc"),
    (UNKNOWN_CLASS, ("model.strategy: NoPropXX is neither a class that this option takes nor an import path: the "
                    "methods are BWBPF, Backprop, NoPropCT, NoPropDT, NoPropFM, PlainCNN.")),
    (BRANCHES, "trainer.limit_train_batches: Expected a <class 'int'> or a <class 'float'>. Got value: abc"),
    (NO_SUCH_CLASS, "model.optimizer: no such class: module 'torch.optim' has no attribute 'Foo'"),
    ("unrecognized arguments: --trainer.max_epoch 3", "unrecognized arguments: --trainer.max_epoch 3"),
], ids=["nested", "union", "unknown class", "branches", "no such class", "one line"])  # fmt: skip
def test_a_nested_message_comes_down_to_the_option_and_its_cause(message, line):
    assert distil(message) == line


@pytest.mark.parametrize(("args", "phrase"), [
    ([], "give a config of configs/, e.g. `main.py fit --config configs/noprop_dt.yaml`"),
    (["--config", str(REPO / "configs/bwbpf.yaml"), "--model.strategy.init_args.backbone.init_args.depth", "20"],
     ("backbone.init_args.depth (lightning_noprop.nn.ResNet): Expected a typing.Literal[18, 34, 50, 101, 152]. Got "
     "value: 20\n")),
    (["--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.max_epochs", "abc"],
     "trainer.max_epochs: Expected a <class 'int'>. Got value: abc\n"),
], ids=["no config", "nested", "union"])  # fmt: skip
def test_the_cli_says_in_one_line_what_to_change(args, phrase, capsys):
    err = user_error(capsys, "fit", *args)
    assert phrase in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1].endswith(" fit --help` lists the options)"), "one line and the subcommand's help"


def _choosable_classes():
    """Every class of ours that a config can name with class_path (and ``--*.help`` describes), and their kin."""
    import inspect

    from lightning_noprop import anytime, nn, predictions, reporting, schedules, strategies

    modules = (strategies, nn, schedules, anytime, predictions, reporting)
    return sorted({obj for module in modules for obj in vars(module).values()
                   if inspect.isclass(obj) and obj.__module__.startswith("lightning_noprop.")},
                  key=lambda c: c.__qualname__)  # fmt: skip


@pytest.mark.parametrize("cls", _choosable_classes(), ids=lambda c: c.__qualname__)
def test_the_help_describes_each_class_with_a_whole_sentence(cls):
    """``--model.strategy.help NoPropDT`` shows the docstring's first line alone: it must not stop mid-sentence."""
    lines = cls.__doc__.strip().splitlines()
    assert lines[0].endswith("."), f"{cls.__qualname__}'s first docstring line is not a whole sentence: {lines[0]!r}"
    assert len(lines) == 1 or not lines[1].strip(), "a blank line after the summary, or the summary alone"

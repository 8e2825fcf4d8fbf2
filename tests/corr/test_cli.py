"""corr.cli: every dataclass field becomes a typed --option; absent options keep defaults."""
import argparse
from dataclasses import dataclass, field
from typing import Optional

import pytest

from corr.cli import add_dataclass_arguments, config_from_namespace, parse_config


@dataclass
class Example:
    steps: int = 100
    lr: float = 1e-4
    name: str = "crw"
    amp: Optional[bool] = None
    vis: bool = False
    size: Optional[tuple[int, ...]] = None
    seed: Optional[int] = field(default=3, metadata={"help": "random seed"})


def test_types_come_from_the_annotations():
    cfg = parse_config(Example, ["--steps", "7", "--lr", "0.5", "--name", "cycle", "--size", "32,48",
                                 "--seed", "none", "--vis", "--no-amp"])
    assert cfg == Example(steps=7, lr=0.5, name="cycle", amp=False, vis=True, size=(32, 48), seed=None)
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float)


def test_absent_options_keep_the_dataclass_defaults():
    assert parse_config(Example, []) == Example()


def test_only_given_options_reach_the_namespace():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example)
    namespace = parser.parse_args(["--steps", "100"])   # equal to the default, but given
    assert vars(namespace) == {"steps": 100}
    assert config_from_namespace(Example, namespace, name="pixel") == Example(name="pixel")


def test_bad_values_are_rejected_with_the_option_name(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--steps", "many"])
    assert "--steps" in capsys.readouterr().err


def test_help_shows_help_text_and_default(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"])
    out = capsys.readouterr().out
    assert "random seed (default: 3)" in out and "--no-amp" in out


def test_help_can_show_another_default_without_changing_the_value(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"], shown_defaults={"seed": "the preset's"})
    assert "random seed (default: the preset's)" in capsys.readouterr().out
    assert parse_config(Example, [], shown_defaults={"seed": "the preset's"}).seed == 3


def test_help_text_can_be_replaced(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"], help_texts={"name": "one of: crw|cycle"})
    assert "one of: crw|cycle (default: crw)" in capsys.readouterr().out

"""Typed settings: one dataclass read from TOML, key=value overrides and command-line flags."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from common.settings import ConfigError, add_arguments, from_namespace, load_config, to_dict


@dataclass(frozen=True)
class Example:
    out: Path = field(metadata={"help": "where to write"})
    source: list[str] = field(default_factory=list)
    steps: int = 10
    lr: float = 1e-3
    allow_private: bool = False
    precision: Literal["fp32", "bf16", "amp"] = "fp32"
    checkpoint: Path | None = None


def test_toml_then_overrides(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('out = "data/a"\nsteps = 5\nsource = ["wit:x.tsv"]\n')
    cfg = load_config(Example, toml, ["steps=7", "allow_private=true", "lr=0.5", "source=crawl:http://h/"])
    assert cfg == Example(Path("data/a"), ["crawl:http://h/"], 7, 0.5, True)
    assert to_dict(cfg)["out"] == "data/a"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["out=a", "stepz=3"], r"unknown setting\(s\) stepz .*valid: allow_private"),
        (["out=a", "steps=many"], r"`steps`: 'many' is not an integer"),
        (["out=a", "allow_private=maybe"], r"`allow_private`: 'maybe' is not a boolean"),
        (["out=a", "precision=fp64"], r"`precision`: 'fp64' is not one of 'fp32', 'bf16', 'amp'"),
        (["steps=3"], r"setting `out` .* is required"),
        (["noequals"], r"not key=value"),
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Example, None, overrides)


def test_wrong_type_in_toml(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('out = "x"\nsteps = "ten"\n')
    with pytest.raises(ConfigError, match=r"p\.toml|`steps`"):
        load_config(Example, toml)
    toml.write_text("out = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Example, toml)


def test_flags_match_fields_and_override_file(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    toml = tmp_path / "p.toml"
    toml.write_text('out = "from_file"\nsteps = 5\n')
    ns = parser.parse_args(["--steps", "9", "--allow-private", "--source", "a", "--source", "b"])
    cfg = from_namespace(Example, ns, toml)
    assert (cfg.out, cfg.steps, cfg.allow_private, cfg.source) == (Path("from_file"), 9, True, ["a", "b"])
    assert from_namespace(Example, parser.parse_args(["--out", "o"])).checkpoint is None


@pytest.mark.parametrize(
    "value, items",
    [
        ("[]", []),
        ("[ ]", []),
        ("", []),
        ("[a,b]", ["a", "b"]),
        ("[a, b]", ["a", "b"]),
        ('["a","b"]', ["a", "b"]),
        ("['a', 'b']", ["a", "b"]),
        ('["a,b", "c"]', ["a,b", "c"]),
        ("a,b", ["a", "b"]),
        ('"a", b', ["a", "b"]),
        ("crawl:http://h/", ["crawl:http://h/"]),
    ],
)
def test_a_list_setting_given_as_one_string(value, items):
    """`source=[]` is no sources, not the source '[]'; brackets and quotes are syntax, not items."""
    assert load_config(Example, None, ["out=o", f"source={value}"]).source == items


@pytest.mark.parametrize("value", ["[a,b", "[[a]]", "[a,[b]]", '["a]', '[a"]', '"a,b', "a,b'"])
def test_a_malformed_list_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"setting `source`: .* write \[\] for none") as raised:
        load_config(Example, None, ["out=o", f"source={value}"])
    assert "\n" not in str(raised.value)

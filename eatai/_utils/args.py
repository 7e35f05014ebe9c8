"""Command-line argument checks shared by `eatai` and the recipes: bad input stops at parse time.

Each function is an argparse `type=`: it turns the text into a value or raises
`argparse.ArgumentTypeError`, so that argparse reports the flag, the value and what was expected
before any data is read or any model is built. `ArgumentParser` prints that as one line.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..threats import parse_eps, split_threat

__all__ = ['ArgumentParser', 'positive_int', 'non_negative_int', 'positive_float', 'radius', 'lp_exponent',
           'existing_dir', 'existing_file', 'existing_path', 'data_source', 'threat_model', 'training_scheme', 'random_seed']


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line naming the problem (exit status 2, no usage block)."""

    def error(self, message: str):
        # argparse prints the whole usage block first; in a log that buries the one line that matters
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (counts: images, batch size, epochs, attack steps)."""
    value = _number(text, int, 'a whole number >= 1')
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (0 usually meaning 'off')."""
    value = _number(text, int, 'a whole number >= 0')
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def random_seed(text: str) -> int:
    """A random seed: a whole number in [0, 2**32), what numpy's seeding accepts."""
    value = _number(text, int, 'a seed, a whole number from 0 to 4294967295')
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a seed, a whole number from 0 to 4294967295, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, normalisation std)."""
    value = _number(text, float, 'a finite number > 0')
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def radius(text: str) -> str:
    """A radius > 0 written as a number or a fraction ('0.5', '8/255'); returned as written."""
    try:
        value = parse_eps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a radius > 0 such as 0.5 or 8/255, got {text!r}")
    return text


def lp_exponent(text: str) -> str:
    """The p of an l_p norm: a number >= 1 or 'inf'; returned as written."""
    try:
        value = parse_eps(text)
    except ValueError:
        value = math.nan
    if not value >= 1:   # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected p >= 1 (or inf), got {text!r}")
    return text


def existing_path(text: str) -> str:
    """A file or folder that exists."""
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


def existing_dir(text: str) -> str:
    """A folder that exists."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if path.exists() else f"{text!r} does not exist")
    return text


def existing_file(text: str) -> str:
    """A file that exists."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file" if path.exists()
                                         else f"{text!r} does not exist")
    return text


def data_source(text: str) -> str:
    """'sample' (the bundled CIFAR-10 sample) or a data folder that exists."""
    return text if text == 'sample' else existing_dir(text)


def threat_model(text: str) -> str:
    """A registered threat such as 'linf:8/255' or 'l1' (the dataset's radius); returned as written, since
    a bare name's strength depends on --dataset."""
    from ..evaluation.registry import canonical_threat, get_threat
    name, strength = split_threat(text)
    try:   # a bare name's default strength is checked once --dataset is known
        get_threat(text) if strength is not None else canonical_threat(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def training_scheme(text: str) -> str:
    """A training scheme such as 'eat', 'linf' or 'l2>eat@45', checked by the library's own parser."""
    from ..callbacks import make_strategy
    try:
        make_strategy(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text

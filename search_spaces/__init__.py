"""Named search spaces: which TrainConfig values a study samples, and how.

A ``SearchSpace`` is an Optuna define-by-run function (so params can be
conditional, like the InfoNCE temperature) with the paper's point, evaluated
first as the reference, and overrides fixed for every trial. Spaces know nothing
of Ray: the study turns them into a searcher, and a space can be checked, tested
and sampled on its own.

``get_space`` takes a built-in name (``paper``, ``default``, ``contrastive``; see
``search_spaces.builtin``) or the path of a YAML or TOML file whose format is
described in ``search_spaces.files``. Every space is checked against TrainConfig
when loaded, so a typo or an out-of-range value fails at once, with its name.
"""

from __future__ import annotations

from search_spaces.builtin import BUILTIN
from search_spaces.files import SUFFIXES, load_space_file
from search_spaces.space import SearchSpace
from trainer.config import ConfigError, did_you_mean

__all__ = ["BUILTIN", "SearchSpace", "get_space", "load_space_file"]


def get_space(name_or_path: str) -> SearchSpace:
    """The built-in space of that name, or the space of a .yaml, .yml or .toml file."""
    if str(name_or_path).lower().endswith(SUFFIXES):
        return load_space_file(name_or_path)
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    raise ConfigError(f"unknown search space {name_or_path!r}: choose one of {', '.join(BUILTIN)}, "
                      f"or give a {', '.join(SUFFIXES)} file{did_you_mean(str(name_or_path), BUILTIN)}")

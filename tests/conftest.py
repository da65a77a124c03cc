"""Shared fixtures and options.

``--sim-seed N`` replays simulation tests with one seed (each failure message prints
``seed=`` and ``t=``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sim-seed", type=int, default=None, help="run simulations with this seed")


DEFAULT_SEEDS = (1, 2, 3)


def seeds(*values: int):
    """Decorator: the seeds a simulation test runs with by default (``--sim-seed`` wins)."""

    def mark(function):
        function.sim_seeds = values
        return function

    return mark


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``seed`` runs once per seed, each seed its own test case."""
    if "seed" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--sim-seed")
        values = getattr(metafunc.function, "sim_seeds", DEFAULT_SEEDS)
        metafunc.parametrize("seed", [chosen] if chosen is not None else list(values))


@pytest.fixture
def wire_data() -> Path:
    return ROOT / "tests" / "data" / "wire"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0

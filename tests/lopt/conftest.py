"""Fixtures shared by the G.pt test files."""

import pytest

from tests.lopt.gpt_tiny import save_tiny


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
  path, params, _ = save_tiny(tmp_path_factory.mktemp("gpt") / "w")
  return path, params

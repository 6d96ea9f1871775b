import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # the transcriptions and helpers next to the tests
sys.path.insert(1, str(REPO / "bench"))  # released_recipe: the released code's data path, the baseline


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO

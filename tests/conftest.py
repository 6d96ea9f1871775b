import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # the transcriptions and helpers next to the tests


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO

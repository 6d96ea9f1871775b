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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``(data root, run folder, results)`` of one tiny trained run (inference_helpers.train_tiny),
    shared by the evaluate and predict tests, which only read it (evaluate adds its files beside)."""
    from inference_helpers import tiny_data, train_tiny
    root = tiny_data(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return root, out, train_tiny(root, out)


# The slow tier (``python -m pytest -m slow``, which .ci/run runs after the README's fast tier):
# the tests that train a model end to end carry ``@pytest.mark.slow`` themselves; so does, through
# this hook, every test that uses one of these fixtures, each of which compiles or trains first.
SLOW_FIXTURES = {
    "kernels": "compiles every CUDA kernel with ptxas for two architectures (bench/cuda_static.py)",
    "emu": "compiles the CUDA kernels' sources for the CPU emulation",
    "plugin": "builds the DALI plugin",
    "trained": "trains a tiny run",
    "runs": "trains tiny runs",
    "ddp_run": "trains with two torchrun processes",
    "uninterrupted": "trains the run that the interrupted ones are compared with",
    "flowers": "decodes the real Flowers-102 test split with two loaders",
    "flowers_train": "decodes the real Flowers-102 training split with three loaders",
}


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    # `make test` installs the data; a missing package is a set-up failure to see, not a skip.
    if not FASHION_DIR.is_dir():
        pytest.fail(f"{FASHION_DIR} is missing: run `make data` (installs Debian's dataset-fashion-mnist)")
    return FASHION_DIR

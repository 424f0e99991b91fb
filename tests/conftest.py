"""Shared test set-up: quiet TensorFlow, fixed thread counts for repeatable timings."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# one thread per math library, set before any test imports NumPy or TensorFlow (both read these
# once, at load): a timing then does not depend on the machine's core count. The worker processes
# the tests start inherit them; a variable already set wins.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two processes: most tests wait on brokers, not on a
    core), every cluster test runs in one process, so that one three-node cluster serves them
    all and their network faults never overlap."""
    import pytest

    for item in items:
        if "tests/cluster/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("cluster"))

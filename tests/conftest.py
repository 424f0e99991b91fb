"""Shared test set-up: quiet TensorFlow, fixed thread counts for repeatable timings."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# one thread per math library, set before any test imports NumPy or TensorFlow (both read these
# once, at load): a timing then does not depend on the machine's core count. The worker processes
# the tests start inherit them; a variable already set wins.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")

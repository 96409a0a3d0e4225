"""cadence: a real-time next-best-action engine.

A worker is one single-threaded event loop; its numpy work is small matrices per batch. A multi-threaded
BLAS would spin extra threads on the cores Redis and the broker need (measured: a batch's scoring cost
twice the CPU with OpenBLAS's default threads), so one BLAS thread unless the operator says otherwise.
This runs before numpy is imported by ``python -m cadence`` and the ``cadence`` command.
"""

import os as _os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

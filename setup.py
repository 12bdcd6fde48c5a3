"""Builds eddy's compiled modules, all in eddy.models.kernels: _linear (the exact linear
kernels), _columns (feature dicts to columns) and _stats (River's running statistics
over a batch); everything else is in pyproject.toml.

The flags are the point: the kernel must reproduce River's floating point bit for bit,
so no fast-math, no FMA contraction, no -march=native (a fused multiply-add rounds once
where Python rounds twice; reassociation changes the order of River's sums). They come
last on the compiler's command line, after Python's own CFLAGS and any $CFLAGS, so they
win. tests/unit/test_kernels.py checks the built module with probes.
"""

import os
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup

EXACT_FLAGS = [
    "-O2",
    "-fno-fast-math",
    "-fno-unsafe-math-optimizations",
    "-fno-associative-math",
    "-fno-reciprocal-math",
    "-fno-finite-math-only",
    "-fsigned-zeros",
    "-ftrapping-math",
    "-ffp-contract=off",
    "-fexcess-precision=standard",
    # pow/exp/log stay calls into libm, as CPython's float **, math.exp and math.log are.
    "-fno-builtin-pow",
    "-fno-builtin-exp",
    "-fno-builtin-log",
]

recorded = " ".join(
    part
    for part in (sysconfig.get_config_var("CFLAGS") or "", os.environ.get("CFLAGS", ""))
    if part
)
recorded = f"{recorded} {' '.join(EXACT_FLAGS)}".strip()

extensions = [
    Extension(
        "eddy.models.kernels._linear",
        ["models/kernels/_linear.pyx"],
        extra_compile_args=EXACT_FLAGS,
        define_macros=[("EDDY_KERNEL_CFLAGS", '"' + recorded.replace('"', "'") + '"')],
    ),
    Extension(
        "eddy.models.kernels._columns",
        ["models/kernels/_columns.pyx"],
        extra_compile_args=EXACT_FLAGS,
    ),
    Extension(
        "eddy.models.kernels._stats",
        ["models/kernels/_stats.pyx"],
        extra_compile_args=EXACT_FLAGS,
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))

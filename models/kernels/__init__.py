"""Compiled, exact-order kernels for River models (see :mod:`eddy.models.kernels.linear`
and README.md beside this file)."""

from eddy.models.kernels.linear import LEARN, PREDICT, Applied, CompiledLinear, compile_river

__all__ = ["LEARN", "PREDICT", "Applied", "CompiledLinear", "compile_river"]

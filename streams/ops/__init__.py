"""Operations: the ``eddy`` command line, ``eddy up`` and its supervisor, the maintenance
commands, and ``eddy produce`` with its sources.
"""

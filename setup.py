"""Declares the Cython extension only; everything else lives in pyproject.toml.

Set ASSIGNCORE_DEBUG_BUILD=1 to compile the kernel with bounds checking, wraparound and
initialisation checks turned back on (used by CI for one pass of the suite).
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ASSIGNCORE_DEBUG_BUILD", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

extensions = [
    Extension(
        "assigncore._kernel",
        ["src/assigncore/_kernel.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("ASSIGNCORE_BOUNDS_CHECKED", "1" if DEBUG else "0")],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))

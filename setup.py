"""Build script. The compiled kernels (csrc/) are added here by the kernel work;
until then the package is pure Python and this only defers to pyproject.toml."""
from setuptools import setup

setup()

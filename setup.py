"""pip entry point for development installs (`pip install -e .`, see the Makefile).

Everything is declared in setup.cfg. On a robot the package is built by colcon from
CMakeLists.txt (ament_cmake), which ignores this file.
"""
from setuptools import setup

setup()

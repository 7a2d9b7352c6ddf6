"""Gaussian rasterisation with one API and two backends (see :mod:`.api`)."""
from chorus_ros.core.render.api import (RenderOutput, RenderSettings, available_backends, render,
                                        select_backend)

__all__ = ["RenderOutput", "RenderSettings", "available_backends", "render", "select_backend"]

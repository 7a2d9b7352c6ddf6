"""Use a prebuilt gsplat CUDA extension instead of gsplat's JIT build (minutes on a GPU machine).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that holds one;
``scripts/gpu_check.py`` puts this folder first on PYTHONPATH only when it is given a prebuilt
extension (``.gpu/gsplat_cuda.so.xz``, returned by an earlier GPU check's build part), and sets

  CHORUS_GSPLAT_SO        the extension (``gsplat_cuda.so``, built by gsplat 1.5.3's JIT build)
  CHORUS_GSPLAT_SO_TORCH  the torch version it was built against

gsplat's ``cuda/_backend.py`` first tries ``from gsplat import csrc`` (the module of a setup.py
build) and only then compiles. The finder below answers that import with the prebuilt module
(its init function is named after the JIT build, ``gsplat_cuda``). When torch's version differs,
or the file does not load, the import fails with ImportError and gsplat compiles as usual.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys


class _PrebuiltGsplat(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        so = os.environ.get("CHORUS_GSPLAT_SO")
        if name != "gsplat.csrc" or not so or not os.path.isfile(so):
            return None
        return importlib.machinery.ModuleSpec(name, self, origin=so)

    def create_module(self, spec):
        import torch  # the extension links against libtorch, loaded by importing torch

        want = os.environ.get("CHORUS_GSPLAT_SO_TORCH")
        if want and torch.__version__ != want:
            raise ImportError(f"prebuilt gsplat extension {spec.origin} was built for torch {want}, "
                              f"this is {torch.__version__}")
        inner = importlib.machinery.ExtensionFileLoader("gsplat_cuda", spec.origin)
        return inner.create_module(importlib.util.spec_from_file_location("gsplat_cuda", spec.origin, loader=inner))

    def exec_module(self, module):
        import _imp

        _imp.exec_dynamic(module)


sys.meta_path.insert(0, _PrebuiltGsplat())

"""Teacher registry: ``build_teacher(spec)`` by string key; an unknown key lists the known ones."""
from __future__ import annotations

from typing import Any, Callable

from chorus_ros.core.errors import RegistryError
from chorus_ros.core.teachers.base import Teacher, TeacherSpec

__all__ = ["TEACHERS", "register_teacher", "build_teacher", "known_teachers"]

TEACHERS: dict[str, Callable[..., Teacher]] = {}
"""Registry key -> teacher class (called as ``cls(spec)`` or ``cls(spec, **resources)``)."""


def register_teacher(name: str):
    """Class decorator registering a :class:`Teacher` subclass under ``name``."""
    def deco(cls):
        if name in TEACHERS and TEACHERS[name] is not cls:
            raise RegistryError(f"teacher type {name!r} is already registered by {TEACHERS[name].__name__}")
        TEACHERS[name] = cls
        return cls
    return deco


def known_teachers() -> list[str]:
    """Sorted registry keys."""
    return sorted(TEACHERS)


def build_teacher(spec: TeacherSpec | dict, **resources: Any) -> Teacher:
    """Build the teacher named by ``spec.type``.

    Args:
        spec: a :class:`TeacherSpec` or its dict form ``{kind, type, options}``.
        resources: shared objects a teacher may use instead of building its own, e.g.
            ``text_encoder=`` (a :class:`~chorus_ros.core.text.TextEncoder`) for 'oracle_language'.
            Teachers ignore resources they do not use.
    """
    spec = TeacherSpec.from_dict(spec)
    if spec.type not in TEACHERS:
        raise RegistryError(f"unknown teacher type {spec.type!r}; known: {', '.join(known_teachers())}")
    cls = TEACHERS[spec.type]
    accepted = getattr(cls, "RESOURCES", ())
    return cls(spec, **{k: v for k, v in resources.items() if k in accepted and v is not None})

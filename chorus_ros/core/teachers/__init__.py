"""2D teachers whose dense features the encoder is trained to predict (a registry).

Real teachers (weights from local files only): ``'open_clip_dense'`` (language-aligned),
``'vit_generalist'`` (a DINO-style timm ViT), ``'sam_image_encoder'`` (timm SAM encoder),
``'mobilesam'`` (MobileSAM's TinyViT image encoder, :mod:`.tinyvit`); ``'gocl'`` (identity
features of a trained GOCL object model over another teacher, :mod:`chorus_ros.core.objects.teacher`).
Synthetic oracles for synthetic scenes: ``'oracle_language'``, ``'oracle_generalist'``,
``'oracle_object'``.

Example::

    from chorus_ros.core.teachers import TeacherSpec, build_teacher, FrameContext
    t = build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dim": 32}))
    fmap = t(image, FrameContext(labels=gt_labels, label_set=labels))   # [h, w, 32]
"""
from chorus_ros.core.teachers.base import TEACHER_KINDS, FrameContext, Teacher, TeacherSpec
from chorus_ros.core.teachers.registry import TEACHERS, build_teacher, known_teachers, register_teacher
from chorus_ros.core.teachers import oracles as _oracles  # noqa: F401  (registers)
from chorus_ros.core.teachers import real as _real  # noqa: F401  (registers; models load lazily)
from chorus_ros.core.teachers import tinyvit as _tinyvit  # noqa: F401  (registers 'mobilesam')
from chorus_ros.core.objects import teacher as _gocl_teacher  # noqa: F401,E402  (registers 'gocl')

__all__ = ["TEACHER_KINDS", "FrameContext", "Teacher", "TeacherSpec", "TEACHERS", "build_teacher",
           "known_teachers", "register_teacher"]

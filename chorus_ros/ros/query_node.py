"""query_node: open-vocabulary object queries over the latest object map.

A separate, light node: it never touches the Gaussian map, only the ``objects`` topic published
by chorus_node, so it answers while the perception node is busy encoding or rendering.

Subscriptions:
    objects                          chorus_ros/ObjectMap   reliable, transient-local, depth 1
    semantic/label_info              chorus_ros/LabelInfo   reliable, transient-local, depth 1
    <relevance_camera>/pose          geometry_msgs/PoseStamped   best effort (``relevance_enabled``)
    <relevance_camera>/camera_info   sensor_msgs/CameraInfo      best effort, paired by stamp
Services (own callback group):
    ~/query   chorus_ros/QueryObjects  objects ranked by cosine(object embedding, text embedding)
              (or, ``ranking: relative``, by the query's probability against the label table's
              class names), ``top_k`` (0 = ``default_top_k``), ``min_score``; reports the map
              sequence used. Each hit is the whole object's ObjectRecord (box, Gaussian count =
              support, code id, confidence) with ``score`` set to its query score
    ~/embed   chorus_ros/EmbedText     unit text embeddings (cached per string)
Clients:
    <perception_node>/render_relevance  chorus_ros/RenderRelevance, called asynchronously for
              the last query and each paired view of ``relevance_camera`` (``relevance_enabled``)
Publications:
    ~/relevance/image_raw   sensor_msgs/Image 32FC1 (cosine per pixel, NaN = no Gaussian),
              the view's stamp and camera frame; reliable, depth 2
Parameters: :class:`QueryNodeConfig`. Empty or too long texts (``max_text_length``) get
``success = false`` and a message naming the problem.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from chorus_ros.core.errors import ChorusError, InvalidInputError
from chorus_ros.ros import conversions as cv
from chorus_ros.ros import qos
from chorus_ros.ros.params import ParameterBinding
from chorus_ros.ros.runtime import ErrorReporter, StampPairer, guarded

__all__ = ["QueryNodeConfig", "QueryNode", "rank_objects", "check_text", "parameter_specs", "parameter_names", "main"]


@dataclass
class QueryNodeConfig:
    """Parameters of query_node."""

    checkpoint: str = ""
    """Checkpoint directory whose text encoder embeds queries ('' = the pipeline's default). Read at start."""
    device: str = "cpu"
    """Torch device of the text encoder. Read at start."""
    map_frame: str = "map"
    """Frame of the object map (the only target_frame answered without TF)."""
    default_top_k: int = 5
    """Objects returned when a request asks for top_k = 0."""
    max_text_length: int = 1000
    """Longest accepted query or text, characters."""
    max_texts: int = 256
    """Most texts accepted by one ~/embed request."""
    service_queue_depth: int = 100
    """Request queue depth of ~/query and ~/embed (rclpy QoS depth): concurrent clients beyond it lose requests."""
    ranking: str = "cosine"
    """'cosine': rank by cosine(object embedding, query embedding); 'relative': by the query's
    softmax probability against the label table's class names as negatives (scores in [0, 1])."""
    relative_temperature: float = 0.05
    """Softmax temperature of the 'relative' ranking (on cosines)."""
    support_half: float = 0.05
    """Object support in the score: positive scores are multiplied by min(1, n / (2 x support_half x
    the median object Gaussian count)), so a fragment cannot outrank a whole object while objects
    of a tenth of the median or more keep their raw match; 0 disables."""
    perception_node: str = "chorus_node"
    """Name of the perception node whose ~/render_relevance service is called."""
    relevance_enabled: bool = False
    """Request a relevance image of the last query for each view of relevance_camera."""
    relevance_camera: str = "camera_0"
    """Camera namespace whose pose + CameraInfo drive relevance images."""
    relevance_max_rate_hz: float = 2.0
    """Most relevance requests per second (by view stamp); one is in flight at a time."""
    pair_tolerance_s: float = 0.0
    """Largest stamp difference for pairing a pose with a CameraInfo, seconds (0 = exact)."""
    error_throttle_s: float = 5.0
    """Errors of one kind are logged at most once per this many seconds."""


READ_ONLY = ["checkpoint", "device", "perception_node", "relevance_camera", "service_queue_depth"]
RANGES = {"relative_temperature": (1e-4, 10.0), "default_top_k": (1, 10000), "service_queue_depth": (1, 100000),
          "max_text_length": (1, 1_000_000), "max_texts": (1, 100000),
          "relevance_max_rate_hz": (0.0, 1000.0), "support_half": (0.0, 100.0), "pair_tolerance_s": (0.0, 10.0),
          "error_throttle_s": (0.0, 3600.0)}


def parameter_specs() -> list:
    """The ParamSpec of every parameter query_node declares (read-only flags and ranges included)."""
    from chorus_ros.ros.params import param_specs
    return param_specs(QueryNodeConfig(), read_only=READ_ONLY, ranges=RANGES)


def parameter_names() -> set[str]:
    """Every parameter query_node declares from QueryNodeConfig (no node needed)."""
    return {s.name for s in parameter_specs()}


def check_text(text: str, max_length: int) -> str:
    """Return ``text`` if it is a usable query, else raise InvalidInputError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("query text is empty")
    if len(text) > max_length:
        raise InvalidInputError(f"query text has {len(text)} characters; the limit is {max_length} "
                                f"(parameter max_text_length)")
    return text.strip()


def rank_objects(table: cv.ObjectTable, embedding: np.ndarray, top_k: int, min_score: float,
                 negatives: np.ndarray | None = None, temperature: float = 0.05,
                 support_half: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the best objects, best first (stable for ties).

    Args:
        table: the object map as arrays (unit embeddings).
        embedding: ``[D]`` query embedding (normalised here).
        top_k: most results.
        min_score: objects scoring below are dropped.
        negatives: ``[K, D]`` unit embeddings of competing phrases (e.g. the other class names):
            the score becomes ``softmax([cos(o, q), cos(o, n_1..K)] / temperature)[0]``, the
            probability that the object is the query rather than any negative. None: the score is
            ``cos(o, q)``.
        temperature: softmax temperature of the relative score.
        support_half: > 0 weighs positive scores by the objects' support (Gaussian counts,
            :func:`chorus_ros.core.objects.support_scores`), so fragments rank below whole objects.
    """
    e = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if e.shape[0] != table.dim:
        raise InvalidInputError(f"query embedding has {e.shape[0]} values but the object map's "
                                f"embeddings have {table.dim}")
    n = float(np.linalg.norm(e))
    if not np.isfinite(n) or n == 0:
        raise InvalidInputError("query embedding is zero or not finite")
    scores = table.embeddings @ (e / n)
    if negatives is not None and len(negatives):
        neg = np.asarray(negatives, dtype=np.float32).reshape(-1, table.dim)
        logits = np.concatenate([scores[:, None], table.embeddings @ neg.T], axis=1) / float(temperature)
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        scores = (w[:, 0] / w.sum(axis=1)).astype(np.float32)
    if support_half > 0 and len(scores):
        from chorus_ros.core.objects.support import SupportConfig, support_scores
        counts = np.array([int(o.gaussian_count) for o in table.msg.objects], dtype=np.float64)
        ref = float(np.median(counts[table.has_embedding])) if table.has_embedding.any() else None
        scores = support_scores(scores, counts, SupportConfig(half=float(support_half)), reference=ref)
    valid = table.has_embedding & (scores >= min_score)
    idx = np.nonzero(valid)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")][: max(0, int(top_k))]
    return idx, scores[idx].astype(np.float32)


def load_text_encoder(checkpoint: str, device: str):
    """The text encoder whose space the object embeddings live in: the one named in the
    checkpoint's metadata (only ``config.yaml`` and the text tower's weights are read)."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint_config
    from chorus_ros.core.pipeline import text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder
    if not checkpoint:
        raise InvalidInputError("parameter 'checkpoint' is empty: set it to a checkpoint directory "
                                "(launch argument checkpoint:=DIR)")
    _, meta = load_checkpoint_config(checkpoint)
    spec = text_spec_from_meta(meta, checkpoint)
    spec.device = device
    return build_text_encoder(spec)


class QueryNode(Node):
    """Language queries over the object map (see the module docstring)."""

    def __init__(self, node_name: str = "query_node", *, text_encoder=None, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        try:
            self._setup(text_encoder)
        except BaseException:
            self.destroy_node()     # release the rcl node: a half-built node must not linger
            raise

    def _setup(self, text_encoder) -> None:
        self.params = ParameterBinding(self, QueryNodeConfig(), read_only=READ_ONLY, ranges=RANGES,
                                       validate=self._validate_params, on_change=self._on_params)
        cfg: QueryNodeConfig = self.params.config
        self.errors = ErrorReporter(self.get_logger().error, cfg.error_throttle_s)
        self.text_encoder = text_encoder or load_text_encoder(cfg.checkpoint, cfg.device)
        self._encoder_lock = threading.Lock()
        self._table: cv.ObjectTable | None = None
        self._label_names: list[str] | None = None
        self._last_query: np.ndarray | None = None
        self._pairer = StampPairer(int(cfg.pair_tolerance_s * 1e9))
        self._in_flight = False
        self._last_relevance_ns: int | None = None
        self.relevance_images = 0

        from chorus_ros.msg import LabelInfo, ObjectMap
        from chorus_ros.srv import EmbedText, QueryObjects, RenderRelevance
        inputs = MutuallyExclusiveCallbackGroup()
        # reentrant: concurrent clients are answered in parallel, none waits behind another's call
        services = ReentrantCallbackGroup()
        self.create_subscription(ObjectMap, "objects", self._on_objects, qos.latched(),
                                 callback_group=inputs, qos_overriding_options=qos.overrides(durability=True))
        self.create_subscription(LabelInfo, "semantic/label_info", self._on_labels, qos.latched(),
                                 callback_group=inputs, qos_overriding_options=qos.overrides(durability=True))
        srv_qos = qos.services(cfg.service_queue_depth)
        self.create_service(QueryObjects, "~/query", self._srv_query, callback_group=services, qos_profile=srv_qos)
        self.create_service(EmbedText, "~/embed", self._srv_embed, callback_group=services, qos_profile=srv_qos)
        self._relevance_pub = self.create_publisher(Image, "~/relevance/image_raw", qos.images(),
                                                    qos_overriding_options=qos.overrides())
        self._relevance_client = self.create_client(
            RenderRelevance, f"{cfg.perception_node.strip('/')}/render_relevance", callback_group=inputs)
        cam = cfg.relevance_camera.strip("/")
        self.create_subscription(PoseStamped, f"{cam}/pose", self._on_pose, qos.sensor_input(),
                                 callback_group=inputs, qos_overriding_options=qos.overrides())
        self.create_subscription(CameraInfo, f"{cam}/camera_info", self._on_info, qos.sensor_input(),
                                 callback_group=inputs, qos_overriding_options=qos.overrides())
        self.get_logger().info(f"query_node ready: text embeddings of dim {self.text_encoder.dim}")

    @property
    def config(self) -> QueryNodeConfig:
        return self.params.config

    @staticmethod
    def _validate_params(cfg: QueryNodeConfig, names: list[str]) -> None:
        if cfg.ranking not in ("cosine", "relative"):
            raise ValueError(f"ranking must be 'cosine' or 'relative', got {cfg.ranking!r}")

    def _on_params(self, cfg: QueryNodeConfig, names: list[str]) -> None:
        self._pairer.tolerance_ns = int(cfg.pair_tolerance_s * 1e9)
        self.errors.throttle_s = cfg.error_throttle_s

    # ------------------------------------------------------------------------ object map
    @guarded("object map callback")
    def _on_objects(self, msg) -> None:
        try:
            self._table = cv.objectmap_to_table(msg)      # one reference swap: readers never lock
        except (ChorusError, ValueError) as e:
            self.errors.report("object map rejected", e)

    @guarded("label table callback")
    def _on_labels(self, msg) -> None:
        self._label_names = [e.name for e in sorted(msg.labels, key=lambda e: e.id)]

    @property
    def table(self) -> cv.ObjectTable | None:
        return self._table

    def embed(self, texts: list[str]) -> np.ndarray:
        """``[T, D]`` unit embeddings (cached by the text encoder)."""
        with self._encoder_lock:
            return self.text_encoder.encode(list(texts)).detach().cpu().numpy().astype(np.float32)

    # -------------------------------------------------------------------------- services
    @guarded("query", service=True)
    def _srv_query(self, req, res):
        cfg = self.config
        table = self._table
        try:
            text = check_text(req.text, cfg.max_text_length)
            if table is None:
                raise InvalidInputError("no object map received yet (topic 'objects')")
            frame = table.msg.header.frame_id or cfg.map_frame
            if req.target_frame and req.target_frame.lstrip("/") != frame.lstrip("/"):
                raise InvalidInputError(f"target_frame {req.target_frame!r}: no transform from "
                                        f"{frame!r} is available to this node")
            if not np.isfinite(req.min_score):
                raise InvalidInputError(f"min_score must be finite, got {req.min_score}")
            emb = self.embed([text])[0]
            negatives = None
            if cfg.ranking == "relative":
                names = self._label_names
                if not names:
                    raise InvalidInputError("ranking 'relative' needs the label table (topic "
                                            "'semantic/label_info'); none received yet")
                others = [n for n in names if n.strip().lower() != text.lower()]
                negatives = self.embed(others) if others else None
            idx, scores = rank_objects(table, emb, req.top_k or cfg.default_top_k, req.min_score,
                                       negatives, cfg.relative_temperature, cfg.support_half)
            self._last_query = emb
            objs = []
            for i, s in zip(idx.tolist(), scores.tolist()):
                o = table.msg.objects[i]
                # the whole record (every field, so none is dropped when the message grows), query score
                hit = type(o)(**{f: getattr(o, f) for f in o.get_fields_and_field_types()})
                hit.score = float(s)
                objs.append(hit)
            res.objects, res.scores = objs, [float(s) for s in scores]
            res.map_sequence, res.frame_id = int(table.msg.map_sequence), frame
            res.success = True
            res.message = f"{len(objs)} of {len(table.msg.objects)} objects (map sequence {table.msg.map_sequence})"
        except (ChorusError, ValueError) as e:
            res.success, res.message = False, self.errors.report("query", e)
            res.map_sequence = int(table.msg.map_sequence) if table is not None else 0
        return res

    @guarded("embed", service=True)
    def _srv_embed(self, req, res):
        cfg = self.config
        try:
            if not req.texts:
                raise InvalidInputError("no texts given")
            if len(req.texts) > cfg.max_texts:
                raise InvalidInputError(f"{len(req.texts)} texts; the limit is {cfg.max_texts} (max_texts)")
            texts = [check_text(t, cfg.max_text_length) for t in req.texts]
            emb = self.embed(texts)
            res.dim = int(emb.shape[1])
            res.embeddings = emb.ravel().tolist()
            res.success, res.message = True, ""
        except (ChorusError, ValueError) as e:
            res.success, res.message = False, self.errors.report("embed", e)
        return res

    # ------------------------------------------------------------------------- relevance
    @guarded("pose callback")
    def _on_pose(self, msg: PoseStamped) -> None:
        pair = self._pairer.add_a("cam", cv.stamp_to_ns(msg.header.stamp), msg)
        if pair is not None:
            self._request_relevance(*pair)

    @guarded("camera_info callback")
    def _on_info(self, msg: CameraInfo) -> None:
        pair = self._pairer.add_b("cam", cv.stamp_to_ns(msg.header.stamp), msg)
        if pair is not None:
            self._request_relevance(*pair)

    def _request_relevance(self, pose: PoseStamped, info: CameraInfo, stamp_ns: int) -> None:
        cfg = self.config
        if not cfg.relevance_enabled or self._last_query is None or self._in_flight:
            return
        last = self._last_relevance_ns
        if cfg.relevance_max_rate_hz > 0 and last is not None and \
                stamp_ns - last < 1e9 / cfg.relevance_max_rate_hz:
            return
        if not self._relevance_client.service_is_ready():
            return
        from chorus_ros.srv import RenderRelevance
        req = RenderRelevance.Request(embedding=self._last_query.tolist(), pose=pose, camera_info=info)
        self._in_flight = True
        self._last_relevance_ns = stamp_ns
        self._relevance_client.call_async(req).add_done_callback(self._on_relevance)

    @guarded("render_relevance response")
    def _on_relevance(self, future) -> None:
        self._in_flight = False
        try:
            res = future.result()
        except Exception as e:  # the service went away, cancelled...
            self.errors.report("render_relevance call", e)
            return
        if res is None or not res.success:
            self.errors.report("render_relevance", res.message if res is not None else "no response")
            return
        self._relevance_pub.publish(res.image)
        self.relevance_images += 1


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run chorus_ros query_node``."""
    from chorus_ros.ros.bringup import run_nodes
    return run_nodes([QueryNode], args=args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Checkpoint -> model + text encoder; points -> features; features x text queries -> labels and scores.

Scores: ``classify`` gives every point the query with the highest cosine similarity between the point's feature
and the query's text embedding. ``score="cosine"`` (default) reports that cosine similarity (in [-1, 1]);
``score="softmax"`` reports the softmax probability of that query over the given queries, using the model's
learned temperature (``logit_scale``). A point whose score is below ``min_score`` gets label -1 (unknown).

Large clouds are cut into spatial chunks (a k-d split into cells of at most ``chunk_points`` points); each chunk is
run with every point within ``chunk_margin`` metres of its cell as context, and only the cell's own points keep
their outputs, so points near a cut see (nearly) the same neighbourhood as in one pass. With a margin at least the
model's receptive field (``SpUNet.receptive_field()``) chunked and one-pass features are identical.

Test-time passes (``passes`` > 1): the features are averaged over several network passes, each on one random point
per ``pass_voxel`` cell (a randomly shifted grid) of the cloud turned about gravity by a random angle - the repeated
grid sampling that stage 2 pseudo-labels with, used at inference. They help checkpoints whose voxel features include
the point offsets (``offset_feature``, older checkpoints), which depend on the point density; the figures are in
training/README.md ("Test-time passes"). Passes are seeded (``seed``), so a cloud always gets the same labels.

``cloud_features`` keeps a cloud's per-voxel (or per-superpoint) features; ``label_features`` answers any query
list from them without a network pass (the segmenter node caches them per cloud). ``label_points`` streams the same
classification chunk by chunk, so memory stays O(N) whatever the embedding size.
"""
from __future__ import annotations

import functools
import logging
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cloud import PointCloud
from .grid_sampling import sample_one_per_voxel, turn_about_gravity
from .model.backend import resolve_device
from .model.checkpoint import check_embed_dim, load_checkpoint, model_fingerprint
from .model.unet import SpUNet
from .model.voxelize import as_points
from .superpoints import SuperpointConfig, superpoints as compute_superpoints
from .text import build_text_encoder

log = logging.getLogger(__name__)

SCORE_KINDS = ("cosine", "softmax")


@dataclass
class Chunk:
    """core: indices of the points this chunk labels; context: indices fed to the network (core included)."""

    core: np.ndarray
    context: np.ndarray


def plan_chunks(xyz: np.ndarray, max_points: int, margin: float) -> list[Chunk]:
    """Split points into cells of <= max_points by median cuts along the longest axis, plus a context margin."""
    xyz = np.asarray(xyz, dtype=np.float32)
    n = len(xyz)
    if n <= max_points:
        everything = np.arange(n)
        return [Chunk(core=everything, context=everything)]
    cells = []
    stack = [np.arange(n)]
    while stack:
        idx = stack.pop()
        if len(idx) <= max_points:
            cells.append(idx)
            continue
        pts = xyz[idx]
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        half = len(idx) // 2
        order = np.argpartition(pts[:, axis], half)
        stack.append(idx[order[half:]])
        stack.append(idx[order[:half]])
    chunks = []
    for core in cells:
        lo = xyz[core].min(axis=0) - margin
        hi = xyz[core].max(axis=0) + margin
        inside = np.all((xyz >= lo) & (xyz <= hi), axis=1)
        chunks.append(Chunk(core=np.sort(core), context=np.flatnonzero(inside)))
    return chunks


@dataclass
class CloudFeatures:
    """Per-unit features of one cloud, computed once and classified for any query list without a network pass.

    ``chunks``: (core point indices, unit features (M, D) normalised, unit row of each core point) per chunk, as
    ``Segmenter.iter_voxel_features`` yields them. Units are model voxels (or superpoints), so a map of N points
    holds a few times fewer rows than points. ``stamp`` is the caller's time of the cloud (seconds).
    """

    n_points: int
    chunks: list
    stamp: float = 0.0


@dataclass
class PointLabels:
    """The answer to a query list: ``label`` int64 (N,) index into the queries, -1 below ``min_score``;
    ``score`` float32 (N,); ``best`` float32 (Q,) the highest cosine similarity of each query over the cloud
    (NaN for an empty cloud)."""

    label: np.ndarray
    score: np.ndarray
    best: np.ndarray


def superpoint_average(segment: torch.Tensor, n_segments: int, chunks) -> torch.Tensor:
    """(n_segments, D) normalised: each superpoint's feature, the mean over its points of their units' features.
    ``segment`` (N,) int64: the superpoint of every point the chunks index (-1 = none); ``chunks``: (core indices,
    unit features, unit row of each core point) as ``iter_voxel_features`` yields them. One row per distinct
    (unit, superpoint) pair, weighted by its point count: no (N, D) array."""
    sums = None
    for core, feats, rows in chunks:
        mine = segment[core] >= 0
        key = rows[mine.to(rows.device)] * n_segments + segment[core[mine]].to(rows.device)
        pair, count = torch.unique(key, return_counts=True)
        if sums is None:
            sums = torch.zeros(n_segments, feats.shape[1], dtype=torch.float32, device=feats.device)
        sums.index_add_(0, pair % n_segments, feats.index_select(0, pair // n_segments) * count.unsqueeze(1).float())
    return F.normalize(sums, dim=1)


class Segmenter:
    """Open-vocabulary segmentation of point clouds with a trained SpUNet and its text encoder.

    chunk_points: most points per chunk core (bounds memory; a 2M-point map runs on a CPU in several chunks);
    chunk_margin: context metres around each chunk (default: the model's receptive field, capped at 1.5 m);
    max_queries / max_query_chars: limits on one request's query list;
    passes: test-time passes averaged per voxel (1 = one pass on every point); pass_voxel: their sampling cell
    (default: the model's voxel size); rotate_passes: turn the cloud about gravity in each pass; seed: their RNG.
    superpoints: a ``SuperpointConfig`` (or True for the defaults) to average the features over superpoints by
    default (see ``iter_voxel_features``); None/False = per voxel.
    The model is put in eval mode (inference uses the batch-norm running statistics).
    """

    def __init__(self, model: SpUNet, text_encoder, *, vocabulary=(), meta=None, chunk_points: int = 400_000,
                 chunk_margin: float | None = None, max_queries: int = 256, max_query_chars: int = 200,
                 passes: int = 1, pass_voxel: float | None = None, rotate_passes: bool = True, seed: int = 0,
                 superpoints: SuperpointConfig | bool | None = None):
        if not isinstance(model, SpUNet):
            raise TypeError(f"Segmenter needs an SpUNet, got {type(model).__name__}")
        check_embed_dim(model.embed_dim, text_encoder)
        if int(chunk_points) < 1:
            raise ValueError(f"chunk_points must be >= 1, got {chunk_points!r}")
        if chunk_margin is None:
            chunk_margin = min(model.receptive_field(), 1.5)
        if not np.isfinite(chunk_margin) or chunk_margin < 0:
            raise ValueError(f"chunk_margin must be >= 0 metres, got {chunk_margin!r}")
        if int(max_queries) < 1 or int(max_query_chars) < 1:
            raise ValueError("max_queries and max_query_chars must be >= 1")
        if isinstance(passes, bool) or int(passes) != passes or passes < 1:
            raise ValueError(f"passes must be an integer >= 1, got {passes!r}")
        if pass_voxel is None:
            pass_voxel = model.voxel_size
        if not np.isfinite(pass_voxel) or pass_voxel <= 0:
            raise ValueError(f"pass_voxel must be > 0 metres, got {pass_voxel!r}")
        self.model = model.eval()
        self.text_encoder = text_encoder
        self.vocabulary = list(vocabulary)
        self.meta = dict(meta or {})
        self.chunk_points = int(chunk_points)
        self.chunk_margin = float(chunk_margin)
        self.max_queries = int(max_queries)
        self.max_query_chars = int(max_query_chars)
        self.passes = int(passes)
        self.pass_voxel = float(pass_voxel)
        self.rotate_passes = bool(rotate_passes)
        self.seed = int(seed)
        if superpoints is True:
            superpoints = SuperpointConfig()
        if superpoints is not None and superpoints is not False and not isinstance(superpoints, SuperpointConfig):
            raise TypeError(f"superpoints must be a SuperpointConfig, True, False or None, got {superpoints!r}")
        self.superpoints = superpoints or None

    @classmethod
    def load(cls, path, device="auto", *, text_encoder=None, **kwargs) -> "Segmenter":
        """Load a checkpoint on ``device`` ('auto' = cuda if available) and build its text encoder.

        text_encoder: an already built TextEncoder, or a spec dict overriding the checkpoint's (for instance a
        local weights path on this machine); either must produce the checkpoint's embedding dimension.
        """
        dev = resolve_device(device)
        ckpt = load_checkpoint(path, dev)
        if text_encoder is None:
            encoder = ckpt.build_text_encoder(device=dev)
        elif isinstance(text_encoder, dict):

            encoder = build_text_encoder(text_encoder, device=dev)
        else:
            encoder = text_encoder
        check_embed_dim(ckpt.embed_dim, encoder, path)
        return cls(ckpt.model, encoder, vocabulary=ckpt.vocabulary, meta=ckpt.meta, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @functools.cached_property
    def fingerprint(self) -> str:
        """The model's ``model_fingerprint``: what a saved feature map is checked against before it is used."""
        return model_fingerprint(self.model)

    # -- queries ------------------------------------------------------------------------------------------------
    def check_queries(self, queries) -> list[str]:
        """Validate a query list; returns the queries stripped of surrounding whitespace."""
        if isinstance(queries, str):
            raise TypeError(f"queries must be a list of strings, not one str ({queries!r}); split it first")
        if not isinstance(queries, (list, tuple)):
            raise TypeError(f"queries must be a list of strings, got {type(queries).__name__}")
        if not queries:
            raise ValueError("no queries given: pass at least one text query")
        if len(queries) > self.max_queries:
            raise ValueError(f"{len(queries)} queries given; at most {self.max_queries} are allowed per request")
        cleaned, seen = [], {}
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"query {i} is a {type(q).__name__}, not a str: {q!r}")
            text = q.strip()
            if not text:
                raise ValueError(f"query {i} is empty")
            if len(text) > self.max_query_chars:
                raise ValueError(f"query {i} has {len(text)} characters; at most {self.max_query_chars} allowed")
            key = " ".join(text.casefold().split())
            if key in seen:
                raise ValueError(f"duplicate query {text!r} (same as query {seen[key]} {queries[seen[key]]!r} "
                                 "ignoring case and spaces): labels would be ambiguous")
            seen[key] = i
            cleaned.append(text)
        return cleaned

    def embed(self, queries) -> torch.Tensor:
        """(Q, D) float32 L2-normalised text embeddings on the model's device (cached by the encoder)."""
        queries = self.check_queries(queries)
        return self.text_encoder.encode(queries).to(self.device)

    # -- features -----------------------------------------------------------------------------------------------
    def _chunks(self, xyz: torch.Tensor) -> list[Chunk]:
        chunks = plan_chunks(xyz.cpu().numpy(), self.chunk_points, self.chunk_margin)
        if len(chunks) > 1:
            log.info("segmenting %d points in %d chunks (<= %d points each, %.2f m context)", len(xyz),
                     len(chunks), self.chunk_points, self.chunk_margin)
        return chunks

    def iter_voxel_features(self, xyz, rgb, progress: bool = False, *, superpoints: bool | None = None):
        """Yield (core indices, unit features (M, D) normalised, unit row of each core point) per chunk.

        A unit is a model voxel, or, with superpoints, a superpoint: then there is one item for the whole cloud
        and each superpoint's feature is the mean over its points of their voxels' features (normalised again),
        so every point of a surface patch gets one label. ``superpoints``: None = the Segmenter's setting,
        True = on (its config, else the defaults), False = off.

        Callers that keep these features (the segmenter node caches them so a new query needs no network pass)
        use this instead of `features`, which expands them to every point.
        """
        xyz_t, rgb_t = as_points(xyz, rgb)
        config = self.superpoint_config(superpoints)
        chunks = self._voxel_features(xyz_t, rgb_t, progress)
        if config is None:
            yield from chunks
            return
        segment = torch.from_numpy(compute_superpoints(xyz_t.numpy(), rgb_t.numpy(), config))
        features = superpoint_average(segment, int(segment.max()) + 1, chunks)
        yield torch.arange(len(segment)), features, segment.to(features.device)

    def superpoint_config(self, superpoints: bool | None = None) -> SuperpointConfig | None:
        """The superpoints a call uses: None = the Segmenter's setting, True = on (its config, else the defaults),
        False = off (None)."""
        if superpoints is None:
            return self.superpoints
        return (self.superpoints or SuperpointConfig()) if superpoints else None

    def _voxel_features(self, xyz_t: torch.Tensor, rgb_t: torch.Tensor, progress: bool):
        chunks = self._chunks(xyz_t)
        iterator = chunks
        if progress and len(chunks) > 1:
            from tqdm import tqdm

            iterator = tqdm(chunks, desc="chunks", unit="chunk")
        for chunk in iterator:
            ctx = torch.from_numpy(chunk.context)
            with torch.inference_mode():
                vox = self.model.voxelize(xyz_t[ctx], rgb_t[ctx])
                if self.passes == 1:
                    feats = F.normalize(self.model.encode_voxels(vox), dim=1)
                else:
                    feats = self._averaged_voxel_features(xyz_t[ctx], rgb_t[ctx], vox.inverse, len(vox))
            if len(chunk.core) == len(chunk.context):
                rows = vox.inverse
            else:
                # position of each core point inside the (sorted) context list
                pos = torch.from_numpy(np.searchsorted(chunk.context, chunk.core)).to(vox.inverse.device)
                rows = vox.inverse[pos]
            yield torch.from_numpy(chunk.core), feats, rows

    def _averaged_voxel_features(self, xyz: torch.Tensor, rgb: torch.Tensor, voxel_of_point: torch.Tensor,
                                 n_voxels: int) -> torch.Tensor:
        """(n_voxels, D) normalised: per voxel of the one-pass grid, the mean over its points and over the passes
        of the feature each point gets in a pass (its sampling cell's sampled point's)."""
        rng = np.random.default_rng(self.seed)
        xyz_np = xyz.double().cpu().numpy()
        sums = None
        for _ in range(self.passes):
            pts = turn_about_gravity(xyz_np, float(rng.uniform(0.0, 2.0 * np.pi))) if self.rotate_passes else xyz_np
            sampled, cell_of_point = sample_one_per_voxel(pts, self.pass_voxel, rng, rng.random(3) * self.pass_voxel)
            sampled_t = torch.from_numpy(sampled).to(xyz.device)
            sub = self.model.voxelize(torch.from_numpy(pts[sampled].astype(np.float32)).to(xyz.device),
                                      rgb[sampled_t])
            cell_feat = F.normalize(self.model.encode_voxels(sub), dim=1).index_select(0, sub.inverse)
            # Every point takes its cell's feature; sum them per one-pass voxel without an (N, D) array: one row
            # per distinct (voxel, cell) pair, weighted by its point count.
            key = voxel_of_point * len(sampled) + torch.from_numpy(cell_of_point).to(xyz.device)
            pair, count = torch.unique(key, return_counts=True)
            part = torch.zeros(n_voxels, cell_feat.shape[1], dtype=torch.float32, device=xyz.device)
            part.index_add_(0, pair // len(sampled), cell_feat.index_select(0, pair % len(sampled)) *
                            count.unsqueeze(1).float())
            sums = part if sums is None else sums + part
        return F.normalize(sums, dim=1)

    def features(self, xyz, rgb, *, progress: bool = False) -> torch.Tensor:
        """(N, D) float32 L2-normalised per-point features on the model's device.

        xyz (N, 3) metres; rgb (N, 3) uint8 (or float in [0, 1]). Holds N x D floats: for multi-million-point
        maps prefer ``segment``/``label_points``, which never materialise them.
        """
        n = len(xyz)
        out = None
        for core, feats, rows in self.iter_voxel_features(xyz, rgb, progress):
            if out is None:
                out = torch.empty(n, feats.shape[1], dtype=torch.float32, device=feats.device)
            out[core.to(feats.device)] = feats.index_select(0, rows)
        return out

    # -- classification -----------------------------------------------------------------------------------------
    def _scores(self, features: torch.Tensor, text: torch.Tensor, min_score: float, score: str,
                query_best: torch.Tensor | None = None):
        """(label, score) per feature row; with ``query_best`` (Q,) also the highest cosine of each query, kept as
        the running maximum over calls (computed from the same similarity blocks)."""
        label = torch.empty(len(features), dtype=torch.int64, device=features.device)
        best = torch.empty(len(features), dtype=torch.float32, device=features.device)
        # Rows per block so the (rows, Q) similarity matrix stays near 64M floats.
        block = max(1, (1 << 26) // max(1, text.shape[0]))
        scale = self.model.logit_scale_value().detach().to(features.device) if score == "softmax" else None
        for start in range(0, len(features), block):
            sim = features[start:start + block] @ text.T
            if query_best is not None and len(sim):
                torch.maximum(query_best, sim.amax(dim=0).to(query_best.device), out=query_best)
            if score == "softmax":
                prob = torch.softmax(sim * scale, dim=1)
                s, idx = prob.max(dim=1)
            else:
                s, idx = sim.max(dim=1)
            label[start:start + block] = idx
            best[start:start + block] = s
        label[best < min_score] = -1
        return label, best

    def _check_score_args(self, min_score, score):
        if score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
        if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real) or not np.isfinite(min_score):
            raise ValueError(f"min_score must be a finite number, got {min_score!r}")

    def classify(self, features, queries, min_score: float = 0.0, *, score: str = "cosine"):
        """Label every feature row with the best-matching query.

        features: (N, D) L2-normalised (as ``features`` returns), torch or numpy. Returns (label int64 (N,),
        -1 where the score is below ``min_score``; score float32 (N,)) as tensors on the features' device.
        """
        self._check_score_args(min_score, score)
        feats = torch.as_tensor(features)
        if feats.ndim != 2 or feats.shape[1] != self.embed_dim:
            raise ValueError(f"features must have shape (N, {self.embed_dim}), got {tuple(feats.shape)}")
        if not torch.is_floating_point(feats):
            raise TypeError(f"features must be floating point, got {feats.dtype}")
        feats = feats.float()
        if len(feats):
            # Cheap guard against un-normalised input (a cosine score would be silently wrong): check a sample.
            # (A zero row, a head output of exactly zero, is accepted: it scores 0 against every query.)
            norms = feats[:1024].norm(dim=1)
            if not bool(torch.all(((norms - 1).abs() < 1e-2) | (norms == 0))):
                raise ValueError("features must be L2-normalised rows (as Segmenter.features returns); "
                                 f"found norms in [{float(norms.min()):.3g}, {float(norms.max()):.3g}]")
        text = self.embed(queries).to(feats.device)
        with torch.inference_mode():
            return self._scores(feats, text, float(min_score), score)

    def cloud_features(self, xyz, rgb, *, stamp: float = 0.0, superpoints: bool | None = None,
                       progress: bool = False) -> CloudFeatures:
        """The cloud's unit features, kept for later queries (``superpoints`` as in ``iter_voxel_features``)."""
        with torch.inference_mode():
            chunks = list(self.iter_voxel_features(xyz, rgb, progress, superpoints=superpoints))
        return CloudFeatures(n_points=len(xyz), chunks=chunks, stamp=float(stamp))

    def label_chunks(self, chunks, n_points: int, queries, min_score: float = 0.0, *,
                     score: str = "cosine") -> PointLabels:
        """Classify unit features chunk by chunk and give each point its unit's label: the one classification of
        ``label_points``, the segmenter node's cached features and evaluation. ``chunks`` may be a generator."""
        self._check_score_args(min_score, score)
        queries = self.check_queries(queries)
        label = np.full(n_points, -1, dtype=np.int64)
        point_score = np.zeros(n_points, dtype=np.float32)
        best = np.full(len(queries), np.nan, dtype=np.float32)
        for core, feats, rows in chunks:
            if not len(feats):
                continue
            units = self.label_units([feats], queries, min_score, score=score)
            core_np, rows_np = core.cpu().numpy(), rows.cpu().numpy()
            label[core_np] = units.label[rows_np]
            point_score[core_np] = units.score[rows_np]
            best = np.fmax(best, units.best)
        return PointLabels(label, point_score, best)

    def label_units(self, blocks, queries, min_score: float = 0.0, *, score: str = "cosine") -> PointLabels:
        """Labels of the feature rows themselves (units: voxels or superpoints), over the rows of ``blocks`` (an
        iterable of (U_i, D) feature blocks) in order: for callers that keep each point's unit and classify the
        few units instead of the many points."""
        self._check_score_args(min_score, score)
        queries = self.check_queries(queries)
        text = self.embed(queries)
        labels, scores = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float32)]
        with torch.inference_mode():
            best = torch.full((len(queries),), -torch.inf, dtype=torch.float32)
            for feats in blocks:
                if len(feats):
                    unit_label, unit_score = self._scores(feats, text.to(feats.device), float(min_score), score,
                                                          best)
                    labels.append(unit_label.cpu().numpy())
                    scores.append(unit_score.cpu().numpy())
        best = best.numpy()
        best[~np.isfinite(best)] = np.nan
        return PointLabels(np.concatenate(labels), np.concatenate(scores), best)

    def label_features(self, features: CloudFeatures, queries, min_score: float = 0.0, *,
                       score: str = "cosine") -> PointLabels:
        """Labels of a cloud from its kept features: no network pass."""
        return self.label_chunks(features.chunks, features.n_points, queries, min_score, score=score)

    def label_points(self, xyz, rgb, queries, min_score: float = 0.0, *, score: str = "cosine",
                     progress: bool = False):
        """(label int64 (N,), score float32 (N,)) numpy arrays for raw points, chunk by chunk.

        Classifies voxels and maps the result to points, so memory stays O(N) whatever the embedding size.
        """
        self._check_score_args(min_score, score)
        out = self.label_chunks(self.iter_voxel_features(xyz, rgb, progress), len(xyz), queries, min_score,
                                score=score)
        return out.label, out.score

    def segment(self, cloud: PointCloud, queries, min_score: float = 0.0, *, score: str = "cosine",
                progress: bool = False) -> PointCloud:
        """A copy of ``cloud`` with ``label`` (int32 index into ``queries``, -1 = unknown) and ``score``."""
        if not isinstance(cloud, PointCloud):
            raise TypeError(f"segment expects a PointCloud, got {type(cloud).__name__}")
        if len(cloud) == 0:
            raise ValueError("empty point cloud: nothing to segment")
        label, best = self.label_points(cloud.xyz, cloud.rgb, queries, min_score, score=score, progress=progress)
        return cloud.with_labels(label.astype(np.int32), best.astype(np.float32))

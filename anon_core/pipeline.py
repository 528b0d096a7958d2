"""The pipeline core: detectors + masker + media codecs, one asset at a time (or a batch of frames).

Everything that runs anonymization (CLI, Ray actors, the service) builds one `Anonymizer` from an
`AnonConfig` and calls it; none of them adds anonymization logic of its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from anon_core import licenses
from anon_core.audit import AuditRecord, sha256_bytes
from anon_core.config import AnonConfig
from anon_core.deadline import Deadline
from anon_core.detections import Detections
from anon_core.detectors import create_detector
from anon_core.detectors.base import Detector, SharedWork
from anon_core.heads import append_heads, heads_without_faces
from anon_core.image_batch import PreparedImage, prepare_images
from anon_core.masking import Masker
from anon_core.masking.context import DetectionFilter, MaskContext, MaskHook, mask_whole_frame
from anon_core.media import image_io
from anon_core.media.errors import AnalysisFailed, AssetError, UnsupportedMedia
from anon_core.media.probe import MediaType, sniff

log = logging.getLogger(__name__)
__all__ = ["Anonymizer", "DetectionFilter", "MaskContext", "MaskHook", "mask_whole_frame", "timed"]


@contextmanager
def timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t0) * 1000


class Anonymizer:
    def __init__(self, config: AnonConfig | None = None):
        self.config = config or AnonConfig()
        self.classes = self.config.wanted_classes()
        self.detectors: dict[str, Detector] = {}
        # the license gate runs before any model is loaded (ModelLicenseError: refused, one line)
        specs = licenses.gate(self.config.detectors, self.config.models, self.classes)
        licenses.check_audio(self.config.audio, self.config.models.allow_licenses)
        for key, spec in specs.items():
            params = dict(spec.params)
            params.setdefault("device", self.config.device)
            det = create_detector(spec.name, **params)
            if set(det.classes) & set(self.classes):
                self.detectors[key] = det
        covered = {c for d in self.detectors.values() for c in d.classes}
        self.uncovered = [c for c in self.classes if c not in covered]
        if self.uncovered:
            msg = f"policy {self.config.policy!r} asks for {self.uncovered} but no detector is configured for them"
            if self.config.require_all_classes:
                raise ValueError(msg)
            log.warning(msg)
        self.masker = Masker({c: self.config.masks[c] for c in self.classes if c in self.config.masks})
        # heads.enabled: NanoDet persons whose head holds no face get the head masked (anon_core/heads.py); built
        # with the plate search's NanoDet arguments, so both read the same views from one SharedWork
        self.heads = self.config.heads if self.config.heads.enabled and "face" in self.classes else None
        self._heads_net = None
        self.config_hash = self.config.hash()
        self.vault = None
        if self.config.vault.enabled:
            from anon_core.vault import VaultSession

            self.vault = VaultSession(self.config.vault)
        # Extension points, applied by every path (images, video files, the stream, validation):
        # filters run on each frame's merged detections before tracking/masking; hooks after masking.
        self.detection_filters: list[DetectionFilter] = []
        self.mask_hooks: list[MaskHook] = []
        self.residual = None
        if self.config.residual.enabled:
            from anon_core.residual import ResidualChecker

            self.residual = ResidualChecker(self.config)
        # subjects.redact_only / keep: a filter on the detected faces (anon_core/subjects); built after the
        # detectors, which find the faces in the reference photos
        self.subjects = None
        if self.config.subjects.enabled:
            from anon_core.subjects.filter import SubjectFilter

            lic = licenses.CARDS["dlib_face_resnet"].license
            if lic not in set(self.config.models.allow_licenses):
                raise licenses.ModelLicenseError(f"subjects would load model 'dlib_face_resnet' licensed {lic}, "
                                                 "which models.allow_licenses does not include")

            self.subjects = SubjectFilter.build(self.config.subjects, lambda rgb: self.detect([rgb])[0])
            if self.residual is not None:
                self.residual.subjects = self.subjects

    def heads_net(self):
        """The NanoDet the head rule reads persons from (loaded on first use; same arguments as the plate search)."""
        if self._heads_net is None:
            from anon_core.detectors.nanodet import nanodet_for

            spec = self.config.detectors.get("plate")
            p = dict(spec.params) if spec is not None and spec.name == "plate" else {}
            self._heads_net = nanodet_for(p.get("nanodet_weights"), p.get("device", self.config.device),
                                          int(p.get("threads", 0)), float(p.get("candidate_threshold", 0.1)),
                                          int(p.get("tile_size", 640)), int(p.get("tile_min_side", 600)))
        return self._heads_net

    # -- what the audit needs to say about this pipeline
    def models(self) -> list[dict]:
        infos = [i for d in self.detectors.values() for i in d.infos()]
        if self.heads is not None and not any(i.name == self.heads_net().info().name for i in infos):
            infos.append(self.heads_net().info())
        if self.subjects is not None:
            infos.append(self.subjects.embedder().model_info())
        return [vars(licenses.license_of(i)) for i in infos]

    def thresholds(self) -> dict[str, float]:
        out = {f"{k}.threshold": float(d.threshold) for k, d in self.detectors.items()}
        if self.subjects is not None:
            out["subjects.threshold"] = self.subjects.threshold
            if self.config.subjects.mode == "keep":
                out["subjects.keep_threshold"] = float(self.config.subjects.keep_threshold)
        return out

    def candidate_classes(self) -> set[str]:
        """Classes whose sub-threshold candidates the video tracker uses (detectors with track_candidates)."""
        return {c for d in self.detectors.values() if d.track_candidates for c in d.classes}

    def stamp(self, rec: AuditRecord) -> AuditRecord:
        rec.policy = self.config.policy
        rec.classes = list(self.classes)
        rec.models = self.models()
        rec.thresholds = self.thresholds()
        rec.config_hash = self.config_hash
        return rec

    # -- frames
    def detect(self, frames: Sequence[np.ndarray], min_score: float | None = None, *,
               all_detectors: bool = False) -> list[Detections]:
        """All configured detectors over a batch of RGB frames, kept to the policy's classes.

        `min_score` (video) also returns weaker candidates from the detectors whose candidates the tracker
        uses (`track_candidates`), or from every detector with `all_detectors` (validation's PR curves);
        `data["confident"]` marks the detections that pass their detector's own threshold and are masked
        on their own. The detection filters run last, on each frame's merged detections.
        """
        per_det = []
        work = SharedWork()  # shared views (NanoDet for persons and plates) for this batch only
        small = self.config.small_faces  # small face candidates masked below the threshold (anon_core/heads.py)
        for key, d in self.detectors.items():
            floor = min_score if all_detectors or d.track_candidates else None
            thr = float(d.threshold)
            # the rule needs the detector's candidates down to its own threshold, whatever the caller asked for
            ask = floor
            if small.max_side > 0 and "face" in d.classes and small.threshold < (thr if floor is None else floor):
                ask = small.threshold
            res = self.call_detector(key, d, frames, ask, work)
            for j, r in enumerate(res):
                r.data["confident"] = (r.scores >= thr) | small.promote(r)
                if ask != floor:  # asked lower only for the rule: return what the caller asked for, plus the rule's
                    res[j] = r[r.data["confident"] | (r.scores >= (thr if floor is None else floor))]
            per_det.append(res)
        persons = None
        if self.heads is not None:
            try:
                persons = self.heads_net().detect(frames, work, tiles=self.heads.views == "tiles")
            except Exception as exc:
                raise AnalysisFailed(f"heads: person detector failed: {type(exc).__name__}: {exc}") from exc
        out = []
        for i, frame in enumerate(frames):
            d = self.policy_classes(Detections.merge([r[i] for r in per_det]))
            if persons is not None:
                p = persons[i][persons[i].labels == "person"] if len(persons[i]) else persons[i]
                faces = d[(d.labels == "face") & d.data["confident"]] if len(d) else d
                d = append_heads(d, heads_without_faces(p, faces, self.heads))
            out.append(self.filter_detections(frame, d))
        return out

    def call_detector(self, key: str, det: Detector, frames: Sequence[np.ndarray], min_score: float | None,
                      work: SharedWork, where: str = "") -> list[Detections]:
        """One detector over frames (or crops, `where=" on a region"`); any failure, or a result list that does
        not line up with the frames (it would leave some unchecked), is AnalysisFailed."""
        try:
            res = det.detect(frames, min_score=min_score, work=work)
            if len(res) != len(frames):
                raise RuntimeError(f"returned {len(res)} results for {len(frames)} frames")
        except Exception as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise AnalysisFailed(f"detector {key!r} failed{where}: {type(exc).__name__}: {msg}") from exc
        return res

    def policy_classes(self, d: Detections) -> Detections:
        """Only the detections of the policy's classes."""
        return d[np.isin(d.labels.astype(str), self.classes)] if len(d) else d[np.zeros(0, bool)]

    def filter_detections(self, frame: np.ndarray, d: Detections) -> Detections:
        """The detection filters, in order, on one frame's merged detections."""
        for f in self.detection_filters:
            try:
                d = f(frame, d)
            except Exception as exc:  # a filter that cannot decide must not let a frame through unchecked
                raise AnalysisFailed(f"detection filter failed: {type(exc).__name__}: {exc}") from exc
        return d

    def detect_or_mask(self, frames: Sequence[np.ndarray], min_score: float | None = None, *,
                       all_detectors: bool = False) -> tuple[list[Detections], list[bool]]:
        """`detect` under the `on_analysis_error` policy: (detections, per-frame "analysis failed" flags).

        fail: AnalysisFailed propagates (the asset is not published). mask_frame: the batch is retried
        frame by frame and only the frames whose analysis still fails are flagged; the caller must mask
        those whole (`mask_whole_frame`), never publish them as they are.
        """
        try:
            return self.detect(frames, min_score, all_detectors=all_detectors), [False] * len(frames)
        except AnalysisFailed:
            if self.config.on_analysis_error != "mask_frame":
                raise
        dets, failed = [], []
        for f in frames:
            try:
                dets.append(self.detect([f], min_score, all_detectors=all_detectors)[0])
                failed.append(False)
            except AnalysisFailed as exc:
                log.warning("analysis failed on a frame, masking it whole: %s", exc)
                dets.append(Detections.empty())
                failed.append(True)
        return dets, failed

    def mask_context(self, recorder=None) -> MaskContext:
        """Fresh per-asset state for `mask` (vault recorder, subject track evidence)."""
        return MaskContext(recorder, self.subjects.session() if self.subjects is not None else None)

    def mask(self, frame: np.ndarray, dets: Detections, ctx: MaskContext | None = None, index: int = 0
             ) -> tuple[np.ndarray, int]:
        """The masked copy of `frame` and the number of regions masked; then the mask hooks, in order."""
        ctx = ctx or self.mask_context()
        if self.subjects is not None:  # subjects.redact_only / keep: which faces are masked at all
            dets = (ctx.subjects or self.subjects.session()).select(frame, dets)
        out, n = self.masker.apply(frame, dets, ctx.recorder, index)
        for hook in self.mask_hooks:
            new = hook(frame, out, dets, ctx, index)
            if new is not None:
                out = new
        return out, n

    # -- still images
    def prepare_images(self, datas: Sequence[bytes | None]) -> list[PreparedImage | None]:
        """Decode and detect a batch of assets' images in shared detector calls (see anon_core/image_batch.py)."""
        return prepare_images(self, datas)

    def anonymize_image(self, data: bytes, media: MediaType, rec: AuditRecord, deadline: Deadline | None = None,
                        ctx: MaskContext | None = None, prepared: PreparedImage | None = None) -> bytes:
        """`prepared`: this image decoded and analysed in a cross-asset batch (anon_core/image_batch.py)."""
        t = rec.timings_ms
        deadline = deadline or Deadline(0)
        ctx = ctx or self.mask_context()
        if prepared is not None:
            dec, dets, failed = prepared.decoded, prepared.detections, prepared.failed
            for stage, ms in prepared.timings_ms.items():
                t[stage] = t.get(stage, 0.0) + ms
            rec.extra["detect_batch"] = prepared.batch_size
        else:
            with timed(t, "decode"):
                dec = image_io.decode(data, media.format, self.config.limits.max_pixels,
                                      self.config.limits.max_side)
        rec.height, rec.width = dec.rgb.shape[:2]
        rec.frames = 1
        deadline.check("decode")
        if prepared is None:
            with timed(t, "detect"):
                (dets,), (failed,) = self.detect_or_mask([dec.rgb])
        deadline.check("detect")
        with timed(t, "mask"):
            if failed:
                if ctx.recorder is not None:
                    ctx.recorder.record_whole(0, dec.rgb)
                out = mask_whole_frame(dec.rgb)
                rec.extra["analysis_errors"] = {"frames_masked_whole": 1}
            else:
                out, _ = self.mask(dec.rgb, dets, ctx)
        rec.detections = dets.counts()
        rec.masked = dets.counts() if not failed else {"whole_frame": 1}
        if self.residual is not None and not failed:
            with timed(t, "residual"):
                out = self.residual.check_image(out, rec, ctx.recorder)
        with timed(t, "encode"):
            encoded = image_io.encode(out, dec, self.config.metadata, self.config.image.jpeg_quality)
        rec.metadata_removed = dec.removed
        return encoded

    def process_stream(self, fs, path: str, media: MediaType, rec: AuditRecord, workdir: str,
                       ctx: MaskContext | None = None, deadline: Deadline | None = None) -> str | None:
        """Anonymize a video or audio asset streamed from storage into a file in the private workdir.

        Returns the local output path, or None when the asset failed (the record says why). `deadline`: a
        caller's own (cancellable) limit instead of limits.asset_timeout_s.
        """
        self.stamp(rec)
        rec.media_type, rec.format = media.kind, media.format
        t0 = time.perf_counter()
        deadline = deadline or Deadline(self.config.limits.asset_timeout_s)
        out_path = os.path.join(workdir, "output" + os.path.splitext(path)[1].lower())
        try:
            with timed(rec.timings_ms, "hash"):
                rec.input_sha256, rec.input_size = _hash_stream(fs, path)
            if media.kind == "video":
                from anon_core.video import anonymize_video as handler
            elif media.kind == "audio":
                from anon_core.audio import anonymize_audio as handler
            else:
                raise UnsupportedMedia(f"unsupported media ({media.kind}/{media.format})")
            # Local files go to PyAV by path (seekable, fastest); object stores are streamed, never read whole.
            source = path if _is_local(fs) else fs.open(path, "rb")
            try:
                extra = {"ctx": ctx} if ctx is not None and media.kind == "video" else {}
                handler(self, source, out_path, media, rec, deadline=deadline, **extra)
            finally:
                if not isinstance(source, str):
                    source.close()
        except AssetError as exc:
            rec.fail(str(exc), exc.code)
        except MemoryError:
            rec.fail("out of memory while processing", "resources")
        except Exception as exc:  # fail closed
            log.exception("unexpected error on %s", rec.input_uri)
            rec.fail(f"internal error: {type(exc).__name__}: {exc}", "internal")
        finally:
            rec.timings_ms["total"] = (time.perf_counter() - t0) * 1000
        if rec.error is not None:
            if os.path.exists(out_path):
                os.unlink(out_path)  # never leave a partial or unverified output behind
            return None
        rec.status = "ok"
        rec.output_sha256, rec.output_size = _hash_file(out_path)
        return out_path

    def process_bytes(self, data: bytes, rec: AuditRecord, ctx: MaskContext | None = None,
                      deadline: Deadline | None = None, prepared: PreparedImage | None = None) -> bytes | None:
        """Anonymize one in-memory asset; on failure the record says why and nothing is returned.
        `prepared` (from `prepare_images`) is used only if it was computed from these very bytes."""
        self.stamp(rec)
        rec.input_sha256 = sha256_bytes(data)
        if prepared is not None and prepared.sha256 != rec.input_sha256:
            prepared = None
        rec.input_size = len(data)
        t0 = time.perf_counter()
        deadline = deadline or Deadline(self.config.limits.asset_timeout_s)
        try:
            if len(data) > self.config.limits.max_bytes:
                raise AssetError(f"file is {len(data)} bytes: above the limit of {self.config.limits.max_bytes}")
            media = sniff(data[:64])
            rec.media_type, rec.format = media.kind, media.format
            if not data:
                raise UnsupportedMedia("empty file (0 bytes)")
            if media.kind == "image":
                out = self.anonymize_image(data, media, rec, deadline, ctx, prepared)
            else:
                raise UnsupportedMedia(f"unsupported or unrecognised media ({media.kind}/{media.format})")
        except AssetError as exc:
            rec.fail(str(exc), exc.code)
            return None
        except MemoryError:
            rec.fail("out of memory while processing", "resources")
            return None
        except Exception as exc:  # fail closed: an unexpected error never lets the input through
            log.exception("unexpected error on %s", rec.input_uri)
            rec.fail(f"internal error: {type(exc).__name__}: {exc}", "internal")
            return None
        finally:
            rec.timings_ms["total"] = (time.perf_counter() - t0) * 1000
        rec.status = "ok"
        rec.output_sha256 = sha256_bytes(out)
        rec.output_size = len(out)
        return out


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _hash_stream(fs, path: str, chunk: int = 8 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _hash_file(path: str, chunk: int = 8 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n

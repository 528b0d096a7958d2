"""Voice anonymization: privacy at low false-accept rates, gender leakage, intelligibility (Whisper) and speed.

Data: ../shared/data/speech. LibriSpeech test-other (5 speakers x 10 utterances) are the enrolled speakers;
train-clean-100 (one utterance per speaker) are split into trial impostors (`--impostors`) and, for the
semi-informed attacker, backend-training speakers (`--backend`; each utterance cut in two halves, anonymized as
separate assets, so the attacker sees two anonymized samples per training speaker).

Attackers (resemblyzer d-vectors, cosine scoring, one enrollment utterance per trial):
- ignorant: enrollment on original speech, trials anonymized;
- lazy-informed: enrollment anonymized too (another run of the anonymizer, i.e. another asset);
- semi-informed: lazy-informed plus a backend trained on anonymized speech of other speakers (shrinkage LDA on
  the d-vectors, then cosine), i.e. the attacker adapts its scoring to what anonymized speakers look like.
Reported per attacker: EER and TAR at 1 % and 0.1 % FAR (thresholds from the non-target scores).

Gender recoverability: logistic regression on d-vectors, 5-fold cross-validation grouped by speaker (balanced
accuracy; 0.5 = chance). Labels come from the median F0 of each speaker's original speech (>= 160 Hz: female):
no SPEAKERS.TXT ships with the data. Conditions: original (train and test on originals), ignorant (trained on
originals, tested on anonymized), informed (trained and tested on anonymized speech of other speakers).

Intelligibility: Whisper base (anon_core/audio/asr.py) on the test-other utterances; the reference is Whisper's
transcript of the original (no LibriSpeech transcripts ship with the data), so WER(original) is 0 by
construction and the anonymized WER is the increase.

Parameter choice: `--cv` runs a leave-one-speaker-out selection over the test-other speakers: for each held-out
speaker the config with the highest min(ignorant, lazy-informed EER) on the other speakers' trials (among configs
whose WER on those speakers stays <= --wer-cap) is chosen, then scored on the held-out speaker.

Speed: real-time factor of anonymize_waveform per file (seconds of compute per second of audio), per method.

Controls: `none` (the original) must leak fully; `noise-fixed` (speech replaced by white noise at -26 dBFS) must
give EER ~50 %, TAR ~FAR, gender ~chance; `noise` (white noise at the utterance's own RMS) shows what the recording
level alone leaks.

    .venv/bin/python benchmarks/voice_privacy.py --methods none,noise,world --cv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from voice_eer import eer, write_summary  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speech"
SR = 16000
CONTROLS = ("none", "noise", "noise-fixed")


def _read16(path: str) -> np.ndarray:
    from anon_core.audio.io import decode
    from anon_core.audio.vad import to_rate

    dec = decode(path)
    x = to_rate(dec.samples, dec.sample_rate)
    return x.mean(axis=0) if x.ndim == 2 else x


def load_sets(data: Path, n_impostors: int, n_backend: int) -> dict[str, list[dict]]:
    rows = [json.loads(line) for line in open(data / "speakers.jsonl")]
    targets = [{**r, "path": str(data / r["file"])} for r in rows if "test-other" in r.get("corpus", "")]
    pool = [{**r, "path": str(data / r["file"])} for r in rows if "train-clean" in r.get("corpus", "")]
    return {"targets": targets, "impostors": pool[:n_impostors],
            "backend": pool[n_impostors:n_impostors + n_backend]}


def _job(args: tuple) -> tuple[str, np.ndarray, float]:
    """Anonymize one item (a file or the half of one) as its own asset; returns (id, audio, compute seconds)."""
    item_id, path, half, method, seed, overrides, cache = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    params = overrides
    if method not in CONTROLS:
        from anon_core.audio.settings import AudioSettings

        params = AudioSettings(method=method, speakers="single", key_scope="asset", **overrides).public_params()
    # the cache key holds every resolved parameter, so a changed default never reuses stale audio
    tag = hashlib.sha256(json.dumps([item_id, method, seed, params], sort_keys=True).encode()).hexdigest()[:24]
    cfile = Path(cache) / f"{tag}.npz"
    if cfile.exists():
        z = np.load(cfile)
        return item_id, z["y"], float(z["t"])
    x = _read16(path)
    if half:
        mid = len(x) // 2
        x = x[:mid] if half == 1 else x[mid:]
    t0 = time.perf_counter()
    if method in ("noise", "noise-fixed"):
        rng = np.random.default_rng(int(tag[:8], 16))
        level = np.sqrt(np.mean(x ** 2)) if method == "noise" else 10 ** (-26 / 20)
        y = (rng.standard_normal(len(x)) * level).astype(np.float32)
    elif method == "none":
        y = x.astype(np.float32)
    else:
        from anon_core.audio.anonymize import anonymize_waveform
        from anon_core.audio.settings import AudioSettings

        settings = AudioSettings(method=method, speakers="single", key_scope="asset", **overrides)
        out, _ = anonymize_waveform(x[None], SR, settings, key=seed.encode(), asset_id=item_id)
        y = out[0]
    dt = time.perf_counter() - t0
    np.savez(cfile, y=y, t=dt)
    return item_id, y, dt


def tar_at(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    non = np.sort(scores[labels == 0])
    thr = non[min(len(non) - 1, int(np.ceil((1.0 - far) * len(non))) - 1)] if len(non) else np.inf
    return float(np.mean(scores[labels == 1] > thr))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def trial_list(targets: list[dict], impostors: list[dict]) -> list[tuple[str, str, int, str]]:
    """(enrollment id, trial id, is_target, enrollment speaker)."""
    out = []
    for e in targets:
        for t in targets:
            if t["file"] != e["file"]:
                out.append((e["file"], t["file"], int(t["speaker"] == e["speaker"]), e["speaker"]))
        out += [(e["file"], t["file"], 0, e["speaker"]) for t in impostors]
    return out


def attack_scores(enroll: dict, trial: dict, pairs: list, proj=None) -> np.ndarray:
    e = np.stack([enroll[p[0]] for p in pairs])
    t = np.stack([trial[p[1]] for p in pairs])
    if proj is not None:
        e, t = proj(e), proj(t)
    return np.sum(_unit(e) * _unit(t), axis=1)


def fit_backend(emb: dict[str, np.ndarray], backend: list[dict], dims: int = 100):
    """LDA on (anonymized) d-vectors of the backend speakers (two halves each), within-class scatter regularised
    towards the identity (d-vectors have near-constant dimensions, so the plain scatter is singular)."""
    from scipy.linalg import eigh

    x = _unit(np.stack([emb[f"{r['file']}#{h}"] for r in backend for h in (1, 2)]))
    y = np.array([i for i, _ in enumerate(backend) for _ in (1, 2)])
    mu = x.mean(axis=0)
    means = np.stack([x[y == c].mean(axis=0) for c in np.unique(y)])
    within = x - means[y]
    sw = within.T @ within / len(x)
    sb = (means - mu).T @ (means - mu) / len(means)
    sw += 0.1 * np.trace(sw) / len(sw) * np.eye(len(sw))
    _, vecs = eigh(sb, sw)
    w = vecs[:, ::-1][:, :min(dims, len(means) - 1)]
    return lambda v: (_unit(v) - mu) @ w


def privacy(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {"eer": round(eer(scores, labels), 4), "tar_far1": round(tar_at(scores, labels, 0.01), 4),
            "tar_far01": round(tar_at(scores, labels, 0.001), 4)}


def gender_scores(emb_train: dict, emb_test: dict, items: list[dict], labels: dict[str, int]) -> float:
    """Balanced accuracy of a logistic-regression gender classifier, 5-fold grouped by speaker."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    xtr = _unit(np.stack([emb_train[r["file"]] for r in items]))
    xte = _unit(np.stack([emb_test[r["file"]] for r in items]))
    y = np.array([labels[r["speaker"]] for r in items])
    groups = np.array([r["speaker"] for r in items])
    pred = np.zeros_like(y)
    for tr, te in GroupKFold(5).split(xtr, y, groups):
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(xtr[tr], y[tr])
        pred[te] = clf.predict(xte[te])
    return round(float(balanced_accuracy_score(y, pred)), 4)


def word_errors(ref: list[str], hyp: list[str]) -> int:
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d = d, np.empty_like(d)
        d[0] = i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1])


def select_cv(per_config: dict[str, dict], wer_cap: float) -> dict:
    """Leave-one-speaker-out choice of a config: best min(ign, lazy EER) on the other speakers, WER <= cap."""
    speakers = sorted(next(iter(per_config.values()))["fold"].keys())
    folds = []
    for held in speakers:
        best, best_val = None, -1.0
        for label, r in per_config.items():
            train = [s for s in speakers if s != held]
            w = np.mean([r["fold"][s]["wer"] for s in train])
            val = np.mean([min(r["fold"][s]["ignorant"], r["fold"][s]["lazy"]) for s in train])
            if w <= wer_cap and val > best_val:
                best, best_val = label, val
        if best is None:
            continue
        h = per_config[best]["fold"][held]
        folds.append({"held_out": held, "chosen": best, "train_min_eer": round(best_val, 4),
                      "held_ignorant_eer": h["ignorant"], "held_lazy_eer": h["lazy"], "held_wer": h["wer"]})
    out = {"folds": folds}
    for k in ("held_ignorant_eer", "held_lazy_eer", "held_wer"):
        v = [f[k] for f in folds]
        out[k] = {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)} if v else {}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--methods", default="none,noise,world", help="comma list of METHOD or LABEL=METHOD "
                    "(METHOD: an audio.method, or the controls none / noise)")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL:KEY=JSON")
    ap.add_argument("--impostors", type=int, default=40)
    ap.add_argument("--backend", type=int, default=60, help="train-clean speakers for the semi-informed backend")
    ap.add_argument("--wer", type=int, default=50, help="test-other utterances transcribed (0: skip WER)")
    ap.add_argument("--no-gender", action="store_true")
    ap.add_argument("--cv", action="store_true", help="leave-one-speaker-out choice among the methods")
    ap.add_argument("--wer-cap", type=float, default=0.35, help="--cv: highest WER increase a choice may have")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", default="voice-privacy-benchmark")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/anon_voice_cache"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--merge", default="", help="comma list of earlier --out files: run only the --cv choice over "
                    "all their methods (they must share data, seed and --wer)")
    args = ap.parse_args(argv)
    if args.merge:
        merged: dict[str, dict] = {}
        for f in args.merge.split(","):
            merged.update(json.loads(Path(f).read_text())["methods"])
        cands = {k: v for k, v in merged.items() if v["method"] not in CONTROLS}
        print(json.dumps(select_cv(cands, args.wer_cap), sort_keys=True))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.cache.mkdir(parents=True, exist_ok=True)
    from anon_core.audio.speakers import embed
    from anon_core.audio.voice import median_f0, world_f0

    sets = load_sets(args.data, args.impostors, args.backend)
    targets, impostors, backend = sets["targets"], sets["impostors"], sets["backend"]
    pairs = trial_list(targets, impostors)
    labels = np.array([p[2] for p in pairs])
    t0 = time.perf_counter()
    originals = {r["file"]: _read16(r["path"]) for r in targets + impostors + backend}
    emb_cache = args.cache / "original_embeddings.npz"
    orig_emb = dict(np.load(emb_cache)) if emb_cache.exists() else {}
    for f, x in originals.items():
        if f not in orig_emb:
            orig_emb[f] = embed(x)
    for r in backend:
        x = originals[r["file"]]
        for h, part in ((1, x[:len(x) // 2]), (2, x[len(x) // 2:])):
            if f"{r['file']}#{h}" not in orig_emb:
                orig_emb[f"{r['file']}#{h}"] = embed(part)
    np.savez(emb_cache, **orig_emb)
    gender_items = targets + impostors + backend
    f0s: dict[str, list] = {}
    for r in gender_items:
        f0s.setdefault(r["speaker"], []).append(world_f0(originals[r["file"]].astype(np.float64), SR))
    gender = {s: int(median_f0(v) >= 160.0) for s, v in f0s.items()}
    summary: dict = {"data": str(args.data), "trials": len(pairs), "target_trials": int(labels.sum()),
                     "impostors": len(impostors), "backend_speakers": len(backend),
                     "gender_speakers": {"female": sum(gender.values()), "male": len(gender) - sum(gender.values())},
                     "attacker": "resemblyzer d-vector, cosine; semi-informed: + shrinkage LDA on anonymized speech"}
    asr = ref_words = None
    wer_items = targets[:: max(1, len(targets) // max(args.wer, 1))][:args.wer] if args.wer else []
    if wer_items:
        from anon_core.audio import asr as asr_mod

        asr = asr_mod.load(threads=args.workers)
        ref_cache = args.cache / "whisper_reference.json"
        refs = json.loads(ref_cache.read_text()) if ref_cache.exists() else {}
        for r in wer_items:
            if r["file"] not in refs:
                refs[r["file"]] = asr.transcribe(originals[r["file"]])
        ref_cache.write_text(json.dumps(refs, indent=0))
        ref_words = {r["file"]: asr_mod.normalize(refs[r["file"]]) for r in wer_items}
        summary["asr"] = "whisper base (CTranslate2 int8), reference = its transcript of the original"
    print(f"setup {time.perf_counter() - t0:.0f} s; {len(pairs)} trials ({int(labels.sum())} target)", flush=True)
    overrides: dict[str, dict] = {}
    for item in args.set:
        lab, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        overrides.setdefault(lab, {})[k] = json.loads(v)
    results: dict[str, dict] = {}
    for spec in args.methods.split(","):
        label, _, method = spec.rpartition("=")
        label = label or method
        ov = overrides.get(label, {})
        t1 = time.perf_counter()
        jobs = [(f"{r['file']}|trial", r["path"], 0, method, args.seed, ov, str(args.cache))
                for r in targets + impostors]
        jobs += [(f"{r['file']}|enroll", r["path"], 0, method, args.seed, ov, str(args.cache)) for r in targets]
        jobs += [(f"{r['file']}#{h}|trial", r["path"], h, method, args.seed, ov, str(args.cache))
                 for r in backend for h in (1, 2)]
        with ProcessPoolExecutor(args.workers) as pool:
            done = list(pool.map(_job, jobs, chunksize=2))
        anon = {k: y for k, y, _ in done}
        compute = sum(t for _, _, t in done)
        audio_s = sum(len(y) for _, y, _ in done) / SR
        trial = {r["file"]: embed(anon[f"{r['file']}|trial"]) for r in targets + impostors}
        enroll = {r["file"]: embed(anon[f"{r['file']}|enroll"]) for r in targets}
        anon_backend = {f"{r['file']}#{h}": embed(anon[f"{r['file']}#{h}|trial"]) for r in backend for h in (1, 2)}
        trial.update({r["file"]: embed(anon[f"{r['file']}#1|trial"]) for r in backend})
        proj = fit_backend(anon_backend, backend) if backend else None
        s_ign = attack_scores(orig_emb, trial, pairs)
        s_lazy = attack_scores(enroll, trial, pairs)
        res = {"method": method, "overrides": ov, "ignorant": privacy(s_ign, labels),
               "lazy_informed": privacy(s_lazy, labels),
               "rtf": round(compute / max(audio_s, 1e-9), 4), "audio_s": round(audio_s, 1)}
        if proj is not None:
            res["semi_informed"] = privacy(attack_scores(enroll, trial, pairs, proj), labels)
        if not args.no_gender:
            gtrain = {**orig_emb, **{r["file"]: orig_emb[f"{r['file']}#1"] for r in backend}}
            res["gender_bacc"] = {"original": gender_scores(gtrain, gtrain, gender_items, gender),
                                  "ignorant": gender_scores(gtrain, trial, gender_items, gender),
                                  "informed": gender_scores(trial, trial, gender_items, gender)}
        # per enrolled speaker (= leave-one-speaker-out held-out fold of a method with nothing tuned on the data)
        s_semi = attack_scores(enroll, trial, pairs, proj) if proj is not None else None
        fold = {}
        for spk in sorted({r["speaker"] for r in targets}):
            m = np.array([p[3] == spk for p in pairs])
            fold[spk] = {"ignorant": round(eer(s_ign[m], labels[m]), 4), "lazy": round(eer(s_lazy[m], labels[m]), 4),
                         "tar_far1_ignorant": round(tar_at(s_ign[m], labels[m], 0.01), 4),
                         "tar_far1_lazy": round(tar_at(s_lazy[m], labels[m], 0.01), 4)}
            if s_semi is not None:
                fold[spk]["semi"] = round(eer(s_semi[m], labels[m]), 4)
                fold[spk]["tar_far1_semi"] = round(tar_at(s_semi[m], labels[m], 0.01), 4)
        if wer_items and asr is not None:
            from anon_core.audio.asr import normalize

            errs: dict[str, list[int]] = {}
            for r in wer_items:
                e = word_errors(ref_words[r["file"]], normalize(asr.transcribe(anon[f"{r['file']}|trial"])))
                errs.setdefault(r["speaker"], []).append(e)
                errs.setdefault("*", []).append(e)
            n_ref = {s: sum(len(ref_words[r["file"]]) for r in wer_items if s in ("*", r["speaker"]))
                     for s in errs}
            res["wer"] = round(sum(errs["*"]) / max(n_ref["*"], 1), 4)
            res["wer_words"] = n_ref["*"]
            for spk in fold:
                fold[spk]["wer"] = round(sum(errs.get(spk, [0])) / max(n_ref.get(spk, 0), 1), 4)
        res["fold"] = fold
        kinds = [k for k in ("ignorant", "lazy", "semi") if all(k in f for f in fold.values())]
        res["fold_min"] = {k: min(f[k] for f in fold.values()) for k in kinds}
        res["fold_max_tar_far1"] = {k: max(f[f"tar_far1_{k}"] for f in fold.values()) for k in kinds}
        res["seconds"] = round(time.perf_counter() - t1, 1)
        results[label] = res
        semi = res.get("semi_informed", {})
        print(f"{label:10s} EER ign {res['ignorant']['eer']:.3f} lazy {res['lazy_informed']['eer']:.3f} "
              f"semi {semi.get('eer', float('nan')):.3f} | TAR@1%FAR ign {res['ignorant']['tar_far1']:.3f} "
              f"lazy {res['lazy_informed']['tar_far1']:.3f} semi {semi.get('tar_far1', float('nan')):.3f} | "
              f"TAR@0.1% lazy {res['lazy_informed']['tar_far01']:.3f} | gender {res.get('gender_bacc')} | "
              f"WER {res.get('wer', float('nan')):.3f} | RTF {res['rtf']:.3f} ({res['seconds']:.0f} s)", flush=True)
        print(f"{'':10s} per speaker: worst EER {res['fold_min']}, worst TAR@1%FAR {res['fold_max_tar_far1']}; "
              + "; ".join(f"{k}: {v}" for k, v in fold.items()), flush=True)
    summary["methods"] = results
    if args.cv:
        cands = {k: v for k, v in results.items() if v["method"] not in CONTROLS and "wer" in
                 next(iter(v["fold"].values()))}
        if cands:
            summary["cv"] = select_cv(cands, args.wer_cap)
            print("CV:", json.dumps(summary["cv"]), flush=True)
    return write_summary(summary, t0, args.out)


if __name__ == "__main__":
    raise SystemExit(main())

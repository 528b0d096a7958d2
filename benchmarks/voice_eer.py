"""Voice anonymization vs a speaker-verification attacker (ASV EER) and relative intelligibility (WER).

Attacker: resemblyzer d-vectors (GE2E), cosine scoring, one enrollment utterance per trial.
Data: ../shared/data/speech (speakers.jsonl): LibriSpeech test-other (5 speakers x 10 utterances) give the
target trials (every ordered pair of different utterances of one speaker) and the non-target trials against the
other four speakers; LibriSpeech train-clean-100 utterances (one per speaker) are extra impostors.

Conditions, per method:
- original: enrollment and trials untouched (the attacker's baseline).
- ignorant: enrollment on original speech, trials anonymized.
- lazy-informed: enrollment anonymized too (a separate run of the anonymizer, i.e. another asset), trials
  anonymized.
Each utterance is one asset: with random-per-asset targets every utterance gets its own voice. The draw is made
reproducible here with a benchmark seed used as key (key_scope=asset), which draws the same distribution.

Relative WER: pocketsphinx (bundled en-us model) on a bounded subset; the reference is pocketsphinx's own
transcript of the original (no ground-truth transcripts ship with the data), so this measures how much the
transform changes what an ASR hears, not absolute accuracy.

    .venv/bin/python benchmarks/voice_eer.py --methods pitch,world --impostors 40 --wer 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speech"


def load_items(data: Path, n_impostors: int) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in open(data / "speakers.jsonl")]
    targets = [r for r in rows if r.get("speaker") and "test-other" in r["corpus"]]
    impostors = [r for r in rows if r.get("speaker") and "train-clean" in r["corpus"]]
    return targets, impostors[:n_impostors]


def _read16(path: str) -> np.ndarray:
    from anon_core.audio.io import decode
    from anon_core.audio.vad import to_rate

    dec = decode(path)
    return to_rate(dec.samples, dec.sample_rate)


def _settings(method: str, overrides: dict):
    from anon_core.audio.settings import AudioSettings

    return AudioSettings(method=method, speakers="single", key_scope="asset", **overrides)


def _anonymize_job(args: tuple) -> tuple[str, np.ndarray]:
    path, method, version, seed, overrides = args
    from anon_core.audio.anonymize import anonymize_waveform

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    x = _read16(path)
    y, _ = anonymize_waveform(x[None], 16000, _settings(method, overrides), key=seed.encode(),
                              asset_id=f"{path}|{version}")
    return f"{path}|{version}", y[0]


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: where the false-accept and false-reject rates cross (linear interpolation)."""
    order = np.argsort(-scores)
    lab = labels[order].astype(bool)
    n_t, n_n = lab.sum(), (~lab).sum()
    far = np.r_[0.0, np.cumsum(~lab) / n_n]
    frr = np.r_[1.0, 1.0 - np.cumsum(lab) / n_t]
    i = int(np.argmax(far >= frr))
    if i == 0:
        return float(far[0])
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.5
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def trials(targets: list[dict], impostors: list[dict]) -> list[tuple[str, str, int]]:
    """(enrollment file, trial file, is_target)."""
    out = []
    for e in targets:
        for t in targets:
            if t["file"] != e["file"]:
                out.append((e["file"], t["file"], int(t["speaker"] == e["speaker"])))
        for t in impostors:
            out.append((e["file"], t["file"], 0))
    return out


def score(enroll: dict[str, np.ndarray], trial: dict[str, np.ndarray], pairs: list[tuple[str, str, int]]) -> float:
    s = np.array([float(enroll[e] @ trial[t]) for e, t, _ in pairs])
    y = np.array([lab for _, _, lab in pairs])
    return eer(s, y)


def transcribe(x16: np.ndarray) -> list[str]:
    from pocketsphinx import Decoder

    dec = _decoder(Decoder)
    dec.start_utt()
    dec.process_raw((np.clip(x16, -1, 1) * 32767).astype("<i2").tobytes(), full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return hyp.hypstr.lower().split() if hyp else []


_DEC = None


def _decoder(cls):
    global _DEC
    if _DEC is None:
        _DEC = cls(samprate=16000, loglevel="FATAL")
    return _DEC


def wer(ref: list[str], hyp: list[str]) -> tuple[int, int]:
    """(edit distance, reference length)."""
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d = d, np.empty_like(d)
        d[0] = i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1]), len(ref)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--methods", default="pitch,world",
                    help="comma list of audio.method values, or LABEL=METHOD to compare variants of one method")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL:KEY=JSON",
                    help="override an AudioSettings field for one method/label, e.g. world:min_shift_semitones=5")
    ap.add_argument("--impostors", type=int, default=40, help="train-clean-100 impostor utterances (max 125)")
    ap.add_argument("--wer", type=int, default=12, help="utterances for the relative WER (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", default="voice-eer-benchmark")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here too")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from anon_core.audio.speakers import embed

    targets, impostors = load_items(args.data, args.impostors)
    files = [str(args.data / r["file"]) for r in targets + impostors]
    pairs = trials([{**r, "file": str(args.data / r["file"])} for r in targets],
                   [{**r, "file": str(args.data / r["file"])} for r in impostors])
    n_target = sum(p[2] for p in pairs)
    t0 = time.perf_counter()
    originals = {f: _read16(f) for f in files}
    orig_emb = {f: embed(x) for f, x in originals.items()}
    summary: dict = {"data": str(args.data), "speakers": len({r["speaker"] for r in targets}),
                     "utterances": len(targets), "impostors": len(impostors), "trials": len(pairs),
                     "target_trials": n_target, "attacker": "resemblyzer d-vector, cosine",
                     "original_eer": round(score(orig_emb, orig_emb, pairs), 4)}
    print(f"original EER {summary['original_eer']:.3f}  ({len(pairs)} trials, {n_target} target; "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    overrides: dict[str, dict] = {}
    for item in args.set:
        m, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        overrides.setdefault(m, {})[k] = json.loads(v)
    wer_files = [str(args.data / r["file"]) for r in targets[:: max(1, len(targets) // max(args.wer, 1))]][:args.wer]
    ref_words = {f: transcribe(originals[f]) for f in wer_files} if args.wer else {}
    results = {}
    for spec in args.methods.split(","):
        label, _, method = spec.rpartition("=")
        label = label or method
        t1 = time.perf_counter()
        ov = overrides.get(label, {})
        target_files = [str(args.data / r["file"]) for r in targets]
        jobs = [(f, method, "trial", args.seed, ov) for f in files]
        jobs += [(f, method, "enroll", args.seed, ov) for f in target_files]
        with ProcessPoolExecutor(args.workers) as pool:
            anon = dict(pool.map(_anonymize_job, jobs, chunksize=2))
        t_anon = time.perf_counter() - t1
        trial_emb = {f: embed(anon[f"{f}|trial"]) for f in files}
        enroll_emb = {f: embed(anon[f"{f}|enroll"]) for f in target_files}
        res = {"ignorant_eer": round(score(orig_emb, trial_emb, pairs), 4),
               "lazy_informed_eer": round(score(enroll_emb, trial_emb, pairs), 4),
               "overrides": ov, "anonymize_s": round(t_anon, 1),
               "audio_s": round(sum(len(originals[f]) for f in files + target_files) / 16000, 1)}
        if wer_files:
            errs = sum(wer(ref_words[f], transcribe(anon[f"{f}|trial"]))[0] for f in wer_files)
            n_ref = sum(len(ref_words[f]) for f in wer_files)
            res["relative_wer"] = round(errs / max(n_ref, 1), 4)
            res["wer_utterances"], res["wer_ref_words"] = len(wer_files), n_ref
        res["method"] = method
        results[label] = res
        print(f"{label:8s} ignorant EER {res['ignorant_eer']:.3f}  lazy-informed EER {res['lazy_informed_eer']:.3f}"
              f"  rel. WER {res.get('relative_wer', float('nan')):.3f}  ({t_anon:.0f} s to anonymize "
              f"{res['audio_s']:.0f} s of audio)", flush=True)
    summary["methods"] = results
    return write_summary(summary, t0, args.out)


def write_summary(summary: dict, t0: float, out: Path | None) -> int:
    """Stamp the run's wall time, print the one-line JSON summary and keep it in `out`."""
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    line = json.dumps(summary, sort_keys=True)
    if out:
        out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

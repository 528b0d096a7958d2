"""Real-time factor of the voice methods and of the Whisper recogniser (compute seconds per audio second).

One process, one thread, the same utterances for every method, each timed around `anonymize_waveform` (VAD,
speaker handling, transform; decode/encode excluded) after one warm-up call. Numbers taken on a shared machine
are labelled "loaded machine"; the ratios between methods of one run are the comparable part.

    .venv/bin/python benchmarks/voice_rtf.py --files 6 --methods pitch,mcadams,world --asr
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speech"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--methods", default="pitch,mcadams,world", help="METHOD or LABEL=METHOD, comma separated")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL:KEY=JSON")
    ap.add_argument("--asr", action="store_true", help="also time Whisper base (one thread)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from anon_core.audio.anonymize import anonymize_waveform
    from anon_core.audio.settings import AudioSettings
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from voice_privacy import _read16

    rows = [json.loads(line) for line in open(args.data / "speakers.jsonl")]
    rows = [r for r in rows if "test-other" in r.get("corpus", "")]
    rows = rows[:: max(1, len(rows) // max(args.files, 1))]  # spread over the speakers
    clips = [_read16(str(args.data / r["file"])) for r in rows[:args.files]]
    audio_s = sum(len(c) for c in clips) / 16000
    overrides: dict[str, dict] = {}
    for item in args.set:
        lab, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        overrides.setdefault(lab, {})[k] = json.loads(v)
    out = {"files": len(clips), "audio_s": round(audio_s, 1), "rtf": {}}
    for spec in args.methods.split(","):
        label, _, method = spec.rpartition("=")
        label = label or method
        s = AudioSettings(method=method, speakers="single", **overrides.get(label, {}))
        anonymize_waveform(clips[0][None, :16000], 16000, s)  # warm-up (VAD session, imports)
        t0 = time.perf_counter()
        for c in clips:
            anonymize_waveform(c[None], 16000, s)
        out["rtf"][label] = round((time.perf_counter() - t0) / audio_s, 4)
        print(f"{label:10s} RTF {out['rtf'][label]:.3f}", flush=True)
    if args.asr:
        from anon_core.audio import asr

        model = asr.load(threads=1)
        model.transcribe(clips[0][:16000])
        t0 = time.perf_counter()
        for c in clips:
            model.transcribe(c)
        out["rtf"]["whisper-base"] = round((time.perf_counter() - t0) / audio_s, 4)
        print(f"whisper    RTF {out['rtf']['whisper-base']:.3f}", flush=True)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

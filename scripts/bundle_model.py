"""Bundle trained component runs into ssae/assets/lfw128 with an evaluation and a model card.

The evaluation is on the LFW Part Labels test split, in model space (`ssae.evaluate`) and at the photos' own
resolution through the face crop and the paste back (`ssae.runtime.quality.evaluate_lfw_photos`, ONNX Runtime):
what the issue's targets are measured on.

    python scripts/bundle_model.py --runs RUNS --lfw LFW_PARTS --lfw-derived MASKS \
        [--sae-stages sae sae_ts] [--smpn-run smpn] [--rb-run rb] [--continued-from PREVIOUS_BUNDLE]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "ssae" / "assets" / "lfw128"


def run_summary(run: Path, upto: int | None = None) -> dict:
    """Steps, compute minutes, last evaluation and config of a run folder (only steps <= `upto` when given)."""
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if upto is not None:
        rows = [r for r in rows if r.get("step", 0) <= upto]
    steps = [r for r in rows if "sec_per_step" in r]
    wall, prev = 0.0, 0
    for r in steps:
        wall += r["sec_per_step"] * (r["step"] - prev)
        prev = r["step"]
    evals = [r["eval"] for r in rows if "eval" in r]
    cfg = json.loads((run / "config.json").read_text())
    return {"steps": steps[-1]["step"] if steps else 0, "compute_minutes": round(wall / 60, 1),
            "last_eval": evals[-1] if evals else None, "config": cfg}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--lfw-derived", required=True)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sae-stages", nargs="+", default=["sae"],
                    help="the SAE's run folders under RUNS in training order, each started from the one before "
                         "(NAME or NAME:STEPS when the weights are that run's step STEPS); the last one's weights are "
                         "bundled")
    ap.add_argument("--smpn-run", default="smpn", help="the SMPN's run folder under RUNS")
    ap.add_argument("--rb-run", default="rb", help="the RBs' run folder under RUNS")
    ap.add_argument("--continued-from", default=None,
                    help="a previous bundle folder (with training.json) these runs continued from: its training "
                         "counts as the earlier stages")
    ap.add_argument("--sae-note", default="", help="how the bundled SAE weights were trained (for the card)")
    ap.add_argument("--limitations", default="", help="known limitations paragraph for the card")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    DEST.mkdir(parents=True, exist_ok=True)
    stages = [(n.split(":")[0], int(n.split(":")[1]) if ":" in n else None) for n in args.sae_stages]
    sources = {"sae": runs / stages[-1][0], "smpn": runs / args.smpn_run, "rb": runs / args.rb_run}
    earlier = json.loads((Path(args.continued_from) / "training.json").read_text()) if args.continued_from else {}
    for comp, run in sources.items():
        shutil.copy(run / f"{comp}.safetensors", DEST / f"{comp}.safetensors")

    from ssae.data.layouts import LFWParts
    from ssae.data.memory import MemoryDataset
    from ssae.evaluate import evaluate
    from ssae.pretrained import load_pretrained
    from ssae.runtime import Editor
    from ssae.runtime.quality import evaluate_lfw_photos

    model = load_pretrained()
    test = MemoryDataset.load(LFWParts(args.lfw, "test", model.cfg.image_size, args.lfw_derived))
    metrics = evaluate(model, test, seeds_per_image=args.seeds)
    metrics["split"] = "LFW Part Labels test (held out from all training)"
    metrics["photo_level"] = evaluate_lfw_photos(
        Editor.load(backend="onnxruntime"), LFWParts(args.lfw, "test", model.cfg.image_size, args.lfw_derived),
        seeds=list(range(args.seeds)))
    (DEST / "metrics.json").write_text(json.dumps(metrics, indent=1))

    def with_earlier(comp: str, parts: list[dict]) -> dict:
        prev = earlier.get(comp)
        if prev:
            parts = (prev.get("stages") or [prev]) + parts
        return {"steps": sum(p["steps"] for p in parts),
                "compute_minutes": round(sum(p["compute_minutes"] for p in parts), 1),
                "last_eval": parts[-1]["last_eval"], "config": parts[-1]["config"], "stages": parts}

    summaries = {c: with_earlier(c, [run_summary(sources[c])]) for c in ("smpn", "rb")}
    parts = [run_summary(runs / name, upto) for name, upto in stages]
    summaries = {"sae": with_earlier("sae", parts), **summaries}
    (DEST / "training.json").write_text(json.dumps(summaries, indent=1))
    write_card(metrics, summaries, args.sae_note, args.limitations)
    print(json.dumps(metrics, indent=1))
    return 0


def stage_steps(summary: dict) -> str:
    """"2500 steps, then 800" for a component trained in stages."""
    steps = [str(st["steps"]) for st in summary.get("stages") or [summary]]
    return " steps, then ".join(steps) + " steps"


def write_card(metrics: dict, runs: dict, sae_note: str = "", limitations: str = "") -> None:
    iou, loc, ch = metrics["smpn_iou"], metrics["locality_ratio"], metrics["change_inside_8bit"]
    rec = metrics["reconstruction"]
    rows = "\n".join(f"| {r} | {iou[r]:.3f} | {loc[r]:.3f} | {ch[r]:.1f} |" for r in iou)
    ph = metrics["photo_level"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    photo_rows = "\n".join(f"| {r} | {fmt(ph['iou'][r], '.3f')} | {fmt(ph['locality'][r], '.4f')} | "
                           f"{fmt(ph['change_inside'][r], '.1f')} | {fmt(ph['detail'][r], '.3f')} |" for r in iou)
    comp = "\n".join(f"| {c} | {s['steps']} | {s['compute_minutes']} | `{s['config'].get('batch_size')}` |"
                     for c, s in runs.items())
    text = f"""# Model card: ssae lfw128 (bundled)

The model `ssae.load_pretrained()` and `ssae edit` use by default: SSAE at 128 x 128 px, trained from scratch on
this project's development machine (2 CPU cores, Intel Xeon with AVX-512 VNNI and AMX, bf16 autocast), on real
faces from Labeled Faces in the Wild; its last stage of every component was trained on crops cut by the same face
framing edits use (`ssae.face`: MTCNN landmarks, a similarity crop to the mean LFW landmark positions; on LFW photos
the earlier square-padded framing was within a few pixels of it). It is a small CPU model for out-of-the-box edits, not the
paper's CelebAMask-HQ model: its own output is soft, so edits paste its change onto the photo (the photo keeps its
detail), and they recolour a region rather than change its fine texture.

## Data
- SAE: LFW Part Labels *train* split (1500 images) + `lfw_unlabelled` (3000 images); no validation or test image.
- SMPN: LFW Part Labels train split. Hair and skin: the human labels. Nose, eyes and lips+mouth: polygons from
  MediaPipe Face Mesh landmarks (`ssae data lfw-masks`, mediapipe 0.10.21); skin = LFW skin minus those.
- RB: edits of the frozen SAE on the LFW train split (ground-truth masks where labelled).
- Evaluation: the LFW Part Labels *test* split ({metrics['images']} images), never used in training.
- Credit: LFW (UMass Amherst), LFW Part Labels (Kae et al., CVPR 2013); research use.

## Training (command: `scripts/train_bundled.sh`)
| component | steps | compute minutes | batch |
|---|---|---|---|
{comp}

SAE: {sae_note or "Park et al.'s objective (L1, non-saturating GAN on reconstructions and swaps, patch co-occurrence GAN, lazy R1; Adam 0.002, betas (0, 0.99)) after an L1-only warm-up."}
SMPN: BCE (Eq. 3) + soft Dice, AdamW, cosine schedule ({stage_steps(runs["smpn"])}). RB: Eq. 5 (L1 outside the
ROI + ROI discriminator), on edits of the bundled SAE ({stage_steps(runs["rb"])}). Stages and their compute
minutes: `training.json`.

## Metrics (LFW test split)
At the photos' own resolution (250 px), through face detection, the crop and the paste back (`ssae edit`'s
default output), {ph['faces_found']} of {ph['images']} faces found:

| ROI | IoU | edit locality (outside/inside) | mean change inside (8-bit levels) | detail correlation inside |
|---|---|---|---|---|
{photo_rows}

In model space (the 128 px crop): SAE reconstruction PSNR {rec['psnr_db']:.2f} dB, SSIM {rec['ssim']:.3f}.

| ROI | SMPN IoU | edit locality (outside/inside) | mean change inside (8-bit levels) |
|---|---|---|---|
{rows}

IoU: hair and skin ("face") against the human labels, nose/eyes/lips against the landmark masks. Locality: mean
absolute change outside the predicted ROI divided by inside, between an edit (strength {metrics['strength']}, region
noise) and the input photo (photo level) or the same pipeline at strength 0 (model space), averaged over images and
seeds. Detail: correlation of the high-pass detail of output and input inside the region (1: the photo's own
detail kept).

## Known limitations
{limitations or "None recorded."}

## Files
`sae.safetensors`, `smpn.safetensors`, `rb.safetensors` (config in each file's metadata), `metrics.json`,
`training.json`.
"""
    (DEST / "MODEL_CARD.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-stage CPU latency of every available backend, side by side with the official-equivalent PyTorch model.

For each model (default: the bundled lfw128 model at 128 px, and the paper's 256 config with random weights),
each backend runs every stage on full-size inputs, and the Editor runs whole edits of a real face; runs
alternate between backends (round-robin) so machine noise hits all of them alike. Reported: median (and min)
milliseconds, and the goal ratios:
- cached re-edit (new seed on an already-encoded image, through `Editor.edit`) vs one official decoder pass;
- full edit of a new image (image in -> image out, through `Editor.edit` with an empty cache) vs official
  encode + decode.
"Official" (the goal baseline) is the official-equivalent direct model computed as the official code computes it on
a CPU: its custom CUDA ops fall back to `upfirdn2d_native` (each blur as single-channel convs) and `F.leaky_relu`
(sae_architecture.md section 4). That is the decoder the issue timed at 1.6 s on this machine. The ratios are also
given against a faster variant of the same networks, each blur as one depthwise conv ("official, depthwise blur":
an optimisation the official code does not have), timed in the same run.
Backends with the sparse re-edit graph also time their other re-edit path (sparse tiles vs the crop window) in
the same run, so the choice each backend makes by default (`Backend.sparse_reedit`) is checked here.
Edits use the bundled SMPN's masks of the example face (resized to the model size), so random-weight models
edit realistic regions (hair: large, lips: small), and the hair mask with two specks in opposite corners (its
bounding box fills the frame, its area does not). Full edits include the framing (detection, crop) and the paste
back of the change; see bench_framing.py for their share.

    python benchmarks/bench_runtime.py [--models lfw128 paper256] [--repeats 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ssae.export.onnx_export import example_inputs
from ssae.export.stages import stage_specs
from ssae.runtime.profiling.bench import machine_info, save_json
from ssae.runtime.profiling.stats import time_call
from ssae.models.official import OfficialEncoder, OfficialGenerator, use_native_blur
from ssae.runtime.backend import BackendError
from ssae.runtime.registry import create_backend, load_torch_model, resolve_model

STAGES = ("smpn", "smpn_hair", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_hair")
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-fp32")



def _with_sparse(ed, sparse: bool):
    """The Editor with its region re-edits on the sparse tiles (True) or the crop window (False)."""
    ed.sparse = sparse
    return ed

def official_pair(model, native: bool = False):
    """The official networks (direct formulation) with the shapes of `model.sae` (random weights: timing only).
    native: blur as the official code computes it on a CPU (`upfirdn2d_native`; the goal baseline), else with one
    depthwise conv."""
    cfg = model.sae.cfg
    e, g = OfficialEncoder(cfg).eval(), OfficialGenerator(cfg).eval()
    return use_native_blur(e, native), use_native_blur(g, native)


def stage_inputs(model, batch=1):
    specs = stage_specs(model)
    size = model.cfg.image_size
    return {s: {t.name: a.numpy() for t, a in zip(specs[s].inputs,
                                                  example_inputs(specs[s], batch, seed=1, full_hw=size))}
            for s in STAGES}


def real_masks(size: int) -> dict[str, np.ndarray]:
    """The bundled model's masks of the example face, resized to size x size."""
    from PIL import Image

    from ssae.pretrained import ASSETS
    from ssae.runtime import Editor
    ed = Editor.load(None, backend="torch")
    m = ed.masks(ASSETS / "example_face.jpg")
    return {r: np.asarray(Image.fromarray(v, mode="F").resize((size, size), Image.BILINEAR)) for r, v in m.items()}


def bench_model(name: str, repeats: int, backends, threads: int) -> dict:
    torch.set_num_threads(threads)
    src = resolve_model(None if name == "bundled" else name)
    model = load_torch_model(src)
    size = model.cfg.image_size
    inputs = stage_inputs(model)
    runners = {}
    for b in backends:
        try:
            be = create_backend(b, src)
            for s in STAGES:  # warm-up (and compile)
                be.run(s, inputs[s])
            runners[b] = be
        except BackendError as e:
            print(f"  skip {b}: {e}", file=sys.stderr)
    e_off, g_off = official_pair(model, native=True)
    e_dw, g_dw = official_pair(model)
    x = torch.from_numpy(inputs["sae_encoder"]["image"])
    with torch.no_grad():
        sp, gl = e_off(x)
        noises = [torch.zeros(1, 1, h, w) for h, w in model.sae.G.noise_shapes(sp.shape[-2:])]
        g_off(sp, gl, noises)
        e_dw(x), g_dw(sp, gl, noises)
    from ssae.runtime.editor import Editor
    face = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        Path(__file__).resolve().parents[1] / "ssae" / "assets" / "example_face.jpg").convert("RGB").resize((size, size)))
    masks = real_masks(size)
    # the hair mask plus two 2 px specks in opposite corners: its bounding box fills the frame, its area does not
    wide = masks["hair"].copy()
    wide[:2, :2] = wide[-2:, -2:] = 1.0
    masks["hair_wide"] = wide
    editors = {b: Editor(be) for b, be in runners.items()}
    # the other re-edit path (sparse tiles vs the crop window), timed in the same run for the ratio
    alt = {b: _with_sparse(Editor(runners[b]), not ed.sparse) for b, ed in editors.items()
           if "sae_decoder_edit_sparse" in runners[b].stages()}
    for ed in list(editors.values()) + list(alt.values()):  # warm-up: first edit encodes, second builds the baseline
        for roi in ("hair", "lips"):
            ed.edit(face, roi=roi, seed=0, mask=masks[roi])
            ed.edit(face, roi=roi, seed=1, mask=masks[roi])
    edit_keys = ("full_edit", "cached_reedit_hair", "cached_reedit_lips", "cached_reedit_hair_wide",
                 "alt_reedit_hair", "alt_reedit_lips", "alt_reedit_hair_wide")
    times = {b: {s: [] for s in STAGES + edit_keys} for b in runners}
    times["official"] = {"encoder": [], "decoder": []}
    times["official_depthwise"] = {"encoder": [], "decoder": []}
    for k in range(repeats):
        with torch.no_grad():
            for key, (e, g) in (("official", (e_off, g_off)), ("official_depthwise", (e_dw, g_dw))):
                times[key]["encoder"].append(time_call(lambda: e(x)))
                times[key]["decoder"].append(time_call(lambda: g(sp, gl, noises)))
        for b, be in runners.items():
            for s in STAGES:
                times[b][s].append(time_call(lambda: be.run(s, inputs[s]), be.synchronize))
            ed = editors[b]
            ed.clear_cache()
            times[b]["full_edit"].append(time_call(lambda: ed.edit(face, roi="hair", seed=k + 2)))
            for case in ("hair", "lips", "hair_wide"):  # untimed: each mask's unedited RB result, which re-edits reuse
                ed.edit(face, roi=case.split("_")[0], seed=0, mask=masks[case])
            for case in ("hair", "lips", "hair_wide"):
                roi = case.split("_")[0]
                times[b][f"cached_reedit_{case}"].append(
                    time_call(lambda: ed.edit(face, roi=roi, seed=k + 2, mask=masks[case])))
                if b in alt:
                    times[b][f"alt_reedit_{case}"].append(
                        time_call(lambda: alt[b].edit(face, roi=roi, seed=k + 2, mask=masks[case])))
    med = {b: {s: float(np.median(v)) for s, v in d.items() if v} for b, d in times.items()}
    mins = {b: {s: float(np.min(v)) for s, v in d.items() if v} for b, d in times.items()}
    def goal_ratios(m: dict, official: str) -> dict:
        """The issue's goal ratios of one backend against one official baseline: its decoder for re-edits, its
        encoder + decoder for the full edit."""
        dec, enc = med[official]["decoder"], med[official]["encoder"]
        return {"cached_reedit_hair": dec / m["cached_reedit_hair"],
                "cached_reedit_lips": dec / m["cached_reedit_lips"],
                "cached_reedit_hair_wide": dec / m["cached_reedit_hair_wide"], "full_edit": (enc + dec) / m["full_edit"]}

    rows = {}
    for b in runners:
        m = med[b]
        off = goal_ratios(m, "official")
        rows[b] = {"stages_ms": {s: m[s] for s in STAGES}, "stages_min_ms": mins[b],
                   "full_edit_ms": m["full_edit"], "cached_reedit_hair_ms": m["cached_reedit_hair"],
                   "cached_reedit_lips_ms": m["cached_reedit_lips"],
                   "cached_reedit_hair_wide_ms": m["cached_reedit_hair_wide"],
                   "cached_reedit_hair_wide_speedup_vs_official_decoder": off["cached_reedit_hair_wide"],
                   "cached_reedit_hair_speedup_vs_official_decoder": off["cached_reedit_hair"],
                   "cached_reedit_lips_speedup_vs_official_decoder": off["cached_reedit_lips"],
                   "full_edit_speedup_vs_official_encode_decode": off["full_edit"],
                   "vs_official_depthwise": goal_ratios(m, "official_depthwise"),
                   "reedit_path": "sparse" if editors[b].sparse else "window"}
        if b in alt:
            rows[b].update({"alt_reedit_path": "sparse" if alt[b].sparse else "window",
                            "alt_reedit_hair_ms": m["alt_reedit_hair"], "alt_reedit_lips_ms": m["alt_reedit_lips"],
                            "alt_reedit_hair_wide_ms": m["alt_reedit_hair_wide"]})
    return {"model": name, "image_size": size, "repeats": repeats, "official_ms": med["official"],
            "official_depthwise_ms": med["official_depthwise"], "backends": rows}


def print_table(res: dict) -> None:
    print(f"\n{res['model']} ({res['image_size']} px), median of {res['repeats']} runs, ms; official (as on a CPU) "
          f"encoder {res['official_ms']['encoder']:.1f}, decoder {res['official_ms']['decoder']:.1f}")
    head = ["backend"] + [s.replace("sae_", "") for s in STAGES] + [
        "full edit", "re-edit hair", "re-edit lips", "re-edit hair, box fills the frame", "full x", "hair x",
        "lips x", "wide hair x", "re-edit path", "other path: hair / lips / wide hair"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for b, r in res["backends"].items():
        other = (f"{r['alt_reedit_path']}: {r['alt_reedit_hair_ms']:.1f} / {r['alt_reedit_lips_ms']:.1f} / "
                 f"{r['alt_reedit_hair_wide_ms']:.1f}" if "alt_reedit_path" in r else "-")
        cells = [b] + [f"{r['stages_ms'][s]:.1f}" for s in STAGES] + [
            f"{r['full_edit_ms']:.1f}", f"{r['cached_reedit_hair_ms']:.1f}", f"{r['cached_reedit_lips_ms']:.1f}",
            f"{r['cached_reedit_hair_wide_ms']:.1f}", f"{r['full_edit_speedup_vs_official_encode_decode']:.1f}",
            f"{r['cached_reedit_hair_speedup_vs_official_decoder']:.1f}",
            f"{r['cached_reedit_lips_speedup_vs_official_decoder']:.1f}",
            f"{r['cached_reedit_hair_wide_speedup_vs_official_decoder']:.1f}", r["reedit_path"], other]
        print("| " + " | ".join(cells) + " |")
    dw = res["official_depthwise_ms"]
    print(f"\nagainst the official networks with each blur as one depthwise conv (faster than the official code): "
          f"encoder {dw['encoder']:.1f} ms, decoder {dw['decoder']:.1f} ms; full edit / hair re-edit / lips re-edit "
          f"speed-ups:")
    for b, r in res["backends"].items():
        v = r["vs_official_depthwise"]
        print(f"  {b}: {v['full_edit']:.1f}x / {v['cached_reedit_hair']:.1f}x / {v['cached_reedit_lips']:.1f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["bundled", "paper256"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = {"machine": machine_info(), "results": []}
    for m in args.models:
        res = bench_model(m, args.repeats, args.backends, args.threads)
        print_table(res)
        out["results"].append(res)
    if args.json:
        save_json(out, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

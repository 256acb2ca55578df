"""Fuzzing the image decoder and `Editor.edit` with a few hundred hostile images: truncated and bit-flipped files,
forged headers (huge declared sizes, a 1 x 40000 strip), every PIL mode, extreme aspect ratios, animated images.
Each must give a correct-size output or a one-line `SSAEError` (never another exception), within bounded memory.
Runs in a subprocess so that its peak memory can be measured."""
import json
import subprocess
import sys

FUZZ = r'''
import io, json, random, resource, struct, sys, zlib
import numpy as np
from PIL import Image
from ssae.errors import SSAEError
from ssae.runtime import Editor
from ssae.runtime.images import load_image

export, face_path, n_mut = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(0)
face = Image.open(face_path).convert("RGB")

def enc(im, fmt, **kw):
    b = io.BytesIO(); im.save(b, format=fmt, **kw); return b.getvalue()

def png_with_size(w, h):
    """A valid-looking PNG whose IHDR declares w x h (CRC fixed), with a tiny IDAT."""
    raw = enc(Image.new("L", (8, 8)), "PNG")
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]

bases = [enc(face, "JPEG", quality=90), enc(face, "PNG"), enc(face.convert("P"), "GIF"), enc(face, "WEBP"),
         enc(face, "BMP"), enc(face, "TIFF")]
cases = []
for k in range(n_mut):                                    # truncations and bit flips of real files
    b = bytearray(rng.choice(bases))
    if k % 2:
        b = b[: rng.randrange(1, len(b))]
    else:
        for _ in range(rng.randrange(1, 12)):
            i = rng.randrange(len(b)); b[i] ^= 1 << rng.randrange(8)
    cases.append(bytes(b))
for mode in ("1", "L", "LA", "P", "PA", "I", "I;16", "F", "RGBA", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"):
    try:
        im = face.convert(mode) if mode not in ("I;16", "PA") else (
            Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257) if mode == "I;16" else
            face.convert("P").convert("PA"))
        cases.append(im)
    except (ValueError, OSError):
        pass
for w, h in ((1, 1), (1, 40000), (40000, 1), (3, 2000), (2000, 3), (7, 5), (16384, 2), (6000, 6000)):
    cases.append(png_with_size(w, h))                      # forged headers: nothing that big is ever decoded
for w, h in ((1, 1), (2, 700), (900, 3), (5, 5), (33, 1)):
    cases.append(np.zeros((h, w, 3), np.uint8) + 90)
frames = [face.rotate(a) for a in (0, 10, 20)]             # animated GIF and PNG: the first frame is edited
b = io.BytesIO(); frames[0].save(b, format="GIF", save_all=True, append_images=frames[1:]); cases.append(b.getvalue())
b = io.BytesIO(); frames[0].save(b, format="PNG", save_all=True, append_images=frames[1:]); cases.append(b.getvalue())
cases += [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM" + b"\x00" * 60, np.zeros((0, 5, 3), np.uint8),
          np.full((4, 4, 3), np.nan, np.float32), "not/a/file.png"]

ed = Editor.load(export, backend="onnxruntime")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"cases": len(cases), "edited": 0, "refused": 0, "bad": []}
for k, c in enumerate(cases):
    try:
        rgb = load_image(c)
    except SSAEError as e:
        out["refused"] += 1
        assert "\n" not in str(e)
        continue
    except Exception as e:
        out["bad"].append(f"case {k}: load_image raised {type(e).__name__}: {e}"); continue
    for frame in ("face", "whole"):
        try:
            r = ed.edit(c, roi="lips", seed=k, frame=frame)
            if r.image.size != (rgb.shape[1], rgb.shape[0]):
                out["bad"].append(f"case {k}: output {r.image.size} for input {rgb.shape}")
            out["edited"] += 1
        except SSAEError as e:
            out["refused"] += 1
            assert "\n" not in str(e)
        except Exception as e:
            out["bad"].append(f"case {k} ({frame}): edit raised {type(e).__name__}: {e}")
out["peak_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
'''


def test_fuzzed_images_give_an_output_or_a_one_line_error(tiny_export, face_path):
    r = subprocess.run([sys.executable, "-c", FUZZ, str(tiny_export), str(face_path), "240"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bad"] == [], out["bad"][:10]
    assert out["cases"] > 270 and out["edited"] > 100 and out["refused"] > 50, out
    assert out["peak_growth_mb"] < 400, out   # no decoded bomb, no padded square: a 6000 x 6000 header costs nothing

"""Face framing: the detector (MTCNN on ONNX Runtime), the similarity crop and the paste back. Uses only the bundled
example face, so it runs in a bare clone."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssae.face import TEMPLATE, FaceCrop, feather, frame_faces, shared_detector
from ssae.pretrained import ASSETS

FACE = ASSETS / "example_face.jpg"


def face() -> np.ndarray:
    return np.asarray(Image.open(FACE).convert("RGB"))


def scene(scale: float, at: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The example face scaled and pasted at `at` (top-left x, y) onto a smooth background of `size` (W, H)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([(xx * 200 // w), (yy * 180 // h) + 40, np.full_like(xx, 90)], -1).astype(np.uint8)
    f = Image.fromarray(face())
    f = f.resize((round(f.width * scale), round(f.height * scale)), Image.LANCZOS)
    img = Image.fromarray(bg)
    img.paste(f, at)
    return np.asarray(img)


def test_detector_finds_the_face_and_orders_its_landmarks():
    faces = shared_detector().detect(face())
    assert len(faces) == 1 and faces[0].score > 0.9
    lm = faces[0].landmarks
    le, re, nose, ml, mr = lm
    assert le[0] < nose[0] < re[0] and ml[0] < mr[0]
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])
    x0, y0, x1, y1 = faces[0].box
    assert (lm[:, 0] > x0).all() and (lm[:, 0] < x1).all() and (lm[:, 1] > y0).all() and (lm[:, 1] < y1).all()


@pytest.mark.parametrize("scale,at,size", [(0.8, (520, 90), (900, 600)), (2.5, (1400, 2300), (3000, 3600)),
                                           (0.6, (10, 200), (400, 420))])
def test_detector_finds_off_centre_faces_in_larger_photos(scale, at, size):
    """A face scaled and pasted off-centre: found where it was pasted, landmarks in photo pixels (the detection
    copy of a large photo is mapped back)."""
    ref = shared_detector().detect(face())[0].landmarks
    got = shared_detector().detect(scene(scale, at, size))
    assert got, "face not found"
    want = ref * scale + np.array(at)
    assert np.abs(got[0].landmarks - want).max() < 0.06 * 250 * scale


def test_no_face_in_noise_or_flat_images():
    rng = np.random.default_rng(0)
    assert shared_detector().detect(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) == []
    assert shared_detector().detect(np.full((64, 64, 3), 200, np.uint8)) == []
    assert frame_faces(np.zeros((5, 900, 3), np.uint8), 128) == []


def test_similarity_fit_recovers_a_known_transform():
    size = 64
    z, t = 3.1 * np.exp(0.3j), 40 - 17j
    p = (TEMPLATE[:, 0] + 1j * TEMPLATE[:, 1]) * size
    q = z * p + t
    c = FaceCrop.from_landmarks(np.stack([q.real, q.imag], 1), 500, 400, size)
    assert np.allclose([c.a, c.b, c.tx, c.ty], [z.real, z.imag, t.real, t.imag])
    uv = np.array([[3.0, 7.0], [60.0, 1.0]])
    assert np.allclose(c.to_crop(c.to_photo(uv)), uv) and np.isclose(c.scale, 3.1)


def test_whole_frame_crop_is_the_identity_on_a_square_photo_and_pads_others():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    c = FaceCrop.whole_frame(32, 32, 32)
    assert np.array_equal(c.cut_rgb(img), img)
    m = rng.random((32, 32)).astype(np.float32)
    assert np.allclose(c.cut_mask(m), m) and np.abs(c.paste_mask(m) - m).max() <= 0.5 / 255 + 1e-6  # 8-bit levels
    wide = FaceCrop.whole_frame(20, 80, 40)        # 2 photo px per crop px, 10 crop rows of padding top and bottom
    img = np.full((20, 80, 3), 77, np.uint8)
    img[:, 40:] = 200
    out = wide.cut_rgb(img)
    assert out.shape == (40, 40, 3) and (out[0, :18] == 77).all() and (out[-1, 22:] == 200).all()  # edges replicated


def test_crop_and_paste_are_inverse_and_exact_outside_the_mask():
    """A rotated, scaled crop of a smooth photo; a constant change pasted under a mask moves exactly the photo
    pixels under the pasted mask and leaves every other pixel bit for bit."""
    h, w = 300, 420
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1).astype(np.uint8)
    c = FaceCrop(2.0 * np.cos(0.2), 2.0 * np.sin(0.2), 150.0, 60.0, 64, h, w)
    cut = c.cut_rgb(photo).astype(int)
    centre = c.to_photo(np.array([[32.5, 32.5]]))[0]
    assert np.abs(cut[32, 32] - photo[int(centre[1]), int(centre[0])].astype(int)).max() <= 2
    m = np.zeros((64, 64), np.float32)
    m[20:40, 10:30] = 1
    soft = feather(m, 1.5)
    assert (soft >= m).all() and soft[0, 0] == 0 and 0 < soft[19, 20] < 1
    change = np.full((64, 64, 3), 30.0, np.float32)
    out = c.paste_change(photo, change, soft)
    pasted = c.paste_mask(soft)
    assert (c.paste_mask(m) <= pasted).all()
    assert np.array_equal(out[pasted == 0], photo[pasted == 0])
    full = pasted >= 0.999
    assert full.sum() > 500 and np.array_equal(out[full].astype(int), np.minimum(photo[full].astype(int) + 30, 255))
    back = c.cut_mask(c.paste_mask(m))
    assert np.abs(back - m)[22:38, 12:28].max() < 1e-3 and back[:15].max() < 1e-3


MEMORY = r"""
import resource, sys, numpy as np
from ssae.face import FaceCrop, frame_faces
h, w = int(sys.argv[1]), int(sys.argv[2])
photo = np.full((h, w, 3), 120, np.uint8)
photo[::7] = 30
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
found = frame_faces(photo, 128)
c = FaceCrop.whole_frame(h, w, 128)
x = c.cut_rgb(photo)
m = np.zeros((128, 128), np.float32); m[60:70, 60:70] = 1
out = c.paste_change(photo, np.ones((128, 128, 3), np.float32), m)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / photo.nbytes, x.shape, len(found))
"""


@pytest.mark.parametrize("h,w", [(1, 12000), (12000, 1), (5000, 6000)])
def test_framing_memory_is_bounded_by_the_photo_not_its_padded_square(h, w):
    """No padded max(H, W) square is ever built: detection, the whole-frame cut and the paste of a 1 x 12000 photo
    or a 30 Mpx one stay within about two photo sizes (a padded square would be 12000x the first)."""
    r = subprocess.run([sys.executable, "-c", MEMORY, str(h), str(w)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ratio = float(r.stdout.split()[0])
    assert ratio < 2.5 + 3e7 / (h * w * 3), r.stdout


def test_photo_metrics_against_known_edits():
    """outside PSNR, detail correlation and change inside on edits whose answers are known."""
    from ssae.runtime.quality import PSNR_CAP, photo_metrics
    rng = np.random.default_rng(3)
    src = rng.integers(40, 200, (200, 300, 3)).astype(np.uint8)
    mask = np.zeros((200, 300), np.float32)
    mask[50:150, 100:200] = 1
    same = photo_metrics(src, src, mask)
    assert same["outside_psnr"] == PSNR_CAP and same["detail"] > 0.999 and same["change"] == 0
    shifted = src.copy()
    shifted[mask > 0] += 20                                     # a flat recolour keeps the detail
    m = photo_metrics(src, shifted, mask)
    assert m["outside_psnr"] == PSNR_CAP and m["detail"] > 0.99 and abs(m["change"] - 20) < 1e-6
    smooth = src.copy()
    smooth[mask > 0] = 128                                      # the region replaced by a flat patch
    assert photo_metrics(src, smooth, mask)["detail"] < 0.2
    noisy = src.astype(int) + rng.integers(-4, 5, src.shape)
    assert 30 < photo_metrics(src, np.clip(noisy, 0, 255).astype(np.uint8), mask)["outside_psnr"] < 45


# ---------------------------------------------------------------------------------------------- the device path
def _exact_paste(photo, crop, change, soft, box):
    """(round(photo + w * change), w) with the change and the soft mask (w, in 8-bit levels) sampled bilinearly at
    every photo pixel of `box`, in float64: what both paste paths approximate."""
    x0, y0, x1, y1 = box
    s = crop.size
    xs, ys = np.arange(x0, x1) + 0.5 - crop.tx, np.arange(y0, y1) + 0.5 - crop.ty
    det = crop.a ** 2 + crop.b ** 2
    u = (crop.a * xs[None] + crop.b * ys[:, None]) / det - 0.5
    v = (-crop.b * xs[None] + crop.a * ys[:, None]) / det - 0.5
    planes = np.concatenate([change, soft[..., None]], -1).astype(np.float64)

    def at(iy, ix):
        ok = (iy >= 0) & (iy < s) & (ix >= 0) & (ix < s)
        return np.where(ok[..., None], planes[np.clip(iy, 0, s - 1), np.clip(ix, 0, s - 1)], 0.0)

    fx, fy = np.floor(u).astype(int), np.floor(v).astype(int)
    dx, dy = (u - fx)[..., None], (v - fy)[..., None]
    p = (at(fy, fx) * (1 - dx) * (1 - dy) + at(fy, fx + 1) * dx * (1 - dy) + at(fy + 1, fx) * (1 - dx) * dy
         + at(fy + 1, fx + 1) * dx * dy)
    w = np.round(np.clip(p[..., 3], 0, 1) * 255) / 255
    return np.clip(np.round(photo[y0:y1, x0:x1] + p[..., :3] * w[..., None]), 0, 255).astype(int), w


DEVICE_CROPS = [  # (crop, photo height, width): rotated and reduced, enlarged, the whole frame, 1:1 at an offset
    lambda h, w: FaceCrop(2.7 * np.cos(0.2), 2.7 * np.sin(0.2), 300.0, 100.0, 128, h, w),
    lambda h, w: FaceCrop(0.8, 0.1, -20.0, 600.0, 64, h, w),
    lambda h, w: FaceCrop.whole_frame(h, w, 256),
    lambda h, w: FaceCrop(1.0, 0.0, 10.0, 10.0, 128, h, w),
]


@pytest.mark.parametrize("make_crop", DEVICE_CROPS)
def test_device_framing_is_the_host_framing(make_crop):
    """`ssae.face.device` (what a GPU chain runs) against `framing.py`: the cut is the PIL cut bit for bit (box
    reduction and bicubic warp, edge pixels replicated beyond the photo); the feathered mask is the same; the paste
    is the exact bilinear paste (within one level from float rounding, where the host's 8-bit codes are off by up to
    several levels on large changes), and the photo bit for bit wherever the pasted soft mask is zero."""
    torch = pytest.importorskip("torch")
    from ssae.data.transforms import to_model_array
    from ssae.face import device as fd

    rng = np.random.default_rng(0)
    h, w = 700, 900
    yy, xx = np.mgrid[0:h, 0:w]
    photo = (np.stack([xx * 0.25, yy * 0.3, (xx + yy) * 0.12], -1) + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
    c = make_crop(h, w)
    on_device = fd.DevicePhoto.upload(photo, c, torch.device("cpu"), key="p")
    assert np.array_equal(fd.cut(on_device, c).numpy(), to_model_array(c.cut_rgb(photo)))

    s = c.size
    m = np.zeros((s, s), np.float32)
    m[s // 4: s // 2, s // 5: s // 2] = 1
    m[s // 2, s // 2] = 0.4
    soft = feather(m, 1.5)
    soft_dev = fd.feather(torch.from_numpy(m), 1.5)
    assert np.abs(soft_dev.numpy() - soft).max() < 1e-6 and np.array_equal(soft_dev.numpy() == 0, soft == 0)
    for sd in (20.0, 150.0):
        change = rng.normal(0, sd, (s, s, 3)).astype(np.float32)
        box = c.support_box(soft)
        patch = fd.paste_change(on_device, c, torch.from_numpy(change.transpose(2, 0, 1).copy()), soft_dev, box)
        patch = patch.numpy().astype(int)
        exact, pasted = _exact_paste(photo, c, change, soft, box)
        assert np.abs(patch - exact).max() <= 1 and (patch != exact).mean() < 1e-3
        x0, y0, x1, y1 = box
        zero = pasted == 0
        assert zero.sum() > 100 and np.array_equal(patch[zero], photo[y0:y1, x0:x1][zero])
    with pytest.raises(ValueError, match="outside the photo region"):
        fd.paste_change(on_device, c, torch.zeros(3, s, s), soft_dev, (0, 0, w + 1, h))


def test_device_cut_is_the_host_cut_on_random_crops():
    """Random similarity crops (scale 0.3-9 photo px per crop px, any rotation, partly or wholly outside the photo)
    of random photos: the device cut is `cut_rgb` bit for bit."""
    torch = pytest.importorskip("torch")
    from ssae.data.transforms import to_model_array
    from ssae.face import device as fd

    rng = np.random.default_rng(7)
    for _ in range(16):
        h, w = (int(v) for v in rng.integers(40, 900, 2))
        photo = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        size = int(rng.choice([32, 64, 128]))
        z = np.exp(rng.uniform(np.log(0.3), np.log(9.0))) * np.exp(1j * rng.uniform(-np.pi, np.pi))
        t = rng.uniform(-0.5, 1.2, 2) * (w, h)
        c = FaceCrop(float(z.real), float(z.imag), float(t[0]), float(t[1]), size, h, w)
        dev = fd.cut(fd.DevicePhoto.upload(photo, c, torch.device("cpu")), c).numpy()
        assert np.array_equal(dev, to_model_array(c.cut_rgb(photo))), c

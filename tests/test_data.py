"""Dataset layouts, the shared resize policy and landmark-derived masks."""
import shutil

import numpy as np
import pytest
from PIL import Image

from ssae.config import ROIS
from ssae.data import CelebAMaskHQ, FolderDataset, ImageFolder, LFWParts, SquareFit
from ssae.data.landmarks import LEFT_EYE, LIPS_OUTER, NOSE, RIGHT_EYE, convex_hull, masks_from_landmarks
from ssae.data.layouts import CELEBA_PARTS, celeba_index_map_to_parts
from ssae.data.memory import BatchSampler, MemoryDataset


@pytest.fixture(scope="module")
def celeba_release(tmp_path_factory, shared_dir):
    """The four CelebAMask-HQ samples rewritten into the official release layout."""
    root = tmp_path_factory.mktemp("celeba")
    src = shared_dir / "data" / "celebamask_hq_samples"
    (root / "CelebA-HQ-img").mkdir()
    for i in range(4):
        shutil.copy(src / f"{i}.jpg", root / "CelebA-HQ-img" / f"{i}.jpg")
        label = np.asarray(Image.open(src / f"{i}.png"))
        d = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        d.mkdir(parents=True, exist_ok=True)
        for part, m in celeba_index_map_to_parts(label).items():
            Image.fromarray((m * 255).astype(np.uint8)).save(d / f"{i:05d}_{part}.png")
    return root, src


def test_celebamask_hq_release_layout(celeba_release):
    root, src = celeba_release
    ds = CelebAMaskHQ(root, size=64)
    assert ds.names == ["0", "1", "2", "3"]
    s = ds[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.masks.shape == (5, 64, 64) and s.labelled.all()
    img, photo_masks = ds.photo(0)                       # the photo at its own size, masks resized to it
    assert img.shape == (1024, 1024, 3) and all(m.shape == (1024, 1024) for m in photo_masks.values())
    from ssae.face import frame_training_image
    crop = frame_training_image(img, 64)                 # the sample is the face crop of the framing
    assert np.array_equal(s.image, crop.cut_rgb(img))
    label = np.asarray(Image.open(src / "0.png"))
    names = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
             "mouth", "u_lip", "l_lip", "hair")
    for r, roi in enumerate(ROIS):
        want = np.isin(label, [names.index(p) for p in CELEBA_PARTS[roi]]).astype(np.float32)
        big = np.asarray(Image.fromarray(want, mode="F").resize((1024, 1024), Image.BILINEAR))
        assert np.abs(s.masks[r] - crop.cut_mask(big)).max() < 0.05, roi
    assert s.masks[ROIS.index("hair")].mean() > 0.05 and s.masks[ROIS.index("skin")].mean() > 0.05


def test_lfw_parts_with_derived_masks(tmp_path, lfw_mini):
    lfw = lfw_mini
    name = (lfw / "train.txt").read_text().split()[0]
    derived = tmp_path / "derived"
    for roi in ("nose", "eyes", "lips"):
        (derived / roi).mkdir(parents=True)
        m = np.zeros((250, 250), np.uint8)
        m[100:150, 100:150] = 255  # a square inside the face
        Image.fromarray(m).save(derived / roi / f"{name}.png")
    plain = LFWParts(lfw, "train", 250)
    withd = LFWParts(lfw, "train", 250, derived)
    assert len(plain) == 24 and len(LFWParts(lfw, "test", 64)) == len((lfw / "test.txt").read_text().split())
    (img, a), (_, b) = plain.photo(0), withd.photo(0)                 # at the photo's resolution
    label = np.asarray(Image.open(lfw / "labels" / f"{name}.png"))
    assert img.shape == (250, 250, 3)
    assert np.array_equal(a["hair"] > 0.5, label == 2) and np.array_equal(a["skin"] > 0.5, label == 1)
    assert a["nose"] is None and all(b[r] is not None for r in ("nose", "eyes", "lips"))
    assert b["skin"][100:150, 100:150].max() == 0                    # skin minus nose/eyes/lips
    assert np.array_equal(b["skin"] > 0.5, (label == 1) & (np.asarray(Image.open(derived / "nose" / f"{name}.png")) == 0))
    sa, sb = plain[0], withd[0]                                     # the samples: the same, framed
    assert list(sa.labelled) == [True, True, False, False, False] and sb.labelled.all()
    from ssae.face import frame_training_image
    crop = frame_training_image(img, 250)
    assert np.abs(sa.masks[0] - crop.cut_mask(a["hair"])).max() < 1e-5 and np.array_equal(sa.image, crop.cut_rgb(img))


def test_folder_layout_and_unlabelled_folder(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{n}.png")
    (tmp_path / "masks" / "hair").mkdir(parents=True)
    m = np.zeros((40, 60), np.uint8)
    m[:, :30] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "hair" / "a.png")
    ds = FolderDataset(tmp_path, 32)
    s = ds[0]
    assert ds.names == ["a", "b"] and s.image.shape == (32, 32, 3)
    assert list(s.labelled) == [True, False, False, False, False] and not ds[1].labelled.any()
    assert 0.3 < s.masks[0].mean() < 0.45  # left half of the (padded) image
    uf = ImageFolder([tmp_path / "images"], 16)
    assert len(uf) == 2 and uf[1].image.shape == (16, 16, 3)
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / "nope", 32)


@pytest.mark.parametrize("h,w", [(40, 60), (61, 33), (50, 50)])
def test_square_fit_roundtrip(h, w):
    fit = SquareFit(h, w, 32)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 200
    x = fit.forward_rgb(img)
    assert x.shape == (32, 32, 3)
    back = fit.restore_rgb(x)
    assert back.shape == (h, w, 3)
    assert np.abs(back.astype(int) - img).mean() < 12
    m = fit.restore_mask(fit.forward_mask((img[..., 0] > 0).astype(np.float32)))
    assert m.shape == (h, w) and 0 <= m.min() and m.max() <= 1
    assert np.abs(m - (img[..., 0] > 0)).mean() < 0.08


def test_memory_dataset_batches_and_sampler(tmp_path, lfw_mini):
    ds = LFWParts(lfw_mini, "train", 32)
    ds.names = ds.names[:10]
    mem = MemoryDataset.load(ds, cache=tmp_path)
    assert list(tmp_path.glob("*.npz")) and MemoryDataset.load(ds, cache=tmp_path).names == mem.names
    b = mem.batch(np.array([0, 1]), np.array([False, True]))
    assert b.images.shape == (2, 3, 32, 32) and -1 <= b.images.min() and b.images.max() <= 1
    assert np.allclose(b.images[1].numpy(), mem.batch(np.array([1])).images[0].flip(-1).numpy())
    s = BatchSampler(10, 4, seed=1)
    assert np.array_equal(s.indices(3)[0], BatchSampler(10, 4, seed=1).indices(3)[0])
    r0, r1 = BatchSampler(10, 2, 1, rank=0, world=2), BatchSampler(10, 2, 1, rank=1, world=2)
    assert not set(r0.indices(0)[0]) & set(r1.indices(0)[0])


def test_landmark_polygons():
    rng = np.random.default_rng(0)
    lm = rng.uniform(20, 30, (478, 2))
    lm[list(LIPS_OUTER)] = [(50 + 10 * np.cos(t), 70 + 5 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 20, False)]
    lm[list(LEFT_EYE)] = [(70 + 5 * np.cos(t), 30 + 2 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 16, False)]
    lm[list(RIGHT_EYE)] = [(30 + 5 * np.cos(t), 30 + 2 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 16, False)]
    lm[list(NOSE)] = rng.uniform([45, 35], [55, 55], (len(NOSE), 2))
    m = masks_from_landmarks(lm, 100, 100)
    assert m["lips"][70, 50] and not m["lips"][50, 50] and 120 < m["lips"].sum() < 200  # ellipse area ~157
    assert m["eyes"][30, 70] and m["eyes"][30, 30] and not m["eyes"][30, 50]
    assert m["nose"][45, 50] and not m["nose"][70, 50]
    hull = convex_hull(np.array([[0, 0], [2, 0], [1, 1], [2, 2], [0, 2]]))
    assert len(hull) == 4
    with pytest.raises(ValueError):
        masks_from_landmarks(np.zeros((10, 2)), 10, 10)


def test_facemesh_on_a_real_face(shared_dir):
    pytest.importorskip("mediapipe", reason="needs the labels extra (mediapipe)")
    from ssae.data.landmarks import FaceMeshLandmarker
    from ssae.data.layouts import read_rgb
    img = read_rgb(shared_dir / "data" / "lfw_parts" / "images" / "Aaron_Peirsol_0002.jpg")
    lm = FaceMeshLandmarker()(img)
    m = masks_from_landmarks(lm, 250, 250)
    for roi in ("nose", "eyes", "lips"):
        ys, xs = np.nonzero(m[roi])
        assert 60 < xs.mean() < 190 and 60 < ys.mean() < 200 and 50 < m[roi].sum() < 3000

"""Trainer smoke tests on the tiny config: losses fall, checkpoints resume exactly, DDP over gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssae.checkpoint import CheckpointError, load_model, read_checkpoint
from ssae.train.configs import DataConfig, RBTrainConfig, SAETrainConfig, SMPNTrainConfig
from ssae.train.rb import RBTrainer
from ssae.train.sae import SAETrainer
from ssae.train.smpn import SMPNTrainer


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory, lfw_mini):
    """24 real LFW faces in the plain folder layout with hair and skin masks."""
    root = tmp_path_factory.mktemp("faces")
    lfw = lfw_mini
    (root / "images").mkdir()
    for roi in ("hair", "skin"):
        (root / "masks" / roi).mkdir(parents=True)
    for name in (lfw / "train.txt").read_text().split()[:24]:
        Image.open(lfw / "images" / f"{name}.jpg").resize((64, 64)).save(root / "images" / f"{name}.png")
        lab = np.asarray(Image.open(lfw / "labels" / f"{name}.png").resize((64, 64), Image.NEAREST))
        Image.fromarray(((lab == 2) * 255).astype(np.uint8)).save(root / "masks" / "hair" / f"{name}.png")
        Image.fromarray(((lab == 1) * 255).astype(np.uint8)).save(root / "masks" / "skin" / f"{name}.png")
    return root


def _data(folder, tmp):
    return DataConfig(folder=str(folder), cache=str(tmp / "cache"))


def _curve(run_dir, key):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_smpn_bce_falls_and_weights_load(tmp_path, face_folder):
    cfg = SMPNTrainConfig(out=str(tmp_path / "smpn"), preset="tiny", steps=40, batch_size=8, lr=3e-3, log_every=1,
                          eval_every=20, data=_data(face_folder, tmp_path))
    res = SMPNTrainer(cfg).run()
    bce = _curve(cfg.out, "bce")
    assert len(bce) == 40 and np.mean(bce[-5:]) < 0.85 * np.mean(bce[:5])
    assert res["finished"] and Path(res["weights"]).exists()
    cfg_, sd, meta = read_checkpoint(res["weights"])
    assert meta["component"] == "smpn" and all(k.startswith("smpn.") for k in sd)
    ev = [r["eval"] for r in map(json.loads, (tmp_path / "smpn" / "metrics.jsonl").read_text().splitlines())
          if "eval" in r]
    assert ev and 0 <= ev[-1]["iou_hair"] <= 1


def test_checkpoints_resume_exactly(tmp_path, face_folder):
    def trainer(out):
        return SMPNTrainer(SMPNTrainConfig(out=str(out), preset="tiny", steps=6, batch_size=4, ckpt_every=3,
                                           log_every=1, eval_every=10_000, data=_data(face_folder, tmp_path)))
    straight = trainer(tmp_path / "a")
    straight.run()
    crashing = trainer(tmp_path / "b")
    real_step = crashing.train_step

    def step_or_crash(step):
        if step == 4:
            raise KeyboardInterrupt  # the process dies after the step-3 checkpoint
        return real_step(step)

    crashing.train_step = step_or_crash
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    assert not list((tmp_path / "b").glob("*.tmp"))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = trainer(tmp_path / "b")
    resumed.run()
    assert resumed.step == 6
    for (k, v), (k2, v2) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(v, v2), k


@pytest.fixture(scope="module")
def trained_sae(tmp_path_factory, face_folder):
    tmp = tmp_path_factory.mktemp("sae")
    cfg = SAETrainConfig(out=str(tmp / "sae"), preset="tiny", steps=36, warmup_steps=30, batch_size=8, r1_every=2,
                         log_every=1, eval_every=10_000, data=_data(face_folder, tmp))
    res = SAETrainer(cfg).run()
    return cfg, res


def test_sae_l1_falls_in_warmup_and_gan_phase_runs(trained_sae):
    cfg, res = trained_sae
    l1 = _curve(cfg.out, "L1")
    assert np.mean(l1[25:30]) < 0.8 * np.mean(l1[:5])
    rows = [json.loads(l) for l in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    gan = [r for r in rows if "G_mix" in r]
    assert len(gan) == 6 and any("R1" in r for r in gan)
    assert all(np.isfinite([r["D_real"], r["G_patch"], r["L1"]]).all() for r in gan)
    assert res["finished"]


def test_rb_trains_on_frozen_sae_edits(tmp_path, trained_sae, face_folder):
    sae_cfg, sae_res = trained_sae
    cfg = RBTrainConfig(out=str(tmp_path / "rb"), preset="tiny", steps=30, batch_size=8, lr=2e-3, log_every=1,
                        strength_min=4.0, strength_max=6.0,  # strong edits: a clear signal for the ROI discriminator
                        sae=sae_res["weights"], data=_data(face_folder, tmp_path))
    tr = RBTrainer(cfg)
    roi, m, y_n, y_sae = tr.make_edits(0)
    assert (y_n - y_sae).abs().mean() > 1e-3           # the edit changes the image
    res = tr.run()
    d = _curve(cfg.out, "D")
    assert np.mean(d[-5:]) < np.mean(d[:3])             # the ROI discriminator learns
    assert max(_curve(cfg.out, "rec_out")) < 0.5
    with pytest.raises(CheckpointError, match="lacks the sae, smpn"):  # the RBs alone are not a model
        load_model(Path(res["weights"]))
    model = load_model(Path(res["weights"]), partial=True)
    assert set(model.refiners) == {"hair", "skin", "nose", "eyes", "lips"}


def test_two_process_data_parallel_on_gloo(tmp_path, face_folder):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(worker), str(tmp_path), str(face_folder)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)    # gradients were averaged: replicas stay identical
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert st["step"] == 4


def test_sigterm_stops_after_the_step_with_checkpoint_and_weights_then_resumes(tmp_path, face_folder):
    """`ssae train` on SIGTERM: finishes the running step, writes the checkpoint (between checkpoint intervals) and
    the weights so far, exits 0 with `stopped` in its result; a rerun resumes from that step."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssae.cli", "train", "smpn", "--preset", "tiny", "--folder", str(face_folder),
           "--cache", str(tmp_path / "cache"), "--batch-size", "4", "--log-every", "1", "--ckpt-every", "100000",
           "--eval-every", "100000", "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["stopped"] == "SIGTERM" and not res["finished"] and res["step"] >= 3
    step = res["step"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step
    assert json.loads(read_checkpoint(res["weights"])[2]["extra"])["steps"] == step
    assert "stopping after this step" in stderr
    again = subprocess.run(cmd + ["--steps", str(step + 2)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed at step {step}/" in again.stdout + again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["finished"]


def test_color_transfer_moves_channel_statistics_and_keeps_the_layout():
    from ssae.train.sae import color_transfer
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, 3, 16, 16, generator=g) - 0.2        # small ranges: the [-1, 1] clamp never acts
    ref = 0.2 * torch.randn(2, 3, 16, 16, generator=g) + 0.3
    y = color_transfer(x, ref, eps=1e-2).double()
    sx, sr = x.double().std((2, 3)), ref.double().std((2, 3))
    assert torch.allclose(y.mean((2, 3)), ref.double().mean((2, 3)), atol=1e-5)
    assert torch.allclose(y.std((2, 3)), sr * sx / (sx + 1e-2), atol=1e-5)
    for b in range(2):
        for c in range(3):   # an increasing affine map of x per channel: the layout is x's
            corr = torch.corrcoef(torch.stack([x[b, c].flatten().double(), y[b, c].flatten()]))[0, 1]
            assert corr > 1 - 1e-6
    assert color_transfer(torch.full((1, 3, 4, 4), 0.0), torch.full((1, 3, 4, 4), 5.0)).max() == 1.0   # clamped


def test_late_texture_swap_uses_the_pairs_code_at_the_injection_layer_only():
    from ssae.config import preset
    from ssae.models.ops import l2_normalize
    from ssae.models.sae import SwappingAutoencoder
    from ssae.train.sae import late_texture_swap, swap
    torch.manual_seed(0)
    sae = SwappingAutoencoder(preset("tiny").sae).eval()
    for p in sae.parameters():   # trained-like affine weights, so B's code moves the image
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        sp, gl = sae.encode(x)
        noises = sae.resolve_noise(0, sp)
        rec, mix = late_texture_swap(sae.G, sp, gl, noises)
        assert torch.allclose(rec, sae.G(sp, gl, noises), atol=1e-5)
        layer = sae.G.layer(sae.G.injection_layers[0])
        own_style = layer.style
        layer.style = lambda t: own_style(swap(l2_normalize(t)))   # B's code at that layer, A's everywhere else
        expect = sae.G(sp, gl, noises)
    assert (mix - rec).abs().mean() > 1e-3
    assert torch.allclose(mix, expect, atol=1e-5)


def test_sae_texture_swap_term_falls_and_runs_in_both_phases(tmp_path, face_folder):
    cfg = SAETrainConfig(out=str(tmp_path / "sae"), preset="tiny", steps=32, warmup_steps=30, batch_size=8,
                         r1_every=2, log_every=1, eval_every=10_000, lambda_texture_swap=1.0,
                         data=_data(face_folder, tmp_path))
    res = SAETrainer(cfg).run()
    ts = _curve(cfg.out, "TS")
    assert len(ts) == 32 and np.isfinite(ts).all()     # logged in the warm-up and in the GAN phase
    assert np.mean(ts[20:30]) < 0.85 * np.mean(ts[:5])
    l1 = _curve(cfg.out, "L1")
    assert np.mean(l1[20:30]) < 0.85 * np.mean(l1[:5])   # reconstruction still learns alongside
    assert res["finished"]

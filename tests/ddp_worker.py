"""Run by test_train.py under `torchrun --nproc_per_node 2`: train a few steps, dump this rank's weights."""
import sys

import torch

from ssae.train.configs import DataConfig, SAETrainConfig
from ssae.train.sae import SAETrainer

out, folder = sys.argv[1], sys.argv[2]
cfg = SAETrainConfig(out=out, preset="tiny", steps=4, batch_size=4, warmup_steps=2, r1_every=2, log_every=1,
                     ckpt_every=100, eval_every=10_000, bf16="off", data=DataConfig(folder=folder, cache=out + "/cache"))
tr = SAETrainer(cfg)
tr.run()
torch.save({k: v.clone() for k, v in tr.sae.state_dict().items()}, f"{out}/rank{tr.rank}.pt")

"""`ssae train smpn|sae|rb`: options are the trainer's config dataclass fields."""
from __future__ import annotations

import argparse
import json

from ..cliargs import add_dataclass_args, dataclass_from_args


CONFIGS = {"smpn": "SMPNTrainConfig", "sae": "SAETrainConfig", "rb": "RBTrainConfig"}


def trainer_class(component: str):
    import importlib
    mod = importlib.import_module(f"ssae.train.{component}")
    return getattr(mod, {"smpn": "SMPNTrainer", "sae": "SAETrainer", "rb": "RBTrainer"}[component])


def add_args(p: argparse.ArgumentParser) -> None:
    from . import configs
    sub = p.add_subparsers(dest="component", required=True)
    for name, cls_name in CONFIGS.items():
        cfg_cls = getattr(configs, cls_name)
        sp = sub.add_parser(name, help=f"train the {name.upper()}")
        add_dataclass_args(sp, cfg_cls)


def run(args: argparse.Namespace) -> int:
    from . import configs
    cfg = dataclass_from_args(getattr(configs, CONFIGS[args.component]), args)
    result = trainer_class(args.component)(cfg).run()
    print(json.dumps(result, default=str))
    return 0

"""ssae: localized style editing of real face images with the SemanticStyle Autoencoder.

The root folders export/, runtime/, kernels/ and calibration/ install as ssae.export, ssae.runtime, ssae.kernels
and ssae.calibration; nothing else is installed at the top level.
"""
import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "ssae" / "__init__.py").read_text()).group(1)

#: Package folder of every package: the core `ssae/` and the root folders mapped into its namespace.
ROOT_FOLDERS = {"ssae": "ssae", "ssae.kernels": "kernels", "ssae.export": "export", "ssae.runtime": "runtime",
                "ssae.calibration": "calibration"}
PACKAGE_DIRS = {}
for _pkg, _folder in ROOT_FOLDERS.items():
    for _init in sorted((ROOT / _folder).rglob("__init__.py")):
        _rel = _init.parent.relative_to(ROOT / _folder).parts
        if _pkg == "ssae" and _rel and _rel[0] in ("kernels", "export", "runtime", "calibration"):
            continue
        PACKAGE_DIRS[".".join((_pkg, *_rel))] = "/".join((_folder, *_rel))

setup(
    name="ssae",
    version=VERSION,
    description="SemanticStyle Autoencoder: localized style editing of real face images, deployable runtime",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"ssae.kernels": ["*.cu", "*.cuh"], "ssae": ["assets/*/*.safetensors", "assets/*/*.onnx", "assets/*/*.md", "assets/*/*.json", "assets/*.jpg", "assets/*.png"]},
    include_package_data=True,
    # The runtime alone: runs an ONNX export folder (`ssae edit --model EXPORT_DIR`, `ssae serve`) on ONNX Runtime
    # without PyTorch; the extras add the rest.
    install_requires=[
        "numpy>=1.24",
        "pillow>=10",
        "onnxruntime>=1.18",
        "onnx>=1.16",  # int8 exports are loaded through it on the CPU (uint8 activation zero points)
    ],
    extras_require={
        # checkpoints (the bundled model, exported to ONNX on first use), the torch backend, export, calibration,
        # training
        "torch": ["torch>=2.4", "onnxscript>=0.2", "safetensors>=0.4"],
        "gpu": ["onnxruntime-gpu>=1.18", "tensorrt>=10.14", "cuda-bindings>=12.8"],
        "openvino": ["openvino>=2024.4"],
        "labels": ["mediapipe==0.10.21", "numpy<2"],
        # ssae serve / edit-batch (Ray Serve, Ray Data) and Triton config validation
        "serve": ["ray[serve,data]==2.60.0", "tritonclient[grpc]>=2.50,<3"],
        # Ray is not in dev (about 750 MB); the README's test command and CI install the serve extra too, and the
        # Ray tests skip with a reason where it is missing
        # tensorrt-cu13-bindings: TensorRT's pure-Python tensorrt.plugin (its native core is not needed), which
        # tests/test_trt_plugin_api.py runs the plugin against
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "tritonclient[grpc]>=2.50,<3", "tensorrt-cu13-bindings==11.4.0.106"],
    },
    entry_points={"console_scripts": ["ssae=ssae.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Image Processing"],
)

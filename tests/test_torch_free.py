"""A deployment runs an export folder without PyTorch: the Editor, `ssae edit` and the HTTP API import no torch.

Each check runs in a fresh interpreter in which importing torch raises, and compares its output with the same edit
made in this process (where torch is loaded).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

#: Prepended to each subprocess: importing torch (or any torch.*) fails, as on a runtime-only install.
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: a runtime-only install)")
    sys.meta_path.insert(0, _NoTorch())
""")


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=300)


def test_the_blocker_blocks_torch():
    r = _run("import torch")
    assert r.returncode != 0 and "blocked" in r.stderr


def test_cli_edit_of_an_export_folder_imports_no_torch(tiny_export, face_path, tmp_path):
    from ssae.runtime import Editor
    from ssae.runtime.onnx_backends import OrtBackend

    out = tmp_path / "edited.png"
    r = _run("""
        import sys
        from ssae.cli import main
        code = main(sys.argv[1:])
        assert "torch" not in sys.modules, "torch was imported"
        sys.exit(code)
    """, "edit", str(face_path), "--model", str(tiny_export), "--backend", "onnxruntime", "--roi", "hair",
        "--seed", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    want = Editor(OrtBackend(tiny_export)).edit(face_path, roi="hair", seed=3).image
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))


def test_editor_and_http_api_import_no_torch(tiny_export, face_path):
    """Editor.load(backend="auto") on an export folder, and the serving engine behind the HTTP API (the local
    server: the same `Api` Ray Serve runs) answer an edit with torch unimportable."""
    r = _run("""
        import json, sys
        from ssae.runtime import Editor
        from ssae.runtime.serve.api import ApiConfig
        from ssae.runtime.serve.client import Client
        from ssae.runtime.serve.engine import Engine, EngineConfig, load_editor
        from ssae.runtime.serve.local import LocalServer
        ed = Editor.load(sys.argv[1], backend="onnxruntime")
        res = ed.edit(sys.argv[2], roi="lips", seed=5)
        eng = Engine(load_editor(EngineConfig(model=sys.argv[1], backend="onnxruntime")))
        with LocalServer(eng, ApiConfig(), port=0) as srv:
            served = Client(srv.url).edit(sys.argv[2], roi="lips", seed=5)
        import numpy as np
        same = bool(np.array_equal(np.asarray(served), np.asarray(res.image)))
        print(json.dumps({"torch": "torch" in sys.modules, "same": same, "sum": int(np.asarray(res.image).sum()),
                          "backend": ed.backend.name}))
    """, str(tiny_export), str(face_path))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    from ssae.runtime import Editor
    want = Editor.load(tiny_export, backend="onnxruntime").edit(face_path, roi="lips", seed=5).image
    assert got == {"torch": False, "same": True, "sum": int(np.asarray(want).sum()), "backend": "onnxruntime"}


def test_a_checkpoint_without_torch_is_a_one_line_error(tmp_path, face_path):
    """The bundled model is a checkpoint: without PyTorch (and no export of it cached) `ssae edit` says how to get
    one, in one line, exit code 2, nothing written."""
    import os

    out = tmp_path / "edited.png"
    r = subprocess.run([sys.executable, "-c", NO_TORCH + "import sys\nfrom ssae.cli import main\nsys.exit(main())",
                        "edit", str(face_path), "-o", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SSAE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs PyTorch (pip install 'ssae[torch]')" in lines[0], r.stderr
    assert not out.exists()

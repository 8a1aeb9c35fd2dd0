import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub
os.environ.setdefault("MPLBACKEND", "Agg")

import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The built-in demo export (small photos, to save time), prepared as `prepare_dataset.py --demo` does."""
    root = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare_dataset.py"), "--demo", "--demo-photo-size", "512"],
                       cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return str(root / "dataset")

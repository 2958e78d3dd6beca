import subprocess
import sys

import pytest

import minimodels


@pytest.mark.parametrize("name", minimodels.__all__)
def test_every_public_name_resolves(name):
    assert getattr(minimodels, name) is not None


def test_top_level_classes_are_the_modules_own():
    from minimodels.h3 import H3
    from minimodels.hierarchical import HierarchicalTransformer

    assert minimodels.H3 is H3
    assert minimodels.HierarchicalTransformer is HierarchicalTransformer
    with pytest.raises(AttributeError, match="no attribute 'Mamba'"):
        minimodels.Mamba  # noqa: B018


def test_import_is_cheap_and_needs_no_triton():
    code = (
        "import sys; import minimodels; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert 'minimodels.hyena' not in sys.modules, 'hyena imported eagerly'; "
        "print(minimodels.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == minimodels.__version__


def test_kernels_without_triton_say_how_to_install_it():
    code = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "def find(name, *args):\n"
        "    return None if name == 'triton' else real(name, *args)\n"
        "importlib.util.find_spec = find\n"
        "sys.modules['triton'] = None\n"
        "import minimodels, minimodels.attention\n"
        "try:\n"
        "    import minimodels.kernels\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'pip install "minimodels[triton]"' in done.stdout
    assert "Linux" in done.stdout


def test_a_wheel_lists_the_chapters_far_from_the_checkout(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
         str(tmp_path / "dist"), str(root)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("minimodels-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
         str(target), str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (target / "minimodels" / "kernels" / "flash.py").exists()
    assert (target / "minimodels" / "py.typed").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [sys.executable, "-c",
         "import minimodels, runpy, sys; print(minimodels.__file__, file=sys.stderr);"
         "sys.argv = ['minimodels', 'list']; runpy.run_module('minimodels', "
         "run_name='__main__')"],
        capture_output=True, text=True, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert str(target) in listed.stderr  # the wheel's copy, not the checkout's
    assert "The quadratic wall" in listed.stdout
    assert "The bake-off" in listed.stdout
    assert "book.toml not found" not in listed.stdout + listed.stderr

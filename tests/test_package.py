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


def test_import_is_cheap_and_needs_no_triton(fresh_python):
    printed = fresh_python("""
        import sys
        import minimodels
        assert "triton" not in sys.modules, "triton imported"
        assert "minimodels.hyena" not in sys.modules, "hyena imported eagerly"
        print(minimodels.__version__)
    """)
    assert printed.strip() == minimodels.__version__


def test_kernels_without_triton_say_how_to_install_it(fresh_python):
    printed = fresh_python("""
        import importlib.util
        import sys
        real = importlib.util.find_spec
        def find(name, *args):
            return None if name == "triton" else real(name, *args)
        importlib.util.find_spec = find
        sys.modules["triton"] = None
        import minimodels, minimodels.attention
        try:
            import minimodels.kernels
        except ImportError as e:
            print(e)
    """)
    assert 'pip install "minimodels[triton]"' in printed
    assert "Linux" in printed


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

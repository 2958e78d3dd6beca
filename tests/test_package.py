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

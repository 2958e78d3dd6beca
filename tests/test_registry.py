"""One registry of the book's models: it agrees with book.toml, every name builds,
and the LM factory, the bake-off, the CLI and the top-level names all use it."""

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import minimodels
from minimodels import bakeoff, manifest, registry
from minimodels.__main__ import list_chapters
from minimodels.lm import LM, mixer_factory

ROOT = Path(__file__).resolve().parent.parent
BOOK = manifest.load(ROOT)
NAMES = list(registry.MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_each_model_is_defined_by_a_chapter_module_of_the_manifest(name):
    model = registry.get(name)
    chapters = [c.number for c in BOOK.chapters if c.module == model.module]
    assert chapters, f"{model.module} is the module of no chapter in book.toml"
    assert model.chapter == chapters[0]  # the first chapter that builds it
    cls = model.load()
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    assert cls.__module__ == model.module, "the class is the chapter module's own"
    for attr in model.exports:
        assert hasattr(sys.modules[model.module], attr), attr


def test_no_two_models_share_a_name_or_a_class():
    classes = [(m.module, m.cls) for m in registry.MODELS.values()]
    assert len(set(classes)) == len(classes)
    assert all(m.name == name for name, m in registry.MODELS.items())


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds_as_a_contender_with_its_registered_class(name):
    torch.manual_seed(0)
    model = bakeoff.build(name, vocab_size=11, dim=16, seq_len=16).eval()
    assert model(torch.randint(0, 11, (2, 16))).shape == (2, 16, 11)
    cls = registry.get(name).load()
    assert any(isinstance(m, cls) for m in model.modules()), cls.__name__


@pytest.mark.parametrize("name", [m.name for m in registry.MODELS.values() if m.mixer])
def test_every_mixer_name_builds_an_lm(name):
    options = {"hyena": {"max_len": 16}, "dilated": {"heads": 4}}.get(name, {})
    torch.manual_seed(0)
    lm = LM(11, 16, 1, mixer_factory(name, **options))
    assert isinstance(lm.blocks[0].mixer, registry.get(name).load())
    assert lm(torch.randint(0, 11, (2, 16))).shape == (2, 16, 11)


def test_the_bake_off_has_every_model_with_its_chapter_from_the_manifest():
    assert list(bakeoff.CONTENDERS) == NAMES
    for name, (chapter, build) in bakeoff.CONTENDERS.items():
        assert chapter == registry.get(name).chapter and callable(build)


def test_unknown_names_are_errors_listing_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown model 'mamba'; known: \['attention'"
    ):
        registry.get("mamba")
    with pytest.raises(ValueError, match=r"unknown mixer 'transformer'; known: \["):
        LM(16, 32, 1, "transformer")
    with pytest.raises(ValueError, match="'hierarchical' is a whole model, not a mix"):
        mixer_factory("hierarchical")
    with pytest.raises(ValueError, match="unknown contender 'mamba'"):
        bakeoff.build("mamba", vocab_size=11, dim=16, seq_len=16)


def test_the_cli_lists_each_model_at_its_chapter():
    lines = {int(line[:2]): line for line in list_chapters().splitlines()}
    assert sorted(lines) == [c.number for c in BOOK.chapters]
    for model in registry.MODELS.values():
        assert f"run {model.name}" in lines[model.chapter]


def test_top_level_names_are_the_registrys_imported_on_first_use(fresh_python):
    for name, module in registry.top_level().items():
        assert name in minimodels.__all__
        assert getattr(minimodels, name) is getattr(sys.modules[module], name)
    fresh_python("""
        import sys
        import minimodels
        from minimodels import registry
        chapters = {m.module for m in registry.MODELS.values()}
        chapters -= {"minimodels.attention"}  # imported eagerly, for LM's default
        assert not chapters & set(sys.modules), chapters & set(sys.modules)
        minimodels.H3
        assert "minimodels.h3" in sys.modules
    """)


def _top_level_imports(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    return imported


CHAPTER_MODULES = sorted({m.module for m in registry.MODELS.values()})
UPPER = {"minimodels.registry", "minimodels.bakeoff", "minimodels.__main__"}


@pytest.mark.parametrize("name", ["_util", "manifest", "optim", "data", "lm"])
def test_lower_floors_import_no_chapter_module_and_not_the_registry(name):
    """Imports go down the floors only: a module that chapter modules build on
    names no chapter module (nor the registry, which names them all) at its top;
    ``lm`` reaches the registry inside ``mixer_factory``, at call time."""
    imported = _top_level_imports(f"minimodels.{name}")
    assert not imported & (UPPER | set(CHAPTER_MODULES)), imported


@pytest.mark.parametrize("module", CHAPTER_MODULES)
def test_a_model_module_imports_no_trainer_and_nothing_above_it(module):
    """Models declare their optimizer settings (optim.set_optim); training them
    is the trainer's business, and the registry and the bake-off sit above."""
    imported = _top_level_imports(module)
    assert not imported & (UPPER | {"minimodels.train"}), imported

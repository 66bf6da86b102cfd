"""Which module tree the UML guest gets: the one named, the built one of this recipe, Debian's."""

import hashlib

import pytest

from kernel_sandbox import modules


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HAVPN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(modules.MODULES_DIR_VARIABLE, raising=False)
    return tmp_path


def test_the_built_tree_is_named_by_release_and_recipe(cache):
    recipe = hashlib.sha256(modules.BUILD_SCRIPT.read_bytes()).hexdigest()[:12]
    assert modules.built_tree("6.1.176") == cache / f"uml-modules-6.1.176-{recipe}"


def test_a_complete_built_tree_is_the_default(cache):
    tree = modules.built_tree("6.1.176")
    (tree / "6.1.176").mkdir(parents=True)
    (tree / "6.1.176" / "modules.dep").write_text("")
    assert modules.default_modules_dir("6.1.176") == modules.STOCK_MODULES, "not complete yet: Debian's"
    (tree / ".complete").touch()
    assert modules.default_modules_dir("6.1.176") == tree
    assert modules.releases(tree) == ["6.1.176"]
    assert modules.default_modules_dir("6.1.177") == modules.STOCK_MODULES, "another release: another tree"


def test_the_variable_wins(cache, monkeypatch):
    tree = modules.built_tree("6.1.176")
    tree.mkdir()
    (tree / ".complete").touch()
    monkeypatch.setenv(modules.MODULES_DIR_VARIABLE, "/elsewhere")
    assert str(modules.default_modules_dir("6.1.176")) == "/elsewhere"

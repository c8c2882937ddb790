"""The package's top level lists every public module and layer."""

import pkgutil

import keras_tfm


def test_all_lists_every_public_module():
    modules = {
        info.name
        for info in pkgutil.iter_modules(keras_tfm.__path__)
        if not info.name.startswith("_")
    }
    assert modules <= set(keras_tfm.__all__)
    for name in keras_tfm.__all__:
        assert hasattr(keras_tfm, name), name


def test_all_lists_the_layers():
    assert set(keras_tfm.layers.__all__) <= set(keras_tfm.__all__)

"""The README's claim: every public function and class has an example.

The examples themselves run as doctests (`--doctest-modules`); this test
checks that each public name has one, except the names the README lists.
"""

import importlib
import inspect

import keras_tfm

# As listed in the README's API section.
WITHOUT_EXAMPLE = {
    "keras_tfm.generation.Options",
    "keras_tfm.generation.Plan",
    "keras_tfm.generation.Settings",
    "keras_tfm.search.BeamState",
    "keras_tfm.search.DecodeState",
}


def public_names():
    """`module.name` of each public function and class of the package:
    the names in `__all__` of `keras_tfm` and of each of its modules, or,
    for a module without `__all__`, the public names it defines."""
    names = {}
    for module_name in keras_tfm.__all__:
        module = getattr(keras_tfm, module_name)
        if not inspect.ismodule(module):
            continue
        module = importlib.import_module(module.__name__)
        listed = getattr(module, "__all__", None)
        if listed is None:
            listed = [
                name
                for name, value in vars(module).items()
                if not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            ]
        for name in listed:
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                names[f"{module.__name__}.{name}"] = value
    return names


def test_public_names_have_examples():
    names = public_names()
    assert len(names) > 50
    missing = {
        name
        for name, value in names.items()
        if ">>>" not in (value.__doc__ or "")
    }
    assert missing == WITHOUT_EXAMPLE, (
        "Add an example, or list the name here and in the README: "
        f"{sorted(missing - WITHOUT_EXAMPLE)}; these now have one: "
        f"{sorted(WITHOUT_EXAMPLE - missing)}"
    )

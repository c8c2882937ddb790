"""The package's top level lists every public module and layer."""

import ast
import pathlib
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


def test_only_the_backend_modules_import_a_backend():
    # DESIGN.md: `_backend.py` and `distribution.py` are the only modules
    # importing tensorflow, jax or torch (at any depth of the code).
    root = pathlib.Path(keras_tfm.__file__).parent
    allowed = {"_backend.py", "distribution.py"}
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in {"tensorflow", "jax", "torch"}:
                    found.append(f"{path.relative_to(root)}: {name}")
    outside = [line for line in found if line.split(":")[0] not in allowed]
    assert found and not outside, outside

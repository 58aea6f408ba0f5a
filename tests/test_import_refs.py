"""`artray.import_refs.load_ref`: the one loader of "package.module:attribute" references (jobs, model
families, trainers, tiny builders). A wrong reference is one clear error naming it; a module that is
there but fails to import keeps its own error."""

from __future__ import annotations

import pytest

from artray import families
from artray.errors import UserError
from artray.import_refs import ImportRefError, load_ref


def test_a_reference_loads_its_object():
    from artray.jobs import JOBS

    assert load_ref("artray.jobs:JOBS") is JOBS


@pytest.mark.parametrize("ref, says", [
    ("artray.jobs.JOBS", "is not 'package.module:attribute'"),
    ("artray.jobs:JOBS:x", "is not 'package.module:attribute'"),
    (":JOBS", "is not 'package.module:attribute'"),
    ("artray.jbos:JOBS", "there is no module 'artray.jbos'"),
    ("artray_nowhere.jobs:JOBS", "there is no module 'artray_nowhere'"),
    ("artray.jobs:JOSB", "module 'artray.jobs' has no attribute 'JOSB'"),
])
def test_a_wrong_reference_is_one_clear_user_error(ref, says):
    with pytest.raises(ImportRefError, match=says) as exc:
        load_ref(ref)
    assert isinstance(exc.value, UserError) and repr(ref) in str(exc.value)


def test_a_module_that_fails_to_import_keeps_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "needs_a_missing_package.py").write_text("import artray_missing_dependency\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as exc:
        load_ref("needs_a_missing_package:X")
    assert not isinstance(exc.value, ImportRefError) and exc.value.name == "artray_missing_dependency"


def test_a_family_registered_with_a_wrong_reference_fails_with_it():
    families.register("typo-family", "artray.families.clip:CLPI")
    try:
        with pytest.raises(ImportRefError, match="module 'artray.families.clip' has no attribute 'CLPI'"):
            families.get("typo-family")
    finally:
        families.unregister("typo-family")

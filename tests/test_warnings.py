"""The suite's guard against deprecated calls from afd/ (tests/conftest.py): it catches a
deprecation raised while afd code is on the stack, and leaves other code's warnings alone."""

import sys
import warnings

import pytest

from conftest import REPO, afd_deprecations


def run_as(path, source):
    exec(compile(source, str(path), "exec"), {"warnings": warnings})


@pytest.fixture(autouse=True)
def site_lib(monkeypatch):
    """A stand-in third-party library whose ``call`` makes a deprecated call of its own."""
    import types

    lib = types.ModuleType("site_lib")
    exec(compile("import warnings\ndef call():\n    warnings.warn('lib_api is deprecated', FutureWarning)\n",
                 "/site-packages/site_lib/__init__.py", "exec"), lib.__dict__)
    monkeypatch.setitem(sys.modules, "site_lib", lib)


def test_guard_catches_a_deprecation_reached_from_afd():
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        with afd_deprecations() as found:
            run_as(REPO / "afd" / "stand_in.py", "warnings.warn('old_api is deprecated', FutureWarning)")
            run_as(REPO / "afd" / "stand_in.py", "warnings.warn('a plain notice', UserWarning)")
            run_as(REPO / "tests" / "stand_in.py", "warnings.warn('not ours', DeprecationWarning)")
            # a library's own deprecated call, reached through afd, is the library's
            run_as(REPO / "afd" / "stand_in.py", "import sys; sys.modules['site_lib'].call()")
    assert len(found) == 1 and "old_api is deprecated" in found[0] and "afd/stand_in.py" in found[0]
    assert len(log) == 4  # every warning still reaches pytest's report


def test_afd_sampler_raises_no_deprecation(tiny):
    """The sampler hands its KV cache under the keyword the installed transformers takes."""
    from afd.sampling import HFEngine

    model, tok = tiny
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with afd_deprecations() as found:
            HFEngine(model, tok, [tok.eos_token_id]).generate([tok.encode("Say cat")], [[1, 2]], 4)
    assert found == []

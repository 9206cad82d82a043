"""The suite fails on deprecation warnings raised from calls made in afd's code."""

import warnings

from conftest import AFD_DIR, DeprecationGuard


def test_guard_catches_a_deprecation_from_afd_code_and_ignores_others():
    code = compile("import warnings\nwarnings.warn('old api', FutureWarning)\n", AFD_DIR + "fake.py", "exec")
    with DeprecationGuard() as guard:
        warnings.warn("third-party deprecation", DeprecationWarning)  # no afd frame: allowed
        exec(code, {})
    assert len(guard.caught) == 1 and "old api" in guard.caught[0] and "fake.py" in guard.caught[0]

"""Runs the shared contract suite against every shipped policy and the third-party example."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fusefs.policies import Policy, builtin_policies
from policy_contract import PolicyContract

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "third_party_policy" / "tierfs_mru" / "__init__.py"


def load_example_policy() -> type[Policy]:
    """The example's policy class: installed if it is, else loaded from the checkout."""
    try:
        from tierfs_mru import MRUPolicy  # type: ignore[import-not-found]
    except ImportError:
        spec = importlib.util.spec_from_file_location("tierfs_mru", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["tierfs_mru"] = module
        spec.loader.exec_module(module)
        MRUPolicy = module.MRUPolicy
    return MRUPolicy  # type: ignore[no-any-return]


for _name, _cls in sorted(builtin_policies().items()):
    _test_name = f"Test{_cls.__name__}Contract"
    globals()[_test_name] = type(_test_name, (PolicyContract,), {"policy_class": _cls})


class TestThirdPartyExampleContract(PolicyContract):
    policy_class = load_example_policy()

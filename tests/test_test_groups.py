"""The suite's own scheduling: the tests of one xdist_group must share a worker (see the Makefile's test target)."""

import pytest


@pytest.mark.xdist_group("group_check")
def test_xdist_groups_keep_their_tests_on_one_worker(request):
    """pytest-xdist's loadgroup tags each grouped test's id with its group; a pytest it cannot tag (9.2 with xdist
    3.8) splits every group silently: module fixtures are built once per worker, and the multi-process tests run
    at the same time on two cores."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@group_check"), \
        f"pytest {pytest.__version__} with this pytest-xdist does not group tests; install the pytest the test extra pins"

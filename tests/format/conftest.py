"""Format test fixtures: the Go oracle (built once per session) for byte-level comparisons."""

from tests.helpers.oracle import oracle  # noqa: F401 - re-exported pytest fixture

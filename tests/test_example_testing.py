"""examples/testing: the example tests of a Flask view pass, run as a user would run them."""

from __future__ import annotations

from .example_tests import assert_example_tests_pass


def test_example_flask_view_tests_pass_with_the_plugin() -> None:
    assert_example_tests_pass("testing", passed=3)

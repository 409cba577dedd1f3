"""The examples in the public docstrings run and print what they say."""

import doctest

import pytest

import fastmb.aggregation
import fastmb.gradients
import fastmb.compress
import fastmb.data
import fastmb.fedbuff
import fastmb.models
import fastmb.partition
import fastmb.privacy
import fastmb.robust
import fastmb.server
import fastmb.simulation
import fastmb.training


@pytest.mark.parametrize("module", [fastmb.models, fastmb.gradients, fastmb.training,
                                    fastmb.aggregation, fastmb.robust,
                                    fastmb.server, fastmb.compress, fastmb.privacy,
                                    fastmb.fedbuff, fastmb.data, fastmb.partition,
                                    fastmb.simulation], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0

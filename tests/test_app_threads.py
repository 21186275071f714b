"""apps.cli.torch_threads: the one place that pins torch's thread count for a block and puts it back."""

import pytest
import torch

from apps.cli import ThreadsError, torch_threads


@pytest.fixture
def three_threads():
    """Start each test from a count that differs from what the block sets, so a missed restore shows."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_the_block_runs_with_the_count_asked_and_the_count_comes_back(three_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3


def test_the_count_comes_back_when_the_block_raises(three_threads):
    with pytest.raises(KeyError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise KeyError("boom")
    assert torch.get_num_threads() == 3


def test_none_leaves_the_count_alone(three_threads):
    with torch_threads(None):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 3


def test_a_count_out_of_range_is_a_user_error_and_changes_nothing(three_threads):
    with pytest.raises(ThreadsError, match="--threads -1"), torch_threads(-1):
        pass
    assert torch.get_num_threads() == 3

"""Deep equality of checkpoint state for the tests: tensors, numpy arrays and mmengine HistoryBuffers compared
exactly, containers by type, keys in order and items."""
import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def assert_same_state(actual, expected, where='state'):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.dtype == expected.dtype, where
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    elif isinstance(expected, HistoryBuffer):
        assert type(actual) is HistoryBuffer, where
        assert actual.max_length == expected.max_length, where
        assert_same_state(actual._log_history, expected._log_history, where + '._log_history')
        assert_same_state(actual._count_history, expected._count_history, where + '._count_history')
    elif isinstance(expected, dict):
        assert type(actual) is type(expected), where
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_state(actual[key], expected[key], f'{where}[{key!r}]')
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_state(a, e, f'{where}[{i}]')
    else:
        assert type(actual) is type(expected) and actual == expected, f'{where}: {actual!r} != {expected!r}'

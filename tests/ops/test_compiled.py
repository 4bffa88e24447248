"""The operators in use are the compiled extension modules, not Python code."""

from __future__ import annotations

import importlib
import importlib.machinery
import types

import pytest

import cython_ops

MODULES = ["chunking", "similarity", "bm25", "prefix", "sampling", "abort"]


@pytest.mark.parametrize("name", MODULES)
def test_module_is_an_extension(name):
    module = importlib.import_module(f"cython_ops.{name}")
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)


@pytest.mark.parametrize(
    "name", ["chunk_text", "chunk_text_with_offsets", "topk", "tokenize", "prefix_hashes", "longest_common_prefix", "sample_logits", "flag_callback_address", "flag_is_set"]
)
def test_public_functions_are_compiled(name):
    fn = getattr(cython_ops, name)
    assert not isinstance(fn, types.FunctionType)   # a Python function would be a reference/fallback
    assert type(fn).__name__ in ("cython_function_or_method", "builtin_function_or_method")
    assert fn.__module__.startswith("cython_ops.") and fn.__module__ != "cython_ops"
    assert importlib.import_module(fn.__module__).__file__.endswith(".so")


def test_bm25_index_is_an_extension_type():
    assert cython_ops.BM25Index.__module__ == "cython_ops.bm25"
    assert not hasattr(cython_ops.BM25Index, "__dict__") or "__weakref__" not in cython_ops.BM25Index.__dict__
    assert type(cython_ops.BM25Index.search).__name__ in ("method_descriptor", "cython_function_or_method")


def test_the_abort_callback_reads_the_flag_it_is_given():
    import ctypes

    import numpy as np

    flag = np.zeros(1, dtype=np.int32)
    assert cython_ops.flag_is_set(flag.ctypes.data) is False
    flag[0] = 1
    assert cython_ops.flag_is_set(flag.ctypes.data) is True
    assert cython_ops.flag_is_set(0) is False  # no flag: never abort
    # The address is the C function llama.cpp calls: called through ctypes it answers the same.
    callback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)(cython_ops.flag_callback_address())
    assert callback(flag.ctypes.data) is True
    flag[0] = 0
    assert callback(flag.ctypes.data) is False

"""Gradio helpers without a server: UserError -> visible gr.Error, model cache loads once."""

from __future__ import annotations

import logging
import threading

import pytest

from longstream.pipelines.common import ModelCache, UserError, gradio_errors

gr = pytest.importorskip("gradio")


def test_user_error_becomes_visible_gr_error():
    @gradio_errors
    def handler(text):
        if not text:
            raise UserError("the series box is empty: paste comma-separated numbers")
        return text.upper()

    assert handler("ok") == "OK" and handler.__name__ == "handler"
    with pytest.raises(gr.Error) as info:
        handler("")
    assert info.value.message == "the series box is empty: paste comma-separated numbers"


def test_other_errors_are_generic_and_logged(caplog):
    @gradio_errors
    def broken():
        raise ZeroDivisionError("secret internals")

    with caplog.at_level(logging.ERROR, logger="longstream.demo"):
        with pytest.raises(gr.Error) as info:
            broken()
    assert "internal error in broken (ZeroDivisionError)" in info.value.message
    assert "secret internals" not in info.value.message  # not shown in the browser ...
    assert "secret internals" in caplog.text and "Traceback" in caplog.text  # ... but logged

    @gradio_errors
    def already():
        raise gr.Error("kept as is")

    with pytest.raises(gr.Error, match="kept as is"):
        already()


def test_generator_handlers_are_wrapped():
    @gradio_errors
    def stream(n):
        yield from range(n)
        raise UserError(f"stopped after {n} segments: input too long")

    gen = stream(2)
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(gr.Error, match="stopped after 2 segments"):
        next(gen)


def test_model_cache_loads_once_per_name_and_evicts_lru():
    calls = []

    def loader(name):
        calls.append(name)
        if name == "bad":
            raise UserError("unknown model bad")
        return {"name": name}

    cache = ModelCache(loader, maxsize=2)
    a = cache.get("a")
    assert cache.get("a") is a and calls == ["a"]
    cache.get("b")
    cache.get("a")  # a is now most recent
    cache.get("c")  # evicts b
    assert "b" not in cache and "a" in cache and len(cache) == 2
    cache.get("b")
    assert calls == ["a", "b", "c", "b"] and cache.loads == 4
    with pytest.raises(UserError):
        cache.get("bad")
    assert "bad" not in cache  # failures are not cached
    # concurrent clicks load a model only once
    cache.clear()
    threads = [threading.Thread(target=cache.get, args=("z",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls.count("z") == 1

"""ModelSlot: switch, refusal of a broken model, one switch at a time, rollback, retiring old models."""

from __future__ import annotations

import threading
import time

import pytest

from captioner.service.models import ModelSlot, ServedModel, SwitchInProgress
from captioner.service.problems import ServiceError


class FakeCaptioner:
    def __init__(self, version: str):
        self.version = version


def served(version: str, closed: list[str]) -> ServedModel:
    model = ServedModel(FakeCaptioner(version))  # type: ignore[arg-type]
    object.__setattr__(model, "close", lambda: closed.append(version))
    return model


def test_switch_makes_the_new_model_active_and_keeps_the_old_one_as_previous():
    closed: list[str] = []
    versions = iter(["v2", "v3"])
    slot = ModelSlot(lambda: served(next(versions), closed), retire_after_s=0.05)
    slot.load(served("v1", closed))
    assert slot.switch().version == "v2"
    assert slot.versions() == {"active": "v2", "previous": "v1"}
    slot.switch()
    assert slot.versions() == {"active": "v3", "previous": "v2"}
    time.sleep(0.3)
    assert closed == ["v1"]  # neither active nor previous: closed after retire_after_s


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving():
    def broken():
        raise ValueError("tampered bundle")

    slot = ModelSlot(broken)
    first = slot.load(served("v1", []))
    with pytest.raises(ValueError, match="tampered"):
        slot.switch()
    assert slot.active is first and slot.previous is None
    slot._build = lambda: served("v2", [])
    assert slot.switch().version == "v2"  # the failed switch released its lock


def test_one_switch_at_a_time():
    entered, release = threading.Event(), threading.Event()

    def slow():
        entered.set()
        release.wait(5)
        return served("v2", [])

    slot = ModelSlot(slow)
    slot.load(served("v1", []))
    thread = threading.Thread(target=slot.switch)
    thread.start()
    assert entered.wait(5)
    with pytest.raises(SwitchInProgress) as info:
        slot.switch()
    assert info.value.status == 409
    assert slot.active.version == "v1"  # not swapped until the new model is built and warmed
    release.set()
    thread.join(5)
    assert slot.versions() == {"active": "v2", "previous": "v1"}


def test_rollback_swaps_active_and_previous():
    slot = ModelSlot(lambda: served("v2", []))
    slot.load(served("v1", []))
    with pytest.raises(ServiceError) as info:
        slot.rollback()
    assert info.value.status == 409
    slot.switch()
    assert slot.rollback().version == "v1"
    assert slot.versions() == {"active": "v1", "previous": "v2"}

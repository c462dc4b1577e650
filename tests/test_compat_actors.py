"""Actors as Ray documents them: the actor class stands for the user's class, method
retries, the ways an actor ends (`__ray_terminate__`, `exit_actor`, `kill`) and what its
callers see then, restarts, and the resources an actor holds. Each test is written from
Ray's documentation of the behaviour."""

from __future__ import annotations

import functools
import os

import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions

_wait_for = functools.partial(wait_until, timeout_s=20.0)


# ---- the actor class ----------------------------------------------------------------------

def _base() -> type:
    # Made in a function so that it is pickled by value: the workers cannot import
    # this test module.
    class Base:
        BASE_ATTR = "base"

        @staticmethod
        def base_static():
            return "base-static"

        @classmethod
        def base_class_method(cls):
            return cls.BASE_ATTR

    return Base


Base = _base()


@taskmesh.remote
class Counter(Base):  # type: ignore[valid-type,misc]
    CLASS_ATTR = 5
    instances = 0

    def __init__(self):
        type(self).instances += 1  # per process: each actor has its own copy

    @staticmethod
    def some_static():
        return 7

    @classmethod
    def from_class(cls):
        return cls.CLASS_ATTR * 2

    def inside(self):
        return (Counter.CLASS_ATTR, Counter.some_static(), Counter.from_class(),
                Counter.base_static(), self.some_static(), self.base_class_method())

    def count(self):
        return type(self).instances


def test_actor_class_attributes_and_static_methods_are_reachable(ray) -> None:
    # Ray's actor class derives from the user's class: class attributes, static and
    # class methods, inherited ones too, work through it.
    assert Counter.CLASS_ATTR == 5
    assert Counter.BASE_ATTR == "base"
    assert Counter.some_static() == 7
    assert Counter.from_class() == 10
    assert Counter.base_static() == "base-static"
    assert Counter.base_class_method() == "base"
    with pytest.raises(AttributeError):
        Counter.no_such_attribute  # noqa: B018
    names = dir(Counter)
    for name in ("inside", "count", "some_static", "from_class", "base_static", "CLASS_ATTR",
                 "remote", "options"):
        assert name in names
    c = Counter.remote()
    assert ray.get(c.inside.remote()) == (5, 7, 10, "base-static", 7, "base")


def test_class_variables_are_per_process(ray) -> None:
    # "Each actor instance is instantiated in its own process, so each actor will have
    # its own copy of the class variables."
    a, b = Counter.remote(), Counter.remote()
    assert ray.get([a.count.remote(), b.count.remote()]) == [1, 1]
    assert Counter.instances == 0  # the driver's copy is untouched


def test_subclassing_an_actor_class_raises() -> None:
    with pytest.raises(TypeError, match="Inheriting from actor classes is not currently supported."):
        class Derived(Counter):  # type: ignore[misc]
            pass
    with pytest.raises(taskmesh.actor.ActorClassInheritanceException):
        class Derived2(Base, Counter):  # type: ignore[misc]
            pass

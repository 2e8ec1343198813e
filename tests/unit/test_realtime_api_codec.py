"""The contract's one dataclass ⇄ JSON codec (edge/contract/json_fields.py) on small models of its own,
and the edge→relay control contract (edge/contract/control.py) that runs on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest

from splitrelay.contract.control import (
    MAX_SDP_CHARS,
    AttachMode,
    AttachRequest,
    AttachResult,
    Continuation,
    ContinuationReason,
    SfuAttach,
    call_path,
    check_call_id,
)
from splitrelay.contract.json_fields import JsonModel, SchemaError, from_json, join_path, json_field, to_json
from splitrelay.contract.sfu import SessionDescription


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Leaf(JsonModel):
    leaf_name: str
    weight: float | None = None


def _upper(value: object, path: str) -> object:
    if not isinstance(value, str):
        raise SchemaError(path, "expected a word")
    return value.upper()


@dataclass(frozen=True, kw_only=True)
class Tree(JsonModel):
    tree_id: str
    height_m: int | None = None
    evergreen: bool | None = None
    colour: Colour | None = None
    leaves: tuple[Leaf, ...] = ()
    tags: tuple[str, ...] = ()
    top: Leaf | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shout: str | None = field(default=None, metadata=json_field(name="SHOUT", decode=_upper))

    def validate(self, path: str = "") -> None:
        if self.height_m is not None and self.height_m < 0:
            raise SchemaError(join_path(path, "heightM"), "must not be negative")


@dataclass(frozen=True, kw_only=True)
class SnakeTree(JsonModel):
    json_case = "snake"
    json_strict = True

    tree_id: str
    top: Leaf | None = None


def test_names_are_camel_case_and_unset_optionals_are_left_out() -> None:
    tree = Tree(tree_id="t1", colour=Colour.RED, leaves=(Leaf(leaf_name="a", weight=0.5),), tags=("x",))
    doc = to_json(tree)
    assert doc == {
        "treeId": "t1",
        "colour": "red",
        "leaves": [{"leafName": "a", "weight": 0.5}],
        "tags": ["x"],
    }
    assert type(doc["colour"]) is str  # the enum's value, not the enum
    assert tree.to_json() == doc
    assert to_json(Tree(tree_id="t2")) == {"treeId": "t2"}  # required: always written


def test_round_trip_through_the_generic_pair_and_the_methods() -> None:
    doc = {
        "treeId": "t1",
        "heightM": 12.0,
        "evergreen": False,
        "colour": "blue",
        "leaves": [{"leafName": "a"}, {"leafName": "b", "weight": 2}],
        "tags": ["x", "y"],
        "top": {"leafName": "c"},
        "extra": {"any": ["json"]},
        "SHOUT": "hey",
    }
    tree = from_json(Tree, doc)
    assert tree == Tree.from_json(doc)
    assert tree.height_m == 12 and type(tree.height_m) is int
    assert (
        tree.colour is Colour.BLUE and tree.leaves[1].weight == 2.0 and type(tree.leaves[1].weight) is float
    )
    assert tree.shout == "HEY" and tree.extra == {"any": ["json"]}
    assert from_json(Tree, to_json(tree)) == tree
    assert Tree.from_json({"treeId": "t", "unknown": 1}) == Tree(tree_id="t")  # Cloudflare may add fields


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ([], "body", "expected an object, got array"),
        ({}, "treeId", "is required"),
        ({"treeId": 1}, "treeId", "expected string, got number"),
        ({"treeId": "t", "heightM": 1.5}, "heightM", "fraction"),
        ({"treeId": "t", "heightM": True}, "heightM", "expected integer, got boolean"),
        ({"treeId": "t", "heightM": -1}, "heightM", "must not be negative"),
        ({"treeId": "t", "evergreen": "yes"}, "evergreen", "expected boolean, got string"),
        ({"treeId": "t", "colour": "green"}, "colour", "must be one of 'red', 'blue'"),
        ({"treeId": "t", "colour": None}, "colour", "expected string, got null"),
        ({"treeId": "t", "leaves": {}}, "leaves", "expected array, got object"),
        ({"treeId": "t", "leaves": [{"leafName": "a"}, 3]}, "leaves[1]", "expected an object, got number"),
        (
            {"treeId": "t", "leaves": [{"leafName": "a", "weight": False}]},
            "leaves[0].weight",
            "expected number",
        ),
        ({"treeId": "t", "tags": ["x", 2]}, "tags[1]", "expected string"),
        ({"treeId": "t", "top": {}}, "top.leafName", "is required"),
        ({"treeId": "t", "extra": []}, "extra", "expected an object"),
        ({"treeId": "t", "SHOUT": 1}, "SHOUT", "expected a word"),
    ],
)
def test_errors_name_the_json_path_never_the_value(doc: object, field: str, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        Tree.from_json(doc)
    assert excinfo.value.field == field
    assert needle in excinfo.value.message


def test_a_path_prefix_reaches_nested_errors() -> None:
    with pytest.raises(SchemaError) as excinfo:
        Tree.from_json({"treeId": "t", "leaves": [{}]}, "forest[3]")
    assert excinfo.value.field == "forest[3].leaves[0].leafName"


def test_snake_case_strict_models_refuse_unknown_keys_at_every_depth() -> None:
    assert SnakeTree(tree_id="t", top=Leaf(leaf_name="l")).to_json() == {
        "tree_id": "t",
        "top": {"leafName": "l"},
    }
    for doc, where in [
        ({"tree_id": "t", "treeId": "t"}, "treeId"),
        ({"tree_id": "t", "top": {"leafName": "l", "x": 1}}, "top.x"),
    ]:
        with pytest.raises(SchemaError) as excinfo:
            SnakeTree.from_json(doc)
        assert (excinfo.value.field, excinfo.value.message) == (where, "unknown field")
    # The same nested class stays lenient where its own reader is lenient.
    assert Tree.from_json({"treeId": "t", "top": {"leafName": "l", "x": 1}}).top == Leaf(leaf_name="l")


def test_annotations_without_a_json_form_are_refused_at_first_use() -> None:
    @dataclass(frozen=True)
    class Odd(JsonModel):
        pair: tuple[str, int]

    with pytest.raises(TypeError, match=r"Odd\.pair"):
        to_json(Odd(pair=("a", 1)))


# --- the edge→relay control contract ---------------------------------------------------------------------

SFU_ATTACH = {
    "call_id": "call-1",
    "mode": "sfu",
    "sfu": {"caller_session_id": "s", "caller_track_name": "mic"},
}


def test_attach_request_round_trips_in_snake_case() -> None:
    request = AttachRequest(
        call_id="call-1",
        mode=AttachMode.SFU,
        sfu=SfuAttach(caller_session_id="s", caller_track_name="mic"),
        metadata={"edge_relay_reason": "nearest"},
    )
    doc = request.to_json()
    assert doc == {**SFU_ATTACH, "metadata": {"edge_relay_reason": "nearest"}}
    assert AttachRequest.from_json(doc) == request
    assert AttachRequest.from_json(SFU_ATTACH).metadata == {}
    direct = AttachRequest.from_json(
        {"call_id": "c", "mode": "direct", "offer": {"type": "offer", "sdp": "v=0"}}
    )
    assert direct.offer == SessionDescription.offer("v=0")
    moved = {**SFU_ATTACH, "continues": {"previous_relay": "relay-0", "reason": "relay_lost", "attempt": 2}}
    continues = AttachRequest.from_json(moved).continues
    assert continues == Continuation(
        previous_relay="relay-0", reason=ContinuationReason.RELAY_LOST, attempt=2
    )
    assert AttachRequest.from_json(moved).to_json() == moved


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"call_id": "bad id!"}, "call_id"),
        ({"call_id": "x" * 65}, "call_id"),
        ({"mode": "teleport"}, "mode"),
        ({"sfu": None}, "sfu"),
        ({"sfu": {"caller_session_id": "", "caller_track_name": "mic"}}, "sfu.caller_session_id"),
        ({"sfu": {"caller_session_id": "s", "caller_track_name": "m" * 129}}, "sfu.caller_track_name"),
        ({"metadata": {str(i): i for i in range(65)}}, "metadata"),
        ({"extra": 1}, "extra"),
        ({"mode": "direct"}, "offer"),
        ({"mode": "direct", "offer": {"type": "answer", "sdp": "v=0"}}, "offer.type"),
        ({"mode": "direct", "offer": {"type": "offer", "sdp": "x" * (MAX_SDP_CHARS + 1)}}, "offer.sdp"),
        ({"mode": "direct", "offer": {"type": "offer", "sdp": "v=0", "x": 1}}, "offer.x"),
        ({"continues": {"previous_relay": "r0", "reason": "drain", "attempt": 0}}, "continues.attempt"),
        ({"continues": {"previous_relay": "r0", "reason": "drain", "attempt": 17}}, "continues.attempt"),
        ({"continues": {"previous_relay": "r0", "reason": "bored", "attempt": 1}}, "continues.reason"),
        ({"continues": {"previous_relay": "", "reason": "drain", "attempt": 1}}, "continues.previous_relay"),
        ({"continues": {"reason": "drain", "attempt": 1}}, "continues.previous_relay"),
    ],
)
def test_bad_attach_requests_name_the_field(changes: dict[str, Any], field: str) -> None:
    doc = {**SFU_ATTACH, **changes}
    if changes.get("sfu", ...) is None:
        del doc["sfu"]
    with pytest.raises(SchemaError) as excinfo:
        AttachRequest.from_json(doc)
    assert excinfo.value.field == field


def test_attach_result_as_the_edge_reads_it() -> None:
    doc = {
        "call_id": "call-1",
        "mode": "sfu",
        "sfu_session_id": "r",
        "sfu_track_name": "relay-call-1",
        "setup_ms": 5,
    }
    result = AttachResult.from_json({**doc, "added_later": True})  # a newer relay may say more
    assert (result.sfu_session_id, result.sfu_track_name, result.setup_ms) == ("r", "relay-call-1", 5.0)
    assert result.to_json() == {**doc, "setup_ms": 5.0}
    with pytest.raises(SchemaError) as excinfo:
        AttachResult.from_json({**doc, "sfu_track_name": ""})
    assert excinfo.value.field == "sfu_session_id"
    with pytest.raises(SchemaError) as excinfo:
        AttachResult.from_json({"call_id": "c", "mode": "direct", "setup_ms": 1})
    assert excinfo.value.field == "answer"


def test_one_call_id_rule() -> None:
    assert check_call_id("call-0123abcd_x.y:z") == "call-0123abcd_x.y:z"
    for bad in ("", "a b", "a/b", "x" * 65, 7, None):
        with pytest.raises(SchemaError) as excinfo:
            check_call_id(bad, "where")
        assert excinfo.value.field == "where"
    assert call_path("call-1") == "/v1/calls/call-1"
    with pytest.raises(SchemaError):
        call_path("../x")

"""MSR-VTT style caption files: the layouts people have, and clear errors for the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.video_captions import Caption, CaptionFileError, read_captions, write_captions


def test_msrvtt_json_round_trip_with_splits_groups_and_kinds(tmp_path: Path) -> None:
    captions = [
        Caption("v0", "a red circle", "free"),
        Caption("v0", "a red circle moves left", "order"),
        Caption("v1", "a blue star", ""),
    ]
    path = write_captions(tmp_path / "c.json", captions, {"v0": "train", "v1": "test"}, {"v0": "g0"})
    read = read_captions(path)
    assert list(read.captions) == captions
    assert read.video_ids() == ["v0", "v1"] and read.video_ids("test") == ["v1"]
    assert read.groups == {"v0": "g0"} and [c.text for c in read.select(kind="order")] == [
        "a red circle moves left"
    ]


def test_csv_and_plain_json_layouts(tmp_path: Path) -> None:
    csv_path = tmp_path / "msrvtt_test.csv"
    csv_path.write_text(
        "key,vid_key,video_id,sentence\nret0,msr7020,video7020,a woman sings\n"
        "ret1,msr7021,video7021,a man cooks\nret2,msr7021,video7021,  \n"
    )
    read = read_captions(csv_path)
    assert [(c.video_id, c.text) for c in read.captions] == [
        ("video7020", "a woman sings"),
        ("video7021", "a man cooks"),
    ]
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"a": ["one", "two"], "b": "three"}))
    assert [c.video_id for c in read_captions(mapping).captions] == ["a", "a", "b"]
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"video_id": "x", "caption": "hello"}]))
    assert read_captions(rows).captions[0].text == "hello"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('[{"video": 1}]', "lacks video_id or caption"),
        ("{}", "no captions"),
        ("42", "unexpected JSON layout"),
    ],
)
def test_bad_caption_files_name_the_file_and_the_layout(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CaptionFileError, match=message) as raised:
        read_captions(path)
    assert "bad.json" in str(raised.value)
    with pytest.raises(CaptionFileError, match="does not exist"):
        read_captions(tmp_path / "missing.json")

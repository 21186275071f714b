"""The truth scoring counts misses (testbed/truth.py)."""

from curation import shards
from testbed.truth import score


def test_scoring_counts_a_kept_junk_image_as_a_miss(tmp_path):
    import pyarrow as pa

    truth = {
        "expected_rejects": {"http_404": {"stage": "download", "reason": "HTTP 404"}},
        "duplicate_groups": [],
        "images": {
            "http://h/a.jpg": {"in_wit": True, "junk": [], "expected_reject": None},
            "http://h/b.jpg": {
                "in_wit": True,
                "junk": ["http_404"],
                "expected_reject": {"stage": "download"},
            },
            "http://h/c.jpg": {
                "in_wit": True,
                "junk": ["http_404"],
                "expected_reject": {"stage": "download"},
            },
        },
    }
    truth["images"]["http://h/b.jpg"]["expected_reject"] = truth["expected_rejects"]["http_404"]
    truth["images"]["http://h/c.jpg"]["expected_reject"] = truth["expected_rejects"]["http_404"]
    kept = pa.table(
        {
            "key": ["1", "3"],
            "url": ["http://h/a.jpg", "http://h/c.jpg"],
            "caption": ["a", "c"],
            "jpg": [b"x", b"y"],
        }
    )
    rejects = pa.table(
        {
            "key": ["2"],
            "url": ["http://h/b.jpg"],
            "reject_stage": ["download"],
            "reject_reason": ["http_404: HTTP Error 404"],
        }
    )
    shards.write_shard(tmp_path, "part-00000", kept)
    shards.write_shard(tmp_path, "part-00000", rejects, kind=shards.REJECTS)
    figures = score(tmp_path, truth)
    assert (figures["junk"], figures["junk_rejected_right"], figures["clean"], figures["clean_kept"]) == (
        2,
        1,
        1,
        1,
    )
    assert figures["misses"] == ["http_404 http://h/c.jpg -> ('kept', None)"]

"""A second increment killed (SIGKILL) at random moments, then resumed, equals an uninterrupted one."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from curation import shards, versions
from curation.build import build_dataset
from curation.config import BuildConfig
from testbed.testweb import SiteOptions
from testbed.web import serve_testweb
from tests.test_build import FAST, all_keys, build_args, cli, kill_after


@pytest.mark.slow
def test_second_increment_killed_at_random_moments_then_resumed_equals_uninterrupted(tmp_path):
    rng = np.random.default_rng(11)
    options = SiteOptions(junk_fraction=0.6)
    with serve_testweb(pages=10, seed=2, options=options, visible_pages=4, slow_delay_s=0.5) as web:
        wit = web.write_wit(tmp_path / "site.tsv")
        reference = BuildConfig(
            out=tmp_path / "reference",
            source=[f"wit:{wit}"],
            allow_networks=["127.0.0.0/8"],
            chunk_size=20,
            **FAST,
        )
        build_dataset(reference)
        shutil.copytree(reference.out, tmp_path / "killed")  # the same version 0 for both
        web.grow()
        web.write_wit(wit)
        started = time.monotonic()
        build_dataset(reference)
        one_run = time.monotonic() - started
        out = tmp_path / "killed"
        args = build_args(out, wit, "127.0.0.0/8", 20)
        kills = kill_after(args, rng.uniform(1.0, one_run, size=4))
        final = cli(args)
        assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 2
    assert versions.latest_version(out) == versions.latest_version(reference.out) == 1
    for version in (0, 1):
        got = shards.read_table(out, columns=["key", "url"], version=version).to_pylist()
        want = shards.read_table(reference.out, columns=["key", "url"], version=version).to_pylist()
        assert sorted(got, key=str) == sorted(want, key=str)
    kept, rejected = all_keys(out)
    ref_kept, ref_rejected = all_keys(reference.out)
    assert sorted(kept) == sorted(ref_kept) and sorted(rejected) == sorted(ref_rejected)
    assert len(rejected) == len(set(rejected)) and not set(kept) & set(rejected)
    assert [e["added"] for e in versions.history(out)] == [
        e["added"] for e in versions.history(reference.out)
    ]

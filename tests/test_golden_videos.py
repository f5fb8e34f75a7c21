"""Every strategy on its options makes the same video as before the clips refactor
(hashes recorded by tests/golden_videos.py), on 1 worker and on 2 shuffled workers."""

import json

import pytest

from golden_videos import CASES, FIXTURE, fingerprint, run_case, video_hash

RECORD = json.loads(FIXTURE.read_text())
SAME_ARITHMETIC = fingerprint() == RECORD["fingerprint"]


@pytest.mark.skipif(not SAME_ARITHMETIC, reason="this CPU's float arithmetic differs from the machine that recorded "
                                                "the hashes (tests/golden_videos.py fingerprint)")
@pytest.mark.parametrize("name", list(CASES))
def test_video_equals_the_recorded_one(name):
    want = RECORD["videos"][name]
    for devices, shuffle in ((["cpu"], None), (["cpu", "cpu"], 5)):
        v = run_case(name, devices=devices, shuffle=shuffle)
        assert len(v.frames) == want["frames"]
        assert video_hash(v.frames) == want["sha256"], f"{name} on {len(devices)} worker(s) changed"

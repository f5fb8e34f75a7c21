"""Every strategy on its options makes the same video as before the clips refactor
(recorded by tests/golden_videos.py), on 1 worker and on 2 shuffled workers: bit for bit
where this machine's arithmetic is a recorded one's, within a few uint8 levels of the
recorded thumbnails everywhere."""

import json

import numpy as np
import pytest

from golden_videos import CASES, FIXTURE, THUMB_TOLERANCE, expected_hashes, run_case, thumbnail, video_hash

RECORD = json.loads(FIXTURE.read_text())
HASHES = expected_hashes(RECORD)


@pytest.mark.parametrize("name", list(CASES))
def test_video_equals_the_recorded_one(name):
    want = RECORD["videos"][name]
    thumbs = np.asarray(RECORD["thumbs"][name])
    for devices, shuffle in ((["cpu"], None), (["cpu", "cpu"], 5)):
        v = run_case(name, devices=devices, shuffle=shuffle)
        assert len(v.frames) == want["frames"]
        diff = float(np.abs(thumbnail(v.frames) - thumbs).max())
        assert diff <= THUMB_TOLERANCE, f"{name} on {len(devices)} worker(s) moved {diff:.2f} levels from its record"
        if HASHES is not None:
            assert video_hash(v.frames) == HASHES[name], f"{name} on {len(devices)} worker(s) changed"

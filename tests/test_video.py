"""Video output: uint8 conversion, mp4 writing (PyAV / imageio-ffmpeg), streaming writer, crash safety."""

import numpy as np
import pytest
import torch

from engine.video import Mp4Writer, Video, available_backends, read_video_frames, to_uint8_frames

BACKENDS = [b for b in ("av", "imageio") if b in available_backends()]


def _frames(n, h=32, w=48, seed=0):
    """Smooth moving gradients (compress well, so decoded pixels stay close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        ph = xx / 7.0 + yy / 11.0 + t / 3.0
        rgb = np.stack([128 + 100 * np.sin(ph), 128 + 100 * np.cos(ph / 2), 128 + 60 * np.sin(yy / 5.0 - t)], -1)
        out.append(rgb + rng.normal(0, 0.5, rgb.shape))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def test_to_uint8_frames():
    v = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 1, 6).expand(2, 3, 4, 5, 6)
    out = to_uint8_frames(v)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 5, 6, 3)
    assert out[0, 0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255]  # 127.5 rounds to even -> 128
    x = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    ref = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(to_uint8_frames(x), ref)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        to_uint8_frames(torch.zeros(3, 2, 4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_and_read_back(tmp_path, backend):
    frames = _frames(13)
    video = Video(frames, fps=16)
    assert len(video) == 13 and (video.height, video.width) == (32, 48)
    path = video.save(tmp_path / "v.mp4", backend=backend)
    back = read_video_frames(path)
    assert back.shape == (13, 32, 48, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 6  # yuv420p chroma subsampling
    flat = np.broadcast_to(np.array([200, 50, 120], np.uint8), (3, 32, 48, 3))
    Video(flat, fps=16).save(tmp_path / "flat.mp4", backend=backend)
    assert np.abs(read_video_frames(tmp_path / "flat.mp4").astype(int) - flat).max() <= 3  # colours kept


def test_random_frames_exact_count(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
    Video(frames, fps=8).save(tmp_path / "r.mp4")
    assert read_video_frames(tmp_path / "r.mp4").shape == (9, 16, 24, 3)


def test_streaming_writer_matches_one_shot(tmp_path):
    frames = _frames(17)
    Video(frames, fps=16).save(tmp_path / "one.mp4")
    with Mp4Writer(tmp_path / "stream.mp4", fps=16, width=48, height=32) as w:
        w.write(frames[:1])
        w.write(torch.from_numpy(frames[1:5]))
        w.write(frames[5])  # a single [H, W, 3] frame
        w.write(frames[6:])
    assert w.frames_written == 17
    one, stream = read_video_frames(tmp_path / "one.mp4"), read_video_frames(tmp_path / "stream.mp4")
    assert one.shape == stream.shape == (17, 32, 48, 3)
    # Same encoder and settings; x264's threading may still pick slightly different
    # decisions run to run, so compare decoded pixels with a small tolerance.
    assert np.abs(one.astype(int) - stream.astype(int)).mean() < 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_closed_after_failure_is_playable(tmp_path, backend):
    frames = _frames(12)
    path = tmp_path / "partial.mp4"
    writer = Mp4Writer(path, fps=16, width=48, height=32, backend=backend)
    with pytest.raises(RuntimeError, match="boom"):
        try:
            for t in range(0, 12, 4):
                if t == 8:
                    raise RuntimeError("boom")  # generation fails after 8 frames
                writer.write(frames[t : t + 4])
        finally:
            writer.close()
    writer.close()  # idempotent
    back = read_video_frames(path)
    assert back.shape == (8, 32, 48, 3)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(frames[:1])


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", fps=16, width=47, height=32)
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "f.mp4", fps=0, width=48, height=32)
    with pytest.raises(ValueError, match="backend"):
        Mp4Writer(tmp_path / "b.mp4", fps=16, width=48, height=32, backend="gif")
    with Mp4Writer(tmp_path / "s.mp4", fps=16, width=48, height=32) as w:
        with pytest.raises(ValueError, match="does not match"):
            w.write(np.zeros((1, 30, 48, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            w.write(np.zeros((1, 32, 48, 3), np.float32))
        w.write(np.zeros((2, 32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        Video(np.zeros((2, 32, 48), np.uint8))


def test_no_backend_error(tmp_path, monkeypatch):
    import engine.video as ev

    monkeypatch.setattr(ev, "available_backends", lambda: [])
    with pytest.raises(RuntimeError, match="neither PyAV"):
        Mp4Writer(tmp_path / "x.mp4", fps=16, width=48, height=32)


def test_video_from_tensor(tmp_path):
    x = torch.rand(3, 5, 16, 16) * 2 - 1
    v = Video.from_tensor(x, fps=24)
    assert len(v) == 5 and v.frames.shape == (5, 16, 16, 3) and v.fps == 24
    assert np.array_equal(v.frames, to_uint8_frames(x[None])[0])
    with pytest.raises(ValueError):
        Video.from_tensor(torch.rand(2, 3, 5, 16, 16))

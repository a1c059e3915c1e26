"""worldsim.data.video: mp4/gif round trips through real encoders, resizing, errors."""

import numpy as np
import pytest

from worldsim.data.video import VideoError, probe, read_frames, resize, write_video


def level_clip(T: int, H: int = 36, W: int = 64, step: int = 8) -> np.ndarray:
    """Frame t is a flat grey of level step * t, so a decoded frame says which one it is."""
    return np.repeat((np.arange(T, dtype=np.uint8) * step)[:, None, None, None], H * W * 3
                     ).reshape(T, H, W, 3)


def test_mp4_round_trip(tmp_path):
    clip = level_clip(25)
    path = write_video(tmp_path / "clip.mp4", clip, fps=20)
    info = probe(path)
    assert (info.width, info.height, info.frames) == (64, 36, 25)
    assert info.fps == pytest.approx(20)
    frames = list(read_frames(path))
    assert len(frames) == 25 and frames[0].shape == (36, 64, 3) and frames[0].dtype == np.uint8
    levels = np.array([f.mean() for f in frames])
    np.testing.assert_allclose(levels, clip.reshape(25, -1).mean(1), atol=2.5)


def test_gif_round_trip_and_upscale(tmp_path):
    clip = level_clip(6, 10, 12, step=40)
    path = write_video(tmp_path / "clip.gif", clip, fps=10, upscale=2)
    frames = list(read_frames(path))
    assert len(frames) == 6 and frames[0].shape == (20, 24, 3)
    np.testing.assert_allclose([f.mean() for f in frames], np.arange(6) * 40, atol=2)


def test_odd_sizes_and_resized_reading(tmp_path):
    path = write_video(tmp_path / "odd.mp4", level_clip(3, 17, 9), fps=20)
    assert probe(path).width == 9 and probe(path).height == 17
    frames = list(read_frames(path, (8, 6)))
    assert [f.shape for f in frames] == [(8, 6, 3)] * 3


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, level_clip(4), fps=20)
    write_video(path, level_clip(7), fps=20)
    assert probe(path).frames == 7
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary left behind


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\.avi"):
        write_video(tmp_path / "a.avi", level_clip(2))
    assert list(tmp_path.iterdir()) == []


def test_resize_stretch_crop_and_antialiasing():
    frame = np.zeros((36, 64, 3), np.uint8)
    frame[:, :32] = (255, 0, 0)
    frame[:, 32:] = (0, 0, 255)
    small = resize(frame, (16, 16))
    assert small.shape == (16, 16, 3)
    assert (small[:, :8] == (255, 0, 0)).all() and (small[:, 8:] == (0, 0, 255)).all()

    framed = np.full((36, 64, 3), 128, np.uint8)
    framed[:, :14] = framed[:, 50:] = (0, 255, 0)  # outside the centred 36x36 square
    assert (resize(framed, (12, 12), fit="crop") == 128).all()
    assert (resize(framed, (12, 12), fit="stretch")[:, 0] == (0, 255, 0)).all()

    # a one-pixel checkerboard shrunk 4x must average to grey, not alias to black or white
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)
    grey = resize(np.repeat(checker[..., None], 3, -1), (8, 8))
    assert np.abs(grey.astype(int) - 128).max() <= 1


def test_unreadable_videos_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="garbage.mp4"):
        probe(garbage)
    with pytest.raises(VideoError, match="garbage.mp4"):
        next(read_frames(garbage))
    with pytest.raises(VideoError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")
    whole = write_video(tmp_path / "whole.mp4", level_clip(10)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        list(read_frames(tmp_path / "cut.mp4"))

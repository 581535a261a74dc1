"""Frame sampling policy, decoding real mp4 files, errors, pixel budget and token counts."""

import numpy as np
import pytest
import torch
from conftest import write_mp4
from transformers import Qwen2VLVideoProcessor

from minirl.video import (
    FrameCache,
    FrameSampling,
    VideoError,
    count_video_tokens,
    frame_size,
    num_sampled_frames,
    probe,
    process_video,
    read_video,
    uniform_indices,
    video_tokens,
)

FPS = 8


def write(path, frames, fps=FPS):
    return write_mp4(path, frames, fps, crf=10)


def grey_level(t):
    return 16 + 8 * t


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    """30 frames of 56x84 whose grey level encodes the frame number."""
    frames = np.stack([np.full((56, 84, 3), grey_level(t), np.uint8) for t in range(30)])
    return write(tmp_path_factory.mktemp("v") / "counting.mp4", frames)


@pytest.fixture(scope="module")
def vp():
    return Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=84 * 84)


def test_uniform_indices_are_centered_and_cover_the_video():
    assert uniform_indices(10, 4).tolist() == [1, 3, 6, 8]
    assert uniform_indices(7, 7).tolist() == list(range(7))
    idx = uniform_indices(1000, 16)
    assert idx[0] < 1000 / 16 and idx[-1] >= 1000 - 1000 / 16
    assert np.all(np.diff(idx) > 0)


@pytest.mark.parametrize(
    "total, sampling, expected",
    [
        (30, FrameSampling(num_frames=8), 8),
        (30, FrameSampling(num_frames=7), 6),  # rounded down to the temporal patch size
        (30, FrameSampling(num_frames=100), 30),  # capped at the frame count
        (31, FrameSampling(num_frames=100), 30),  # ... then rounded down
        (30, FrameSampling(num_frames=1), 2),  # minimum one temporal patch
        (80, FrameSampling(num_frames=None, fps=1.0), 10),  # 10 s at 1 fps
        (80, FrameSampling(num_frames=None, fps=2.0, max_frames=8), 8),  # frame cap
        (80, FrameSampling(num_frames=None, fps=0.1), 2),
    ],
)
def test_num_sampled_frames_policy(total, sampling, expected):
    assert num_sampled_frames(total, FPS, sampling) == expected


def test_sampling_needs_exactly_one_of_num_frames_and_fps():
    with pytest.raises(ValueError, match="exactly one"):
        FrameSampling(num_frames=8, fps=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        FrameSampling(num_frames=None)


def test_read_video_decodes_the_sampled_frames(counting):
    meta = probe(counting)
    assert (meta.num_frames, meta.fps, meta.height, meta.width) == (30, FPS, 56, 84)
    video = read_video(counting, FrameSampling(num_frames=6))
    assert video.frames.shape == (6, 56, 84, 3) and video.frames.dtype == np.uint8
    assert video.indices.tolist() == uniform_indices(30, 6).tolist()
    levels = video.frames.reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [grey_level(t) for t in video.indices], atol=3)
    np.testing.assert_allclose(video.timestamps, video.indices / FPS)
    assert video.sampled_fps == pytest.approx(6 / (30 / FPS))


def test_fps_sampling_and_single_frame_video(tmp_path, counting):
    video = read_video(counting, FrameSampling(num_frames=None, fps=2.0))  # 3.75 s -> 7 -> 6 frames
    assert len(video.indices) == 6
    one = write(tmp_path / "one.mp4", np.full((1, 28, 28, 3), 200, np.uint8))
    video = read_video(one, FrameSampling(num_frames=4))
    assert video.indices.tolist() == [0, 0]  # the only frame, repeated to fill a temporal patch
    assert video.frames.shape == (2, 28, 28, 3)


def broken_files(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    return {
        "missing.mp4": "file not found",
        "empty.mp4": "file is empty",
        "half.mp4": "not a decodable video",
        "text.mp4": "not a decodable video",
    }


@pytest.mark.parametrize("reader", [probe, lambda p: read_video(p, FrameSampling(num_frames=4))])
def test_broken_videos_raise_naming_the_path(tmp_path, counting, reader):
    for name, reason in broken_files(tmp_path, counting).items():
        path = tmp_path / name
        with pytest.raises(VideoError) as err:
            reader(path)
        assert err.value.path == str(path) and isinstance(err.value, OSError)
        assert str(path) in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("max_pixels", [28 * 28, 56 * 56, 60 * 70, 84 * 84, 112 * 168])
def test_pixel_budget_is_respected(counting, vp, max_pixels):
    video = read_video(counting, FrameSampling(num_frames=4))
    out = process_video(vp, video.frames, video.sampled_fps, max_pixels=max_pixels)
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 2 and (h * 14) * (w * 14) <= max_pixels
    assert h % 2 == 0 and w % 2 == 0  # whole 28x28 merge windows
    assert (h * 14, w * 14) == frame_size(56, 84, vp, max_pixels=max_pixels)
    assert out["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)
    assert out["second_per_grid_ts"].tolist() == pytest.approx([2 / video.sampled_fps])


@pytest.mark.parametrize("num_frames", [7, 8])
def test_processing_in_calls_of_a_few_frames_equals_one_call(counting, vp, num_frames):
    """process_video converts whole temporal patches a few frames at a time: the same rows and grid as one call,
    also when the frame count is odd (the last patch repeats the last frame)."""
    video = read_video(counting, FrameSampling(num_frames=8))
    frames = video.frames[:num_frames]
    whole = process_video(vp, frames, video.sampled_fps, max_pixels=56 * 84, frames_per_call=1 << 20)
    for per_call in (2, 3, 4):
        parts = process_video(vp, frames, video.sampled_fps, max_pixels=56 * 84, frames_per_call=per_call)
        assert torch.equal(parts["video_grid_thw"], whole["video_grid_thw"])
        assert torch.equal(parts["pixel_values_videos"], whole["pixel_values_videos"])
    assert whole["video_grid_thw"][0, 0] == -(-num_frames // 2)


def test_resize_keeps_the_aspect_ratio(vp):
    h, w = frame_size(280, 560, vp, max_pixels=200 * 400)
    assert (h, w) == (196, 392) and h % 28 == 0 and w % 28 == 0


@pytest.mark.parametrize(
    "sampling",
    [
        FrameSampling(num_frames=2),
        FrameSampling(num_frames=9),
        FrameSampling(num_frames=64),
        FrameSampling(num_frames=None, fps=3.0),
        FrameSampling(num_frames=None, fps=8.0, max_frames=12, max_pixels=56 * 56),
        FrameSampling(num_frames=6, max_pixels=28 * 56),
    ],
)
def test_token_count_before_decoding_equals_count_after_processing(counting, vp, sampling):
    predicted = count_video_tokens(probe(counting), vp, sampling)
    video = read_video(counting, sampling)
    out = process_video(vp, video.frames, video.sampled_fps, sampling.min_pixels, sampling.max_pixels)
    assert predicted == int(out["video_grid_thw"].prod()) // vp.merge_size**2
    assert predicted > 0


@pytest.mark.parametrize("sampling", [FrameSampling(num_frames=8), FrameSampling(num_frames=5, max_pixels=56 * 112)])
def test_token_count_at_merge_4(counting, sampling):
    """One token per 56 x 56 window (tiny --merge-size 4): the count still comes from metadata alone."""
    merge4 = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112, merge_size=4)
    predicted = count_video_tokens(probe(counting), merge4, sampling)
    video = read_video(counting, sampling)
    out = process_video(merge4, video.frames, video.sampled_fps, sampling.min_pixels, sampling.max_pixels)
    assert predicted == int(out["video_grid_thw"].prod()) // 16 == video_tokens(len(video.frames), 56, 84, merge4,
                                                                              max_pixels=sampling.max_pixels)


def test_odd_frame_count_is_padded_like_the_processor(counting, vp):
    frames = read_video(counting, FrameSampling(num_frames=6)).frames[:5]
    out = process_video(vp, frames, 2.0)
    assert out["video_grid_thw"][0, 0] == 3  # the last frame repeated
    assert video_tokens(5, 56, 84, vp) == int(out["video_grid_thw"].prod()) // 4


def test_process_video_accepts_the_full_processor(counting, vp):
    class Holder:
        video_processor = vp

    frames = read_video(counting, FrameSampling(num_frames=4)).frames
    a = process_video(Holder(), frames, 2.0)
    b = process_video(vp, frames, 2.0)
    assert a["pixel_values_videos"].equal(b["pixel_values_videos"])
    with pytest.raises(ValueError, match="uint8"):
        process_video(vp, frames.astype(np.float32), 2.0)


def test_frame_cache_reuses_frames_and_evicts_the_oldest(mp4_path, tmp_path):
    """A cached video is not decoded again (its file may even be gone), equals a fresh decode, and
    the cache never holds more than its budget: the least recently used video leaves first."""
    sampling = FrameSampling(num_frames=4)
    copies = [tmp_path / f"{i}.mp4" for i in range(3)]
    for c in copies:
        c.write_bytes(mp4_path.read_bytes())
    one = read_video(copies[0], sampling).frames.nbytes
    cache = FrameCache(max_mb=2.5 * one / 2**20)  # room for two videos
    first = cache.read(copies[0], sampling)
    assert np.array_equal(first.frames, read_video(copies[0], sampling).frames)
    meta = probe(copies[0])
    copies[0].unlink()
    assert cache.read(copies[0], sampling) is first  # from memory
    assert cache.probe(copies[0]) == meta  # the file's metadata too
    cache.read(copies[1], sampling)
    cache.read(copies[0], sampling)  # now the most recently used
    cache.read(copies[2], sampling)  # evicts copies[1]
    assert cache.bytes == 2 * one
    copies[1].unlink()
    with pytest.raises(VideoError, match="file not found"):
        cache.read(copies[1], sampling)
    assert cache.read(copies[0], sampling) is first
    with pytest.raises(VideoError, match="file not found"):  # another sampling is another entry
        cache.read(copies[0], FrameSampling(num_frames=2))

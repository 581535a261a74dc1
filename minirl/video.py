"""Video decoding, frame sampling and the Qwen2.5-VL video processor.

The pipeline for one video: `probe` (metadata only) -> `sample_indices` (which frames) -> `read_video` (decord
decodes just those frames) -> `process_video` (the checkpoint's transformers video processor resizes,
normalises and patchifies them). `count_video_tokens` runs the first two steps plus the resize arithmetic
without decoding, so data loading can fit a prompt into its token budget before paying for the decode.

Why we decode ourselves: transformers 5.23 decodes video *files* only through torchcodec, which we do not
depend on, so we hand the video processor already-decoded frames with `do_sample_frames=False`.

Policies, stated once:
- Uniform sampling is *centered*: frame i of n covers the i-th of n equal spans of the video and we take the
  frame in the middle of its span, `floor((i + 0.5) * total / n)`. Every part of the video is equally
  represented and n == total gives every frame exactly once.
- The frame count is rounded *down* to a multiple of the temporal patch size (2), so the temporal patches are
  made of real, distinct frames; the minimum is 2 (a one-frame video has its frame repeated). More frames than
  the video has are never invented: n is capped at the frame count first.
- The per-frame pixel budget is Qwen's smart_resize: both sides multiples of 28 (patch 14 x merge 2), aspect ratio kept,
  min_pixels <= H*W <= max_pixels (None = the processor's own `size`). The processor's *total*-video pixel cap
  (`cap_pixels_per_frame`) is turned off: the total is ours to budget, by frame count (see `minirl.data`).
- A file that cannot be decoded raises `VideoError` naming it. Nothing is ever substituted.
"""

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import av
import decord
import numpy as np
import torch
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


class VideoError(OSError):
    """A video file that cannot be used: missing, empty, truncated or not a video. An OSError, like PIL's
    UnidentifiedImageError: callers that skip unreadable files catch both."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoMeta:
    """What the container says about a video, read without decoding any frame."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a video and how many pixels each may keep. Exactly one of `num_frames` (uniform over
    the whole video) and `fps` (frames per second of video, at most `max_frames`, still spread uniformly) is set."""

    num_frames: int | None = 16
    fps: float | None = None
    max_frames: int = 768
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __post_init__(self):
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError(f"set exactly one of num_frames={self.num_frames} and fps={self.fps}")


@dataclass
class DecodedVideo:
    """The sampled frames of one video and where they sit in time."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int64, frame numbers in the source video
    timestamps: np.ndarray  # (T,) float64 seconds, indices / source fps
    sampled_fps: float  # T / duration: the frame rate of the sampled clip
    meta: VideoMeta


def _check_file(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    return path


def _open(path) -> decord.VideoReader:
    path = _check_file(path)
    try:
        # decord reads the whole packet index when it opens a file, so a truncated file or one
        # that is not a video fails here, before any frame is decoded.
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError, AssertionError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VideoError(path, f"not a decodable video (truncated or not a video file): {first_line}") from e


def _meta(path, reader: decord.VideoReader) -> VideoMeta:
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    try:
        with av.open(os.fspath(path)) as container:
            codec = container.streams.video[0].codec_context
            height, width = codec.height, codec.width
    except (av.FFmpegError, IndexError) as e:
        raise VideoError(path, f"no readable video stream header: {e}") from e
    if num_frames <= 0 or fps <= 0 or height <= 0 or width <= 0:
        raise VideoError(path, f"bad metadata: {num_frames} frames, {fps} fps, {height}x{width}")
    return VideoMeta(os.fspath(path), num_frames, fps, height, width)


def probe(path) -> VideoMeta:
    """Frame count and fps as decord sees them, frame size from the stream header (PyAV)."""
    return _meta(path, _open(path))


def num_sampled_frames(total_frames: int, video_fps: float, sampling: FrameSampling,
                       temporal_patch_size: int = 2) -> int:
    """How many frames `sampling` takes from a video, after the caps and the even rounding."""
    n = sampling.num_frames if sampling.num_frames is not None else math.floor(total_frames / video_fps * sampling.fps)
    n = min(n, sampling.max_frames, total_frames)
    n -= n % temporal_patch_size
    return max(n, temporal_patch_size)


def uniform_indices(total_frames: int, n: int) -> np.ndarray:
    """n frame numbers evenly spread over the video, each the middle of its 1/n of the video."""
    return np.floor((np.arange(n) + 0.5) * total_frames / n).astype(np.int64)


def sample_indices(meta: VideoMeta, sampling: FrameSampling, temporal_patch_size: int = 2) -> np.ndarray:
    n = num_sampled_frames(meta.num_frames, meta.fps, sampling, temporal_patch_size)
    return uniform_indices(meta.num_frames, n)


def read_video(path, sampling: FrameSampling, temporal_patch_size: int = 2,
               meta: VideoMeta | None = None) -> DecodedVideo:
    """Decode the frames `sampling` picks, or raise `VideoError` naming the file. meta: the file's `probe`
    when the caller already has it (its stream header is not read again)."""
    reader = _open(path)
    meta = meta or _meta(path, reader)
    indices = sample_indices(meta, sampling, temporal_patch_size)
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()  # (T, H, W, 3) uint8
    except (decord.DECORDError, RuntimeError) as e:
        # decord 0.6 also fails here on valid videos 16, 24, 48 or 72 pixels wide (a frame-copy
        # size check); real videos and the synthetic benchmark's multiples of 28 are not affected.
        raise VideoError(path, f"decoding failed: {str(e).strip().splitlines()[0]}") from e
    if frames.shape[0] != len(indices):
        raise VideoError(path, f"asked for {len(indices)} frames, decoder returned {frames.shape[0]}")
    return DecodedVideo(frames, indices, indices / meta.fps, len(indices) / meta.duration, meta)


class FrameCache:
    """The decoded frames of videos read before, up to `max_mb` MB, least recently used out first.

    On short clips decoding is most of an SFT step's data time (decord seeks to every sampled frame), and a video's
    frames for one sampling never change, so every epoch after the first can reuse them: the synthetic benchmark's 32
    frames of 56x56 are 0.3 MB a video. Off (0 MB) by default: one hour-long video at 448 px is over 600 MB. Every
    file's `probe` is kept too (a few bytes; opening the file for it cost 3 ms an item, a tenth of a cached SFT step).
    """

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.videos: OrderedDict[tuple, DecodedVideo] = OrderedDict()
        self.bytes = 0
        self.metas: dict[str, VideoMeta] = {}

    def probe(self, path) -> VideoMeta:
        path = os.fspath(path)
        if path not in self.metas:
            self.metas[path] = probe(path)
        return self.metas[path]

    def read(self, path, sampling: FrameSampling, temporal_patch_size: int = 2) -> DecodedVideo:
        key = (os.fspath(path), sampling, temporal_patch_size)
        if key in self.videos:
            self.videos.move_to_end(key)
            return self.videos[key]
        video = read_video(path, sampling, temporal_patch_size, self.metas.get(key[0]))
        self.metas[key[0]] = video.meta
        if video.frames.nbytes <= self.max_bytes:
            self.videos[key] = video
            self.bytes += video.frames.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self.videos.popitem(last=False)[1].frames.nbytes
        return video


def _video_processor(processor):
    """Accept either the checkpoint's processor or its video processor."""
    return getattr(processor, "video_processor", processor)


def _size(video_processor, min_pixels: int | None, max_pixels: int | None) -> dict:
    size = video_processor.size
    return {"shortest_edge": size["shortest_edge"] if min_pixels is None else min_pixels,
            "longest_edge": size["longest_edge"] if max_pixels is None else max_pixels}


def frame_size(height: int, width: int, processor, min_pixels: int | None = None,
               max_pixels: int | None = None) -> tuple[int, int]:
    """The (height, width) every frame is resized to by the video processor."""
    vp = _video_processor(processor)
    size = _size(vp, min_pixels, max_pixels)
    return smart_resize(height, width, factor=vp.patch_size * vp.merge_size, min_pixels=size["shortest_edge"],
                        max_pixels=size["longest_edge"])


def video_tokens(num_frames: int, height: int, width: int, processor, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> int:
    """LLM tokens for `num_frames` frames of height x width: (T/2) * (H/28) * (W/28) after resize. An odd T is
    padded by the processor with a copy of the last frame, hence the ceil."""
    vp = _video_processor(processor)
    h, w = frame_size(height, width, vp, min_pixels, max_pixels)
    groups = -(-num_frames // vp.temporal_patch_size)
    cell = vp.patch_size * vp.merge_size
    return groups * (h // cell) * (w // cell)


def count_video_tokens(meta: VideoMeta, processor, sampling: FrameSampling) -> int:
    """Video tokens `sampling` will produce for this video, from its metadata alone."""
    vp = _video_processor(processor)
    n = num_sampled_frames(meta.num_frames, meta.fps, sampling, vp.temporal_patch_size)
    return video_tokens(n, meta.height, meta.width, vp, sampling.min_pixels, sampling.max_pixels)


FRAMES_PER_CALL = 128  # frames the video processor converts at a time (see process_video)


def process_video(processor, frames: np.ndarray, sampled_fps: float, min_pixels: int | None = None,
                  max_pixels: int | None = None, frames_per_call: int = FRAMES_PER_CALL) -> dict:
    """Run the checkpoint's video processor on decoded frames.

    frames: (T, H, W, 3) uint8. Returns `pixel_values_videos` (N, 3*2*14*14) float32 with N = T/2 * H'/14 * W'/14
    patches, `video_grid_thw` (1, 3) int64 and `second_per_grid_ts` (1,) float32 = temporal_patch_size / sampled_fps,
    the seconds one temporal patch spans, which Qwen2.5-VL's M-RoPE uses to place video tokens in absolute time.

    The processor makes several float copies of what it is given (resized, rescaled and normalised, patched):
    at 2,048 frames that transient is the peak of an RL step (the research log's phase-peak study). So it runs
    on `frames_per_call` frames at a time (whole temporal patches) and each call's rows are copied into the
    one output: the result is the same (every step is per frame or per temporal patch, and rows are
    temporal-patch-major), the transient a call's.
    """
    vp = _video_processor(processor)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    tps, size = vp.temporal_patch_size, _size(vp, min_pixels, max_pixels)
    step = max(tps, frames_per_call - frames_per_call % tps)

    def convert(chunk: np.ndarray) -> tuple[torch.Tensor, int, int, int]:  # (rows, t, h, w)
        out = vp(videos=[chunk], do_sample_frames=False, return_tensors="pt", cap_pixels_per_frame=False, size=size)
        return out["pixel_values_videos"], *out["video_grid_thw"][0].tolist()

    pixels, groups, h, w = convert(frames[:step])
    if step < len(frames):  # more calls: one output, each call's rows copied into place (h * w per group)
        first, pixels = pixels, pixels.new_empty(-(-len(frames) // tps) * h * w, pixels.shape[1])
        pixels[:len(first)] = first
        for start in range(step, len(frames), step):
            rows, t, _, _ = convert(frames[start:start + step])
            pixels[groups * h * w:(groups + t) * h * w] = rows
            groups += t
    return {
        "pixel_values_videos": pixels,  # (groups * h * w, 3 * tps * 14 * 14)
        "video_grid_thw": torch.tensor([[groups, h, w]]),
        "second_per_grid_ts": torch.tensor([tps / sampled_fps], dtype=torch.float32),
    }

"""Shared fixtures: tiny checkpoints built from real transformers configs, and real mp4 files."""

import multiprocessing
import os

import av
import numpy as np
import pytest
import torch

from bench.common import free_port as free_port  # a multi-process test's rendezvous port
from minirl.tiny import build_tiny_model

CORPUS = [
    "What colour was the square that appeared first? A. red B. green C. blue D. yellow",
    "At 3.5s a red square appears top-left. At 7.0s a blue circle appears. So the answer is B.",
    "Think step by step inside <think> </think>, then give the letter inside <answer> </answer>.",
] * 20

# An odd config: one KV head, head_dim 24, tied embeddings, 3 vision heads.
ODD = dict(hidden=72, layers=3, heads=3, kv_heads=1, ffn=100, v_hidden=48, v_depth=3, v_heads=2)


# Worker processes start from a fork server that has imported these once (about 10 s of CPU for torch,
# transformers and minirl): a fresh process per rank as with "spawn", without paying that import again for
# every rank of every world. Names that fail to import are skipped by the fork server.
START_METHOD = "forkserver"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the fork server's torch reads it at import
multiprocessing.set_forkserver_preload(["torch", "sp", "train_rl", "train_sft", "bench.naive", "test_train",
                                        "test_sp", "test_shared_prefix", "test_bench_mrsp"])


def write_mp4(path, frames: np.ndarray, fps: float = 4.0, crf: int | None = None):
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4 with PyAV (crf: quality, lower is closer)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if crf is not None:
            stream.codec_context.options = {"threads": "1", "crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), CORPUS, size="tiny", seed=0)


@pytest.fixture(scope="session")
def odd_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("odd"), CORPUS, size=ODD, seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def merge4_dir(tmp_path_factory):
    """One token per 56 x 56 window: the merger joins 4 x 4 patches (README, "Where a shape is")."""
    return build_tiny_model(tmp_path_factory.mktemp("merge4"), CORPUS, size="tiny", seed=2, merge_size=4)


@pytest.fixture(scope="session")
def mp4_path(tmp_path_factory):
    """A 12-frame 56x84 video: moving coloured blocks on noise, so every frame differs."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, size=(12, 56, 84, 3), dtype=np.uint8)
    for t in range(12):
        frames[t, 8:28, 4 + 5 * t: 24 + 5 * t, t % 3] = 230
    return write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", frames)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tests run thousands of tiny ops; on a small shared CPU every multi-threaded op waits for
    a descheduled second thread (130 s instead of 2 s seen here). One thread is plenty."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Video files decode through PyAV, --fps / --video_max_frames pick the frames, and two families train on an mp4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tailorkit.config.train import DataArgs, ModelArgs, SftConfig, TrainArgs, TunerArgs
from tailorkit.data.dataset import load_conversations
from tailorkit.data.encode import encode
from tailorkit.data.media import load_video, sample_indices
from tailorkit.errors import DataError
from tailorkit.models.load import load_bundle, load_processor

FRAMES, RATE = 16, 8  # a 2-second clip


def write_mp4(path, frames: int = FRAMES, rate: int = RATE, size=(56, 56)):
    """An mp4 (MPEG-4 part 2) whose frame i is a solid colour coding i, written with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), (i * 15) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def clip(tmp_path):
    return write_mp4(tmp_path / "clip.mp4")


def test_frames_are_sampled_by_fps_and_capped_by_max_frames(clip):
    every = load_video(str(clip))
    assert (len(every.frames), every.total, every.fps) == (FRAMES, FRAMES, RATE)
    # frame i was written with grey level 15 i: the decoded frames are the ones the indices name
    levels = [round(float(f.mean()) / 15) for f in every.frames]
    assert levels == list(range(FRAMES))
    two_per_second = load_video(str(clip), fps=2)
    assert two_per_second.indices == [0, 5, 10, 15]
    assert [round(float(f.mean()) / 15) for f in two_per_second.frames] == [0, 5, 10, 15]
    assert load_video(str(clip), fps=4, max_frames=3).indices == [0, 9, 15]  # 8 at 4 fps, then 3 of them
    assert sample_indices(10, None, None, 4) == [0, 3, 6, 9]


def _video_row(name="clip.mp4"):
    return {"messages": [{"role": "user", "content": "<video>What colour is the shape?"},
                         {"role": "assistant", "content": "red"}], "videos": [name]}


def test_corrupt_or_truncated_video_names_file_and_line(tmp_path, clip):
    data = clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 8)
    rows = [_video_row(), _video_row("cut.mp4"), _video_row("noise.mp4")]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs = load_conversations([str(tmp_path / "v.jsonl")])
    for conv, line, name in ((convs[1], 2, "cut.mp4"), (convs[2], 3, "noise.mp4")):
        with pytest.raises(DataError, match=rf"v\.jsonl:{line}: videos: cannot decode video .*{name}"):
            load_video(conv.videos[0], conv.base_dir, source=conv.source, line=conv.line)


@pytest.mark.slow
@pytest.mark.parametrize("name, frames_of", [
    ("qwen2_5_vl", lambda enc: int(enc.media["video_grid_thw"][0, 0]) * 2),  # temporal patches of 2 frames
    ("llava_onevision", lambda enc: enc.media["pixel_values_videos"].shape[1]),
])
def test_family_trains_on_a_generated_mp4_with_the_frame_budget(name, frames_of, family_dirs, tmp_path, clip):
    from tailorkit.train.sft import sft

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(_video_row()) + "\n")
    model = ModelArgs(model=str(family_dirs(name)), torch_dtype="float32", fps=2, video_max_frames=4)
    bundle = load_bundle(model)
    [conv] = load_conversations([str(data)])
    enc = encode(conv, bundle.processor)
    assert frames_of(enc) == 4  # 2 s at 2 fps = 4 frames, within the cap
    bundle.processor.video_processor.max_frames = 2
    assert frames_of(encode(conv, bundle.processor)) == 2  # the cap wins over fps
    cfg = SftConfig(model=model, data=DataArgs(dataset=[str(data)]),
                    tuner=TunerArgs(train_type="full", freeze_vit=False),
                    train=TrainArgs(output_dir=str(tmp_path / "out"), max_steps=1, learning_rate=1e-3,
                                    save_strategy="no", logging_steps=1, weight_decay=0.0))
    result = sft(cfg)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses and all(np.isfinite(losses))
    before = dict(bundle.model.named_parameters())
    vision = [n for n, p in result.model.named_parameters()
              if result.bundle.family.component_of(n) == "vision" and not torch.equal(p.detach(), before[n])]
    assert vision, "no vision parameter moved: the video frames did not reach the model"
    saved = load_processor(str(result.final_dir)).video_processor
    assert (saved.fps, saved.max_frames) == (2, 4)  # the budget travels with the checkpoint's processor

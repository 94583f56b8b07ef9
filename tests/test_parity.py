"""A2VidPipelineTwoStage's call options the demo offers too: audio max duration, the decoder's tiling, prompt
enhancement (refused where it cannot run, with the reason), each from the request (CLI, API and UI build it)."""

from __future__ import annotations

import numpy as np
import pytest

from ltx_demo import media
from ltx_demo.cli_flags import build_parser, request_from_args
from ltx_demo.engine import Engine
from ltx_demo.pipeline import decode_tiling, tiling_config
from ltx_demo.requests import check_request
from ltx_demo.types import DecodeTiling, InvalidRequest

from .test_engine import decode_mp4


def test_audio_max_duration_uses_that_much_audio_then_silence(tmp_path):
    audio, note = media.prepare_audio("assets/speech_hello.wav", 0.5, 1.0, max_seconds=0.4)
    used = round(0.4 * media.OUTPUT_SAMPLE_RATE)
    assert audio.shape == (2, media.OUTPUT_SAMPLE_RATE)
    assert np.abs(audio[:, :used]).max() > 0 and not audio[:, used:].any()
    assert "used 0.40 s of audio" in note
    whole, _ = media.prepare_audio("assets/speech_hello.wav", 0.5, 1.0)
    assert np.array_equal(audio[:, :used], whole[:, :used])


def test_decode_tiling_follows_the_request(small_request):
    assert decode_tiling(check_request(small_request(decode_tiling="off"))) is None
    tiled = decode_tiling(check_request(small_request(decode_tile_pixels=256, decode_tile_frames=32)))
    assert tiled.spatial_config.tile_size_in_pixels == 256 and tiled.temporal_config.tile_size_in_frames == 32
    assert tiled.spatial_config.tile_overlap_in_pixels == 64 and tiled.temporal_config.tile_overlap_in_frames == 24
    default = decode_tiling(check_request(small_request()))
    assert default.spatial_config.tile_size_in_pixels == 512 and default.temporal_config.tile_size_in_frames == 64
    frame = decode_tiling(check_request(small_request(decode_tiling="frame", decode_tile_frames=32)))
    assert frame.spatial_config.tile_size_in_pixels == 512 and frame.temporal_config.tile_size_in_frames == 32  # 64x64
    assert tiling_config(DecodeTiling.FRAME, 1280, 768).spatial_config.tile_size_in_pixels == 1280


@pytest.mark.parametrize(("width", "height", "default_tiles"), [(768, 512, 4), (1280, 768, 9), (512, 768, 4)])
def test_frame_wide_tiling_decodes_one_spatial_tile_with_the_default_temporal_tiles(width, height, default_tiles):
    """decode tiling 'frame': ltx-core's decoder splits no spatial axis (its default 512 px tiles scale with the
    aspect ratio: 4 tiles at 768x512, 9 at 1280x768), the temporal tiles and the overlaps are the default's."""
    import torch
    from ltx_core.model.video_vae import VideoDecoderConfigurator

    from ltx_demo import synthetic

    with torch.device("meta"):
        decoder = VideoDecoderConfigurator.from_config(synthetic.reference_config())
        latent = torch.empty((1, 128, 13, height // 32, width // 32))
    frame, default = (tiling_config(t, width, height) for t in (DecodeTiling.FRAME, DecodeTiling.DEFAULT))
    assert frame.temporal_config == default.temporal_config
    assert frame.spatial_config.tile_overlap_in_pixels == default.spatial_config.tile_overlap_in_pixels
    temporal_tiles = 2  # 97 frames in ltx-core's 64-frame tiles
    assert len(decoder._prepare_tiles(latent, default)) == default_tiles * temporal_tiles
    assert len(decoder._prepare_tiles(latent, frame)) == temporal_tiles


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"decode_tile_pixels": 100}, "decode tile size 100 px must be a multiple of 32"),
        ({"decode_tile_frames": 20}, "decode tile length 20 frames must be a multiple of 8 above 24"),
        ({"decode_tiling": "off", "decode_tile_pixels": 256}, "decode tile sizes need decode tiling 'default'"),
        ({"decode_tiling": "frame", "decode_tile_pixels": 256}, "decode tiling 'frame' sizes its spatial tiles"),
        ({"audio_max_duration": 0}, "audio max duration 0.0 s must be a positive number"),
    ],
)
def test_bad_parity_options_name_the_fix(small_request, fields, message):
    with pytest.raises(InvalidRequest, match=message):
        check_request(small_request(**fields))


def test_untiled_decode_and_a_short_audio_window_end_to_end(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    request = small_request(decode_tiling="off", audio_max_duration=0.1, num_frames=9, audio_start=0.5)
    result = engine.generate(request)
    _frames, audio, rate, _fps = decode_mp4(result.output)
    assert result.request.decode_tiling is DecodeTiling.OFF and "used 0.10 s of audio" in result.audio_note
    tail = audio[:, int(0.15 * rate) : int(0.3 * rate)]
    assert np.abs(tail).max() < 1e-3  # silence after the window (AAC keeps it near zero)


def test_prompt_enhancement_is_refused_here_with_the_reason(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    with pytest.raises(InvalidRequest, match="enhance prompt: prompt enhancement needs the real Gemma-3"):
        engine.generate(small_request(enhance_prompt=True))
    assert engine.models.resident() == ()  # refused before any model was built


def test_the_cli_takes_every_parity_option():
    args = build_parser().parse_args(
        ["generate", "--enhance-prompt", "--audio-max-duration", "2.5", "--decode-tiling", "off", "--flow", "reference"]
    )
    request = request_from_args(args)
    assert request.enhance_prompt and request.audio_max_duration == 2.5
    assert request.decode_tiling is DecodeTiling.OFF and request.flow == "reference"

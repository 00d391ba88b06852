"""CLIP loader and tokenizer: a tiny random OpenAI-layout model built here, saved, loaded, checked op by op."""

from __future__ import annotations

import hashlib

import pytest
import torch

from normalcy.errors import WeightsMismatchError, WeightsNotFoundError
from normalcy.features.clip import ClipModel, clip_config, load_clip, read_state_dict
from normalcy.features.clip_tokenizer import ClipTokenizer, split_words
from tests.test_clip_helpers import (
    HEADS,
    MERGES,
    TINY,
    VOCAB_SIZE,
    reference_image,
    reference_text,
    save_tiny,
    tiny_state_dict,
    write_merges,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("clip"))


# --- tokenizer ----------------------------------------------------------------------------------------------
def test_bpe_merges_by_rank(tmp_path):
    tok = ClipTokenizer.from_file(write_merges(tmp_path / "m.txt.gz"))
    assert len(tok) == VOCAB_SIZE
    assert tok.bpe("object") == ("object</w>",)  # o+b, ob+j, e+c, ec+t</w>, obj+ect</w>
    assert tok.bpe("lower") == ("lo", "w", "er</w>")  # "lo w</w>" only merges a word-final w
    assert tok.bpe("low") == ("low</w>",)
    assert tok.encode("object") == [tok.vocab["object</w>"]]


def test_tokenizer_round_trip_and_bytes(tmp_path):
    tok = ClipTokenizer.from_file(write_merges(tmp_path / "m.txt", gz=False))  # plain text works too
    ids = tok.encode("Low  LOWER object café!&amp;")
    assert tok.decode(ids) == "low lower object café !&"
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.encode("CAFE\u0301 it\u2019s") == tok.encode("café it's")  # NFC and straight quotes, as ftfy does
    assert split_words("it's a 2024 photo!!") == ["it", "'s", "a", "2", "0", "2", "4", "photo", "!!"]
    batch = tok.encode_batch(["object", "low " * 40], context_length=8)
    assert batch.shape == (2, 8)
    assert batch[0, :3].tolist() == [tok.start_id, tok.vocab["object</w>"], tok.end_id] and batch[0, 3:].eq(0).all()
    assert batch[1, 0] == tok.start_id and batch[1, -1] == tok.end_id  # cut, end marker kept last


def test_tokenizer_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="bpe_simple_vocab"):
        ClipTokenizer.from_file(tmp_path / "absent.txt.gz")
    with pytest.raises(WeightsMismatchError, match="has 8 merges, .* needs 20"):
        ClipTokenizer.from_file(write_merges(tmp_path / "m.txt.gz"), vocab_size=534)
    bad = tmp_path / "bad.txt"
    bad.write_text("#version\na b c\n")
    with pytest.raises(WeightsMismatchError, match="two symbols"):
        ClipTokenizer.from_file(bad)


# --- loader -------------------------------------------------------------------------------------------------
def test_config_from_shapes(tiny):
    sd, pt, st, vocab = tiny
    cfg = clip_config(sd, HEADS, HEADS)
    assert (cfg.vision_width, cfg.vision_layers, cfg.patch_size, cfg.grid, cfg.image_resolution) == (32, 2, 8, 4, 32)
    assert (cfg.text_width, cfg.text_layers, cfg.context_length, cfg.vocab_size, cfg.embed_dim) == (
        32, 2, TINY["context"], VOCAB_SIZE, TINY["embed"])
    assert clip_config(sd).vision_heads == 1  # default width // 64, at least 1
    assert clip_config(tiny_state_dict(width=128, text_width=128)).text_heads == 2


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_loaded_model_reproduces_reference_forward(tiny, fmt):
    sd, pt, st, vocab = tiny
    path = pt if fmt == "pt" else st
    model = load_clip(path, vocab, vision_heads=HEADS, text_heads=HEADS)
    assert isinstance(model, ClipModel) and not model.training
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    xn = ClipModel.normalize_pixels(x)
    for dense in (0, 1, 2):
        want_img, want_patch = reference_image(sd, xn, HEADS, dense_layers=dense)
        with torch.no_grad():
            img, patch = model.visual(xn, dense)
        assert img.shape == (3, TINY["embed"]) and patch.shape == (3, TINY["embed"], 4, 4)
        torch.testing.assert_close(img, want_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(patch.flatten(2).transpose(1, 2), want_patch, rtol=1e-4, atol=1e-5)
    ids = model.tokenizer.encode_batch(["a low object", "lower", "object object object"], TINY["context"])
    assert ids.argmax(-1).max() < TINY["context"] - 1  # padded: encode_tokens drops the padding, the reference not
    with torch.no_grad():
        torch.testing.assert_close(model.encode_tokens(ids), reference_text(sd, ids, HEADS), rtol=1e-4, atol=1e-5)
    text = model.encode_text(["a low object", "lower"])
    assert text.shape == (2, TINY["embed"]) and torch.allclose(text.norm(dim=1), torch.ones(2))
    img, patch = model.encode_image(x, dense_layers=1)
    assert torch.allclose(img.norm(dim=1), torch.ones(3)) and torch.allclose(patch.norm(dim=1), torch.ones(3, 4, 4))


def _shapes_of(width, layers, patch, grid, embed, text_width, text_layers, context=77, vocab=49408):
    """Meta tensors (shapes only, no memory) in the layout of a published CLIP ViT."""
    sd = {"visual.conv1.weight": (width, 3, patch, patch), "visual.class_embedding": (width,),
          "visual.positional_embedding": (grid * grid + 1, width), "visual.ln_pre.weight": (width,),
          "visual.ln_post.weight": (width,), "visual.proj": (width, embed),
          "token_embedding.weight": (vocab, text_width), "positional_embedding": (context, text_width),
          "ln_final.weight": (text_width,),
          "text_projection": (text_width, embed), "logit_scale": ()}
    sd |= {f"visual.transformer.resblocks.{i}.attn.in_proj_weight": (3 * width, width) for i in range(layers)}
    sd |= {f"transformer.resblocks.{i}.attn.in_proj_weight": (3 * text_width, text_width) for i in range(text_layers)}
    return {k: torch.empty(v, device="meta") for k, v in sd.items()}


def test_published_architectures_are_read_from_shapes():
    """OpenAI's ViT-B/32 and ViT-L/14@336 configurations (their published hyper-parameters) from shapes alone."""
    b32 = clip_config(_shapes_of(768, 12, 32, 7, 512, 512, 12))
    assert (b32.vision_heads, b32.text_heads, b32.image_resolution, b32.context_length, b32.vocab_size) == (
        12, 8, 224, 77, 49408)
    l14 = clip_config(_shapes_of(1024, 24, 14, 24, 768, 768, 12))
    assert (l14.vision_heads, l14.vision_layers, l14.text_heads, l14.image_resolution, l14.embed_dim) == (
        16, 24, 12, 336, 768)


def test_half_precision_state_dicts_load_as_float32(tiny, tmp_path):
    sd, *_ = tiny
    half = {k: v.half() for k, v in sd.items()}  # OpenAI's released weights are fp16
    torch.save(half, tmp_path / "fp16.pt")
    model = load_clip(tmp_path / "fp16.pt", vision_heads=HEADS, text_heads=HEADS)
    assert model.visual.proj.dtype == torch.float32
    xn = ClipModel.normalize_pixels(torch.rand(2, 3, 32, 32))
    want, _ = reference_image({k: v.float() for k, v in half.items()}, xn, HEADS)
    with torch.no_grad():
        torch.testing.assert_close(model.visual(xn)[0], want, rtol=1e-4, atol=1e-5)


def test_other_resolutions_interpolate_positions(tiny):
    sd, pt, st, vocab = tiny
    model = load_clip(st, vision_heads=HEADS, text_heads=HEADS)
    assert model.tokenizer is None
    img, patch = model.encode_image(torch.rand(2, 3, 48, 64))
    assert img.shape == (2, TINY["embed"]) and patch.shape == (2, TINY["embed"], 6, 8)
    assert torch.isfinite(patch).all()
    with pytest.raises(WeightsNotFoundError, match="merges file"):
        model.encode_text(["object"])


def test_wrapped_checkpoint_and_unsafe_pickles(tiny, tmp_path):
    sd, *_ = tiny
    wrapped = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, wrapped)
    assert read_state_dict(wrapped).keys() == sd.keys()

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": Evil()}, evil)
    with pytest.raises(WeightsMismatchError, match="weights_only"):
        read_state_dict(evil)
    assert not marker.exists()


def test_loader_errors(tiny, tmp_path):
    sd, pt, st, vocab = tiny
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        load_clip(tmp_path / "nope.pt")
    with pytest.raises(WeightsNotFoundError):
        load_clip(st, tmp_path / "no_vocab.txt.gz")
    not_clip = tmp_path / "resnet18.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, not_clip)
    with pytest.raises(WeightsMismatchError, match="not an OpenAI-layout CLIP"):
        load_clip(not_clip)
    rn = tmp_path / "rn50.pt"
    torch.save({**{k: v for k, v in sd.items() if not k.startswith("visual.")},
                "visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1),
                "visual.attnpool.c_proj.weight": torch.zeros(4, 4)}, rn)
    with pytest.raises(WeightsMismatchError, match="ResNet"):
        load_clip(rn)
    broken = dict(sd)
    broken["visual.proj"] = torch.zeros(32, 7)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsMismatchError, match="one embedding"):
        load_clip(tmp_path / "broken.pt")
    extra = {**sd, "visual.transformer.resblocks.0.attn.surprise": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsMismatchError, match="does not fit"):
        load_clip(tmp_path / "extra.pt")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsMismatchError, match="unknown weights format"):
        load_clip(tmp_path / "w.onnx")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsMismatchError, match="safetensors"):
        load_clip(tmp_path / "garbage.safetensors")
    with pytest.raises(WeightsMismatchError, match="needs"):
        load_clip(st, write_merges(tmp_path / "short.txt.gz", MERGES[:3]))
    with pytest.raises(WeightsMismatchError, match="heads"):
        load_clip(st, vision_heads=3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated; OpenAI's files still use it
def test_torchscript_archives_are_refused(tmp_path):
    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.proj(x)

    try:
        scripted = torch.jit.script(Lin())
    except Exception as exc:  # TorchScript may be unavailable in some torch builds
        pytest.skip(f"torch.jit.script unavailable: {exc}")
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(WeightsMismatchError, match="TorchScript"):
        read_state_dict(path)

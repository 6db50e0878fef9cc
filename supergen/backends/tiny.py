"""Tiny random-weight pipelines of the real diffusers classes, built in code with no download.

`build("wan-t2v")` is the embedded default model (`--model tiny`): the real Wan architecture and code path
at a few hundred thousand parameters, deterministic for a given seed. Its output is structured noise: it
proves the pipeline (tokenizer -> text encoder -> transformer -> scheduler -> VAE, tiling, caching), not
image quality. The other kinds are the test fixtures for every supported family.
"""

from __future__ import annotations

import json
import os
import string

import torch

NATIVE = (64, 64)  # (width, height) pixels: latent 8x8 with the 8x VAEs below
PRESETS = dict(scale=4, frames=9, steps=10, guidance=5.0, fps=8, cache_threshold=0.20, cache_alpha=0.5)
KINDS = ("wan-t2v", "wan-i2v", "wan22-t2v", "wan22-i2v", "wan22-5b-t2v", "wan22-5b-i2v", "cogvideox-t2v",
         "cogvideox15-t2v", "cogvideox15-i2v", "cogvideox-i2v", "hunyuan-t2v", "hunyuan15-t2v",
         "hunyuan-i2v", "hunyuan15-i2v")
EMBEDDED = {"tiny": "wan-t2v", "tiny-i2v": "wan-i2v"}

WORDS = ("a the of and in on with video red green blue yellow white black moving circle square cat dog "
         "over under sky sea city night day slowly fast").split()


def t5_tokenizer(words=WORDS):
    """A T5/UMT5-style Unigram tokenizer: whole `words` first, then characters, so any ASCII text encodes."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in words]
    vocab += [("\u2581" + c, -6.0) for c in chars]
    vocab += [(c, -7.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _wan_transformer(in_channels=16, image_dim=None, out_channels=16, layers=2):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=out_channels, text_dim=32, freq_dim=32,
                                 ffn_dim=64,
                                 num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 image_dim=image_dim, rope_max_seq_len=256)


def _wan(kind: str):
    # WanImageToVideoPipeline only for the i2v kinds: importing its module imports transformers'
    # CLIPImageProcessor, which without torchvision warns (falling back to CLIPImageProcessorPil)
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tok = t5_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if kind.startswith("wan22-5b"):  # TI2V-5B style: Wan 2.2's 16x VAE (2x2 pixel patches, 48 channels)
        vae = AutoencoderKLWan(base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
        parts = dict(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, expand_timesteps=True,
                     transformer=_wan_transformer(in_channels=48, out_channels=48))
        if kind == "wan22-5b-t2v":
            return WanPipeline(**parts)
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline(**parts)
    if kind == "wan-t2v":
        return WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=_wan_transformer(), scheduler=sched)
    if kind == "wan22-t2v":
        return WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=_wan_transformer(),
                           transformer_2=_wan_transformer(), scheduler=sched, boundary_ratio=0.875)
    from diffusers import WanImageToVideoPipeline

    if kind == "wan22-i2v":  # A14B style: two experts, image latents only (no CLIP encoder)
        return WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched,
                                       transformer=_wan_transformer(in_channels=36),
                                       transformer_2=_wan_transformer(in_channels=36), boundary_ratio=0.875)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, projection_dim=8, num_hidden_layers=2,
                                                         num_attention_heads=2, image_size=32, patch_size=4,
                                                         intermediate_size=16)).eval()
    proc = CLIPImageProcessor(crop_size=32, size=32)
    return WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, image_processor=proc,
                                   image_encoder=enc, transformer=_wan_transformer(in_channels=36, image_dim=8))


def _cogvideox(kind: str):
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                           CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=4,
                                 down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    v15, i2v = kind.startswith("cogvideox15"), kind.endswith("i2v")
    learned = i2v and not v15  # the 5B-I2V 1.0 style: fixed-resolution learned positional embeddings
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8 if i2v else 4, out_channels=4,
        time_embed_dim=8, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
        patch_size=2, patch_size_t=2 if v15 else None, patch_bias=not v15, max_text_seq_length=16,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=learned,
        ofs_embed_dim=8 if (v15 and i2v) else None)
    sched_cls = CogVideoXDPMScheduler if kind == "cogvideox-t2v" else CogVideoXDDIMScheduler
    sched = sched_cls(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                      clip_sample=False, snr_shift_scale=1.0)
    cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    return cls(tokenizer=tok, text_encoder=te, vae=vae, transformer=tr, scheduler=sched)


# HunyuanVideo's prompt template, shortened; `crop_start` (the tokens before the prompt) is the tiny
# tokenizer's count, where the real template's 95 is LLaMA's
HUNYUAN_TEMPLATE = ("<|start_header_id|>system<|end_header_id|>\n\nDescribe the video.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>")


# HunyuanVideo-I2V's: the image's tokens at `<image>`, and an assistant header its pipeline crops off
HUNYUAN_I2V_TEMPLATE = ("<|start_header_id|>system<|end_header_id|>\n\n<image>\nDescribe the video.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def llama_tokenizer():
    """A LLaMA-style fast tokenizer over single characters (no merges) and the templates' special tokens
    (`assistant` one token, as LLaMA 3's: the I2V pipeline crops the assistant header by token count)."""
    from transformers import LlamaTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>",
                "assistant"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in string.ascii_letters + string.digits + string.punctuation + "\u2581\n":
        vocab.setdefault(c, len(vocab))
    # padded on the right, as HunyuanVideo's: its transformer takes the first mask-sum text tokens as valid
    tok = LlamaTokenizerFast(vocab=vocab, merges=[], unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                             pad_token="</s>", padding_side="right")
    tok.add_special_tokens({"additional_special_tokens": specials[3:]})
    return tok


def _hunyuan(kind: str):
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideoImageToVideoPipeline, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel

    i2v = kind.endswith("i2v")
    tok = llama_tokenizer()
    llama = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    te = _llava(tok, llama) if i2v else LlamaModel(llama).eval()
    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = {**{c: i for i, c in enumerate(chars)}, "<|startoftext|>": len(chars), "<|endoftext|>": len(chars) + 1}
    tok2 = CLIPTokenizer(vocab=vocab, merges=[])
    te2 = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok2), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                                       bos_token_id=len(chars), eos_token_id=len(chars) + 1,
                                       pad_token_id=len(chars) + 1)).eval()
    tr = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                        num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
                                        patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
                                        text_embed_dim=32, pooled_projection_dim=16, rope_theta=256.0,
                                        rope_axes_dim=(4, 6, 6), image_condition_type="token_replace" if i2v else None)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                    layers_per_block=1, norm_num_groups=2, spatial_compression_ratio=8,
                                    temporal_compression_ratio=4, mid_block_add_attention=False)
    parts = dict(text_encoder=te, tokenizer=tok, transformer=tr, vae=vae, text_encoder_2=te2, tokenizer_2=tok2,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    if not i2v:
        return HunyuanVideoPipeline(**parts)
    from transformers import CLIPImageProcessor

    return HunyuanVideoImageToVideoPipeline(**parts, image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))


def _llava(tok, llama):
    """HunyuanVideo-I2V's text encoder at toy size: LLaVA, a CLIP vision tower of 16 patches before LLaMA."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=llama, image_token_index=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id, vision_feature_layer=-2, image_seq_length=16)).eval()


def qwen_tokenizer():
    """A Qwen2-style byte-level tokenizer over the 256 byte symbols (no merges), with a chat template of the
    Qwen form (HunyuanVideo 1.5 formats its prompt as a system and a user message)."""
    from transformers import Qwen2Tokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = printable + [256 + k for k in range(256 - len(printable))]  # GPT-2's byte-to-symbol map
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    for c in symbols:
        vocab.setdefault(chr(c), len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def _hunyuan15(kind: str):
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tok = qwen_tokenizer()
    te = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None, eos_token_id=None,
        rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})).eval()
    te2 = T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                  relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    tr = HunyuanVideo15Transformer3DModel(in_channels=2 * 4 + 1, out_channels=4, num_attention_heads=2,
                                          attention_head_dim=16, num_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
                                          text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=8,
                                          rope_axes_dim=(4, 6, 6), target_size=64,
                                          task_type="i2v" if kind.endswith("i2v") else "t2v")
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1)
    parts = dict(text_encoder=te, tokenizer=tok, transformer=tr, vae=vae, text_encoder_2=te2,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), tokenizer_2=ByT5Tokenizer(),
                 guider=ClassifierFreeGuidance(guidance_scale=5.0))
    if not kind.endswith("i2v"):
        return HunyuanVideo15Pipeline(**parts)
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8)).eval()
    return HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=encoder,
                                              feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))


def hunyuan_template(i2v: bool = False) -> dict:
    """The tiny tokenizer's counts in the template: the tokens before the prompt (`crop_start`) and, for
    image-to-video, where the image's 16 tokens go."""
    template = HUNYUAN_I2V_TEMPLATE if i2v else HUNYUAN_TEMPLATE
    ids = llama_tokenizer()(template.split("{}")[0]).input_ids
    out = {"template": template, "crop_start": len(ids)}
    if i2v:
        start = ids.index(llama_tokenizer().convert_tokens_to_ids("<image>"))
        out.update(image_emb_start=start, image_emb_end=start + 16, image_emb_len=16)
    return out


def build(kind: str = "wan-t2v", seed: int = 0):
    """A tiny pipeline of `kind`, identical for identical (kind, seed)."""
    if kind not in KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; known: {KINDS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = (_wan(kind) if kind.startswith("wan") else _hunyuan15(kind) if kind.startswith("hunyuan15")
                else _hunyuan(kind) if kind.startswith("hunyuan") else _cogvideox(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sidecar(kind: str = "wan-t2v") -> dict:
    """The supergen.json facts of a tiny pipeline (its configs cannot say it was trained at 64x64, nor, for
    HunyuanVideo, where its tokenizer's prompt template ends)."""
    hunyuan = kind in ("hunyuan-t2v", "hunyuan-i2v")
    presets = {**PRESETS, "prompt_template": hunyuan_template(kind.endswith("i2v"))} if hunyuan else PRESETS
    return {"native_size": list(NATIVE), "presets": presets}


def save(kind: str, path: str, seed: int = 0) -> str:
    """Build and `save_pretrained` a tiny pipeline with its sidecar; returns `path`."""
    build(kind, seed).save_pretrained(path)
    with open(os.path.join(path, "supergen.json"), "w") as f:
        json.dump(sidecar(kind), f, indent=1)
    return path


def save_render_model(kind: str, path: str, seed: int = 1) -> str:
    """SRDiffusion's small model for the tiny `kind` (Wan text-to-video): the same pipeline, its VAE and text
    encoder the same weights, with a one-layer transformer of its own; saved as `save` saves."""
    if kind != "wan-t2v":
        raise ValueError(f"no tiny render model for {kind!r}")
    pipe = build(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.register_modules(transformer=_wan_transformer(layers=1))
    pipe.save_pretrained(path)
    with open(os.path.join(path, "supergen.json"), "w") as f:
        json.dump(sidecar(kind), f, indent=1)
    return path


CONFIGS_FILE = os.path.join(os.path.dirname(__file__), "tiny_configs.json")


def embedded_configs(model: str) -> dict:
    """The configs of an embedded model, read from CONFIGS_FILE: checking a spec against them must not cost
    a process the seconds of importing diffusers' model classes (a flow's driver never needs them).
    A test keeps the file equal to the built pipelines; `write_configs()` rewrites it."""
    with open(CONFIGS_FILE) as f:
        return json.load(f)[model]


def built_configs() -> dict:
    """{embedded model: configs} of freshly built pipelines, as JSON stores them (what CONFIGS_FILE holds),
    less diffusers' bookkeeping keys (`_use_default_values` is a set, in no stable order)."""
    def public(c):
        return {k: v for k, v in c.items() if not k.startswith("_") or k == "_class_name"}

    return json.loads(json.dumps({m: {part: public(c) for part, c in configs(build(k)).items()}
                                  for m, k in EMBEDDED.items()}))


def write_configs() -> None:
    with open(CONFIGS_FILE, "w") as f:
        json.dump(built_configs(), f, indent=1, sort_keys=True)
        f.write("\n")


def configs(pipe) -> dict:
    """The same dict `loading.read_configs` returns for a folder, taken from a live pipeline."""
    index = {"_class_name": type(pipe).__name__, **{k: v for k, v in pipe.config.items() if not k.startswith("_")}}
    out = {"index": index, "sidecar": sidecar()}
    for comp in ("transformer", "vae", "scheduler", "transformer_2"):
        module = getattr(pipe, comp, None)
        if module is not None:
            out[comp] = dict(module.config)
    from .loading import ENCODERS

    for comp in ENCODERS:
        module = getattr(pipe, comp, None)
        if module is not None:  # less what says which library version or dtype wrote it
            out[comp] = {k: v for k, v in module.config.to_dict().items()
                         if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")}
    return out


def lora(kind: str, path: str, seed: int = 0, rank: int = 4) -> str:
    """A LoRA for the tiny pipeline `kind`'s transformer (its attention projections, with a random non-zero
    B, so it changes the output), saved as diffusers saves one: `path`/pytorch_lora_weights.safetensors."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = build(kind, seed)
    pipe.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    type(pipe).save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return path

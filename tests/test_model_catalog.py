"""ModelSpec parsing: parameter counts against published figures, KV bytes against hand sums."""

from __future__ import annotations

import json
import math

import pytest

from paretoserve.catalog.model import bundled_model_names, load_model
from paretoserve.errors import UserError


def matches_published(ours: float, published: float, decimals: int) -> bool:
    """Model cards print rounded or truncated figures (e.g. '3.3B', '37B').

    Accept our count when it is within 1% of the printed figure, or when rounding or truncating it
    to the printed precision gives the printed figure.
    """
    scale = 10**decimals
    return (abs(ours - published) <= 0.01 * published
            or round(ours * scale) == round(published * scale)
            or math.floor(ours * scale) == round(published * scale))


# (model, published total in billions, decimals printed, published active, decimals) — sources:
# Meta Llama 3.1 model card (8.03B, 70.6B), Qwen3 model cards (32.8B; 30.5B total / 3.3B activated),
# Mistral's Mixtral announcement (46.7B / 12.9B), DeepSeek-V3 report (671B / 37B).
PUBLISHED = [
    ("Meta-Llama-3.1-8B", 8.03, 2, None, 0),
    ("Meta-Llama-3.1-70B", 70.6, 1, None, 0),
    ("Qwen3-32B", 32.8, 1, None, 0),
    ("Qwen3-30B-A3B", 30.5, 1, 3.3, 1),
    ("Mixtral-8x7B-v0.1", 46.7, 1, 12.9, 1),
    ("DeepSeek-V3", 671, 0, 37, 0),
]


@pytest.mark.parametrize("name,total,total_dec,active,active_dec", PUBLISHED)
def test_parameter_counts_match_model_cards(name, total, total_dec, active, active_dec):
    params = load_model(name).params
    assert abs(params.total / 1e9 - total) <= 0.01 * total
    assert matches_published(params.total / 1e9, total, total_dec)
    if active is not None:
        assert matches_published(params.active / 1e9, active, active_dec)


def test_gpt_oss_counts_follow_openai_convention():
    # OpenAI's gpt-oss model card: 116.83B total, 5.13B active; its active count leaves out the
    # input embedding table (the unembedding is counted).
    params = load_model("gpt-oss-120b").params
    assert abs(params.total / 1e9 - 116.83) <= 0.01 * 116.83
    assert abs((params.active - params.embedding) / 1e9 - 5.13) <= 0.01 * 5.13


def test_dense_active_equals_total():
    params = load_model("Meta-Llama-3.1-8B").params
    assert params.active == params.total


def test_llama_8b_parameters_by_hand():
    # Embedding and LM head 128256 × 4096 each; per layer: q,o 4096² each, k,v 4096 × 1024 each,
    # MLP 3 × 4096 × 14336, two RMSNorms of 4096; final norm 4096.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    expected = 2 * 128256 * 4096 + 32 * per_layer + 4096
    assert load_model("Meta-Llama-3.1-8B").params.total == expected


def test_kv_bytes_gqa_by_hand():
    # Llama-3.1-8B: 32 layers × (K and V) × 8 KV heads × 128 dims × 2 bytes.
    model = load_model("Meta-Llama-3.1-8B")
    assert model.kv_bytes_per_token("bf16") == 32 * 2 * 8 * 128 * 2
    assert model.kv_bytes_per_token("fp8") == 32 * 2 * 8 * 128


def test_kv_bytes_mla_latent_by_hand():
    # DeepSeek-V3 caches the 512-wide latent plus the 64-wide rope key per layer, 61 layers.
    model = load_model("DeepSeek-V3")
    assert model.kv_bytes_per_token("bf16") == 61 * (512 + 64) * 2


def test_kv_bytes_sliding_window_capped_by_hand():
    # gpt-oss-120b: 18 full + 18 sliding (window 128) layers, 8 KV heads × 64 dims, K and V.
    model = load_model("gpt-oss-120b")
    per_layer_token = 2 * 8 * 64 * 2
    context = 10_000
    expected = 18 * per_layer_token * context + 18 * per_layer_token * 128
    assert model.kv_bytes_per_sequence(context, "bf16") == expected
    short = 100  # below the window both kinds hold every token
    assert model.kv_bytes_per_sequence(short, "bf16") == 36 * per_layer_token * short


def test_mamba_state_is_constant_by_hand():
    # Nemotron-H-56B: 10 attention layers (8 KV heads × 128, K and V) grow with context; the Mamba-2
    # layers hold conv state (inner 16384 + 2·8 groups·256 state) × (kernel 4 − 1) and SSM state
    # 256 heads × 64 × 256, in fp32.
    model = load_model("Nemotron-H-56B-Base-8K")
    pattern = json.loads(open(model.source).read())["hybrid_override_pattern"]
    n_mamba, n_attn = pattern.count("M"), pattern.count("*")
    state = (16384 + 2 * 8 * 256) * 3 + 256 * 64 * 256
    for context in (10, 1000):
        expected = n_attn * 2 * 8 * 128 * 2 * context + n_mamba * state * 4
        assert model.kv_bytes_per_sequence(context, "bf16") == expected


def test_every_bundled_config_parses():
    names = bundled_model_names()
    assert len(names) >= 20
    for name in names:
        model = load_model(name)
        assert model.params.total > model.params.active * 0.99 > 0


def test_config_folder_and_tied_embeddings(tmp_path):
    cfg = json.loads(open(load_model("Qwen3-0.6B").source).read())
    assert cfg["tie_word_embeddings"] is True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = load_model(str(tmp_path))
    assert model.params.lm_head == 0
    assert model.params.total == load_model("Qwen3-0.6B").params.total


def test_unknown_model_suggests_names():
    with pytest.raises(UserError, match="Did you mean Meta-Llama-3.1-8B"):
        load_model("Meta-Llama-3.1-8")


def test_malformed_config_names_file_and_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 4096,\n "num_hidden_layers": }')
    with pytest.raises(UserError, match=r"config.json:2"):
        load_model(str(bad))


def test_missing_field_is_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 64, "vocab_size": 10, "num_attention_heads": 2,
                               "intermediate_size": 128}))
    with pytest.raises(UserError, match="num_hidden_layers"):
        load_model(str(bad))


def test_hugging_face_ids_resolve_to_bundled_names():
    assert load_model("meta-llama/Llama-3.1-8B").name == "Meta-Llama-3.1-8B"
    assert load_model("Qwen/Qwen3-32B").name == "Qwen3-32B"
    with pytest.raises(UserError):
        load_model("someone/Llama")  # ambiguous or unknown ids are not guessed


def test_modelopt_sidecar_makes_the_nvidia_llama_fp8(tmp_path):
    # config.json of NVIDIA's FP8 Llama has no quantization_config; its hf_quant_config.json says FP8.
    model = load_model("Llama-3.1-70B-Instruct-FP8")
    assert json.loads(open(model.source).read()).get("quantization_config") is None
    assert model.weight_dtype == "fp8"
    assert "Llama-3.1-70B-Instruct-FP8.hf_quant_config" not in bundled_model_names()
    # The same two files as a checkpoint folder.
    (tmp_path / "config.json").write_text(open(model.source).read())
    assert load_model(str(tmp_path)).weight_dtype == "bf16"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    assert load_model(str(tmp_path)).weight_dtype == "fp4"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "XYZ"}}))
    with pytest.raises(UserError, match="quant_algo"):
        load_model(str(tmp_path))


def test_new_point_models_parse_with_their_dtypes():
    # Checkpoint dtypes as published: FP8 (block) checkpoints, Kimi-K2.5's int4 experts.
    assert load_model("MiniMax-M2.5").weight_dtype == "fp8"
    assert load_model("Qwen3-235B-A22B-FP8").weight_dtype == "fp8"
    assert load_model("Qwen/Qwen3-235B-A22B-FP8").name == "Qwen3-235B-A22B-FP8"
    assert load_model("Kimi-K2.5").weight_dtype == "int4"
    # MiniMax-M2.5: 62 layers, 256 experts, top-8 (its config.json), ~229 B parameters in all.
    minimax = load_model("MiniMax-M2.5")
    assert minimax.num_layers == 62 and minimax.is_moe
    assert 225e9 < minimax.params.total < 232e9

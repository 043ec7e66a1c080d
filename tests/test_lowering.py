"""Base and big lowered for TPU and CUDA on a CPU machine (`jax.export`, no accelerator): the
train step, the eval step and cached greedy and beam decoding over a data x fsdp x tensor
mesh of 8 virtual devices, and what the lowered modules show."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import base, big
from transformer import sharding, trainer
from transformer.config import MeshConfig, from_config_dict
from transformer.decode import Search
from transformer.dry_run import largest_batch
from transformer.evaluation import _compiled_decoder

PLATFORMS = ("cuda", "tpu")
MESH = MeshConfig(2, 2, 2)


def accelerator_config(module):
    """The config on the 2 x 2 x 2 mesh, computing as on an accelerator: bfloat16, fused
    attention, 64-token pairs."""
    config = from_config_dict(module.get_config()).with_vocab_size(37_000)
    model = dataclasses.replace(config.model, dtype="bfloat16", attention="dot_product_attention")
    return dataclasses.replace(config, mesh=MESH, model=model, batch_size=64)


def exported(fn, *args):
    return jax.export.export(fn, platforms=PLATFORMS)(*args)


def custom_calls(text):
    return set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text)) | set(
        re.findall(r'call_target_name = "([^"]+)"', text)
    )


def assert_no_host_callbacks(text):
    assert not {c for c in custom_calls(text) if "callback" in c.lower()}


@pytest.fixture(scope="module", params=[base, big], ids=["base", "big"])
def placed(request):
    config = accelerator_config(request.param)
    mesh = sharding.make_mesh(config.mesh)
    return trainer.build(config, mesh)


@pytest.mark.slow
def test_train_and_eval_steps_lower_for_tpu_and_cuda_in_bfloat16_with_sharded_parameters(placed):
    config, mesh = placed.config, placed.mesh
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=placed.batch_sharding)
        for k, v in largest_batch(
            config, sharding.batch_shards(mesh, config.logical_axis_rules)
        ).items()
    }
    with trainer.mesh_context(mesh, config):
        train = exported(placed.train_step, placed.abstract_state, batch)
        evaluate = exported(placed.eval_step, placed.abstract_state.params, batch)
    for module in (train, evaluate):
        assert module.platforms == PLATFORMS and module.nr_devices == 8
        text = module.mlir_module()
        assert re.search(r"stablehlo\.dot_general .*bf16", text)  # Matmuls in bfloat16,
        assert_no_host_callbacks(text)
    text = train.mlir_module()
    # ... of float32 parameters, each FFN kernel split d_model over fsdp and d_ff over tensor.
    ffn = re.search(r"tensor<512x2048xf32> \{sdy\.sharding = #sdy\.sharding<@mesh, \[([^\]]*)\]>"
                    if config.model.d_model == 512 else
                    r"tensor<1024x4096xf32> \{sdy\.sharding = #sdy\.sharding<@mesh, \[([^\]]*)\]>",
                    text)  # fmt: skip
    assert ffn and ffn.group(1) == '{"fsdp"}, {"tensor"}', ffn and ffn.group(1)
    # The new state is written over the old one's buffers (donated).
    assert text.count("tf.aliasing_output") == len(jax.tree.leaves(placed.abstract_state))


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 4])
def test_cached_decoding_lowers_for_tpu_and_cuda_with_each_device_on_its_rows(placed, beam_size):
    config, mesh = placed.config, placed.mesh
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp", "tensor")))
    decode = _compiled_decoder(placed.model, 64, Search(beam_size), rows, per_shard=True)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=replicated),
        placed.abstract_state.params,
    )
    inputs = jax.ShapeDtypeStruct((16, 64), jnp.int32, sharding=rows)
    with trainer.mesh_context(mesh, config):
        module = exported(decode, params, inputs)
    text = module.mlir_module()
    assert module.platforms == PLATFORMS and module.nr_devices == 8
    assert "stablehlo.while" in text  # The decoding loop runs on the device,
    assert_no_host_callbacks(text)  # with no trip to the host inside it,
    assert re.search(r"stablehlo\.dot_general .*bf16", text)  # in bfloat16.

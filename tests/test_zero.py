import types

import pytest
import torch

from lyra_rl.training.zero import zero_engine


def test_deepspeed_settings_the_trainer_does_not_implement_are_refused():
    def accelerator(**config):
        return types.SimpleNamespace(
            state=types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(deepspeed_config=config))
        )

    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW(params)
    with pytest.raises(ValueError, match="stage 3 is not supported.*accelerate_fsdp.yaml"):
        zero_engine(accelerator(zero_optimization={"stage": 3}), params, optimizer, 1.0, 4)
    with pytest.raises(ValueError, match="offload"):
        zero_engine(
            accelerator(zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}}),
            params,
            optimizer,
            1.0,
            4,
        )
    with pytest.raises(ValueError, match="fp16"):
        zero_engine(accelerator(zero_optimization={"stage": 2}, fp16={"enabled": True}), params, optimizer, 1.0, 4)

"""Pure loss functions of lyra-rl's training algorithms: :mod:`lyra_rl.algorithms.grpo`."""

"""Training of a Hamiltonian model on block targets.

``hamjax.train.train(config, out)`` trains (or resumes) a model and writes a model folder
(:mod:`hamjax.io.model_folder`). The modules:

* :mod:`hamjax.train.config`: :class:`TrainConfig`, its JSON file, the model's basis from
  the training data;
* :mod:`hamjax.train.loss`: masked block losses and metrics, element weights, energy-reference
  alignment;
* :mod:`hamjax.train.optim`: AdamW with learning-rate schedules and reduce-on-plateau;
* :mod:`hamjax.train.data`: dataset files to padded batches (whole structures or slices),
  stacking over devices;
* :mod:`hamjax.train.checkpoint`: orbax checkpoints, resume, loading a trained model;
* :mod:`hamjax.train.loop`: the train and evaluation steps and the loop.
"""

from hamjax.io.model_folder import FOLDED_CELLS_FILE
from hamjax.train.checkpoint import load_checkpoint
from hamjax.train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    data_basis,
    default_config,
    default_model_settings,
    format_config,
    load_config,
    model_from_json,
    save_config,
    with_data_basis,
)
from hamjax.train.data import (
    Placement,
    batch_dict,
    load_split,
    make_batches,
    mean_onsite_blocks,
    stack_for_devices,
)
from hamjax.train.loop import (
    TrainState,
    evaluate_batches,
    loss_and_mae_of_model,
    make_eval_step,
    make_train_step,
    save_folded_cells,
    train,
)
from hamjax.train.loss import block_errors, loss_and_mae_from_sums, species_weights
from hamjax.train.optim import learning_rate_schedule, make_optimizer, plateau_scale

__all__ = [
    "FOLDED_CELLS_FILE",
    "Placement",
    "TrainConfig",
    "TrainState",
    "batch_dict",
    "block_errors",
    "config_from_dict",
    "config_to_dict",
    "data_basis",
    "default_config",
    "default_model_settings",
    "evaluate_batches",
    "format_config",
    "learning_rate_schedule",
    "load_checkpoint",
    "load_config",
    "load_split",
    "loss_and_mae_from_sums",
    "loss_and_mae_of_model",
    "make_batches",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "mean_onsite_blocks",
    "model_from_json",
    "plateau_scale",
    "save_config",
    "save_folded_cells",
    "species_weights",
    "stack_for_devices",
    "train",
    "with_data_basis",
]

"""Training, prediction and checkpoints: a plain loop that a learner can read top to bottom.

    >>> from xai_helpers.training import get_trained_model
    >>> model, info = get_trained_model("planted_skin")   # cached checkpoint, or trains one (seconds)

=================  ==================================================================================
module             what it holds
=================  ==================================================================================
``loop``           :class:`TensorLoader` and :func:`augment_batch` (batches and augmentation from
                   tensors in memory), losses and weights for imbalance, :func:`fit` (AdamW, one-cycle
                   schedule, early stopping on validation ROC-AUC), :func:`predict` (probabilities),
                   :func:`recalibrate_batchnorm`
``transfer``       EfficientNet-Lite0 on a CPU: :func:`fit_frozen_prefix`, :func:`fit_linear_probe`
``checkpoints``    :func:`save_checkpoint` / :func:`load_checkpoint`: weights + metadata (the model's
                   ModelInfo), read back with ``torch.load(weights_only=True)``
``recipes``        :data:`RECIPES` and :func:`get_trained_model`, the one call later chapters use
=================  ==================================================================================
"""
from ..data import images_to_tensor
from .checkpoints import (CHECKPOINT_FORMAT, CheckpointError, CheckpointMismatchError, checkpoint_model_info,
                          load_checkpoint, read_checkpoint, save_checkpoint)
from .loop import (TensorLoader, augment_batch, class_weights, fit, make_loss, pos_weights, predict,
                   recalibrate_batchnorm, resize_tensor)
from .recipes import RECIPES, get_trained_model
from .transfer import fit_frozen_prefix, fit_linear_probe

__all__ = ["images_to_tensor", "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointMismatchError",
           "checkpoint_model_info", "load_checkpoint", "read_checkpoint", "save_checkpoint", "TensorLoader",
           "augment_batch", "class_weights", "fit", "make_loss", "pos_weights", "predict",
           "recalibrate_batchnorm", "resize_tensor", "RECIPES", "get_trained_model", "fit_frozen_prefix",
           "fit_linear_probe"]
